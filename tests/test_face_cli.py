"""`edge enroll / verify / identify / eval / calibrate` end to end on real photos."""

from __future__ import annotations

import csv
import json
import os
import stat
import tomllib

import cv2
import numpy as np
import pytest

from edge.__main__ import main
from edge.config import load_config
from edge.enrolment.gallery import GalleryStore
from edge.errors import GalleryError
from edge.evaluation import load_image


@pytest.fixture
def config(tmp_path, models_dir):
    """A config file with its own state folder."""
    lines = ["# pilot terminal", "[device]", f'state_dir = "{tmp_path / "state"}"', "", "[models]"]
    lines += ["threads = 1", f'dir = "{models_dir}"']
    lines += ["", "[vision.quality]", "min_contrast = 10.0  # keep this comment", ""]
    path = tmp_path / "edge.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().out


def orl(faces_dir, person: int, photo: int) -> str:
    return str(faces_dir / f"orl__s{person:02d}" / f"{photo}.pgm")


def test_enroll_verify_identify(config, faces_dir, capsys, tmp_path):
    c = str(config)
    rc, out = run(
        capsys, "-c", c, "enroll", "--id", "alice", *(orl(faces_dir, 3, i) for i in (1, 2, 3))
    )
    assert rc == 0, out
    assert "enrolled alice: 3 template(s) added, 3 in total" in out
    rc, out = run(
        capsys, "-c", c, "enroll", "--id", "bob", orl(faces_dir, 7, 1), orl(faces_dir, 7, 2)
    )
    assert rc == 0, out

    # The gallery is encrypted at rest under a private key file.
    state = tmp_path / "state"
    blob = (state / "gallery.enc").read_bytes()
    assert b"alice" not in blob and blob.startswith(b"EDGEGAL1")
    key = state / "keys" / "template.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    labels, matrix, model_id = GalleryStore(state).load()
    assert labels == ["alice"] * 3 + ["bob"] * 2 and matrix.shape == (5, 128) and model_id

    threshold = load_config(c).vision.match_threshold
    rc, out = run(capsys, "-c", c, "verify", orl(faces_dir, 3, 8), "--id", "alice")
    assert rc == 0 and out.startswith("decision=match id=alice"), out
    score = float(out.split("score=")[1].split()[0])
    assert score >= threshold and f"threshold={threshold:.4f}" in out

    rc, out = run(capsys, "-c", c, "verify", orl(faces_dir, 7, 9), "--id", "alice")
    assert rc == 2 and out.startswith("decision=no_match"), out

    rc, out = run(capsys, "-c", c, "identify", orl(faces_dir, 7, 9))
    assert rc == 0 and out.startswith("decision=match id=bob"), out
    assert out.splitlines()[1].split()[0] == "bob" and len(out.splitlines()) == 3

    rc, out = run(capsys, "-c", c, "verify", orl(faces_dir, 3, 8), "--id", "carol")
    assert rc == 1

    # A tampered gallery is refused rather than silently read.
    (state / "gallery.enc").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(GalleryError):
        GalleryStore(state).load()


def test_enroll_refuses_poor_photos_with_the_reason(config, faces_dir, capsys, tmp_path):
    rgb = load_image(orl(faces_dir, 5, 1))
    blurred = tmp_path / "blurred.png"
    cv2.imwrite(str(blurred), cv2.GaussianBlur(rgb, (0, 0), 4.0))
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((120, 100, 3), 128, np.uint8))
    rc, out = run(capsys, "-c", str(config), "enroll", "--id", "dina", str(blurred), str(blank))
    assert rc == 1
    assert f"{blurred}: refused: poor quality (blurry" in out
    assert f"{blank}: refused: no face found" in out
    assert not (tmp_path / "state" / "gallery.enc").exists()


def _pairs(faces_dir, tmp_path):
    """Six genuine and six impostor ORL pairs, plus one genuine pair with a faceless image."""
    images = tmp_path / "images"
    images.mkdir()
    for p in (3, 4, 5):
        os.symlink(faces_dir / f"orl__s{p:02d}", images / f"orl__s{p:02d}")
    cv2.imwrite(str(images / "blank.png"), np.full((112, 92, 3), 90, np.uint8))
    rows = []
    for p in (3, 4, 5):
        rows += [(f"orl__s{p:02d}/1.pgm", f"orl__s{p:02d}/{i}.pgm", 1, "orl") for i in (2, 6)]
        q = 4 if p != 4 else 5
        rows += [(f"orl__s{p:02d}/{i}.pgm", f"orl__s{q:02d}/{i}.pgm", 0, "orl") for i in (1, 7)]
    rows.append(("orl__s03/1.pgm", "blank.png", 1, "blank"))
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path_a", "path_b", "same", "source"])
        w.writerows(rows)
    return path, images


def test_eval_counts_a_faceless_photo_as_a_failed_comparison(config, faces_dir, capsys, tmp_path):
    pairs, images = _pairs(faces_dir, tmp_path)
    out_json = tmp_path / "report.json"
    rc, out = run(
        capsys, "-c", str(config), "eval", "--pairs", str(pairs), "--images", str(images),
        "--json", str(out_json),
    )  # fmt: skip
    assert rc == 0
    r = json.loads(out_json.read_text())
    assert r["images"] == 13 and r["no_face"] == 1 and r["no_face_images"] == ["blank.png"]
    assert r["genuine"] == 7 and r["impostor"] == 6
    # The faceless genuine pair is a false reject: at most 6 of 7 accepted.
    assert r["tar_at_far"]["0.01"] == pytest.approx(6 / 7)
    assert set(r["ms"]) == {"detect", "align", "embed"} and all(v > 0 for v in r["ms"].values())
    assert r["per_source"]["orl"]["eer"] == 0.0 and r["per_source"]["blank"]["genuine"] == 1
    assert "images 13  no_face 1" in out and "tar_at_far 0.001" in out

    rc, out = run(
        capsys, "-c", str(config), "eval", "--pairs", str(pairs), "--images", str(images),
        "--source", "blank",
    )  # fmt: skip
    assert rc == 0 and "images 2  no_face 1" in out


def test_calibrate_writes_the_threshold_and_keeps_the_rest(config, faces_dir, capsys, tmp_path):
    pairs, images = _pairs(faces_dir, tmp_path)
    before = config.read_text()
    rc, out = run(
        capsys, "-c", str(config), "calibrate", "--pairs", str(pairs), "--images", str(images),
        "--source", "orl", "--far", "0.01", "--write", str(config),
    )  # fmt: skip
    assert rc == 0
    threshold = float(out.split("threshold at FAR 0.01: ")[1].split()[0])
    after = config.read_text()
    assert "# keep this comment" in after and "# pilot terminal" in after
    for line in before.splitlines():
        assert line in after.splitlines()
    cfg = load_config(config)
    assert cfg.vision.match_threshold == pytest.approx(threshold, abs=1e-4)
    assert cfg.vision.quality.min_contrast == 10.0
    data = tomllib.loads(after)
    assert set(data["vision"]) == {"match_threshold", "quality"}
    # Calibrating again replaces the value rather than adding a second key.
    rc, _ = run(
        capsys, "-c", str(config), "calibrate", "--pairs", str(pairs), "--images", str(images),
        "--source", "orl", "--far", "0.001", "--write", str(config),
    )  # fmt: skip
    assert rc == 0 and config.read_text().count("match_threshold") == 1
