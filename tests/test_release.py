"""The release artefact: built from a checkout, signed by the release key, verified whole.

Built here with a stand-in wheelhouse and a tiny models folder (fast); tests/test_ota.py
builds real ones with pip and installs them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from ota_support import copy_checkout, fake_wheelhouse, tiny_models

from edge.__main__ import main
from edge.config import parse_config
from edge.errors import KeyFileError, ReleaseError
from edge.keys import public_pem
from edge.ledger.schema import LEDGER_VERSION, MIGRATIONS
from edge.ota.agent import load_release_key
from edge.ota.release import (
    MANIFEST,
    SIGNATURE,
    build_release,
    generate_release_key,
    verify_release,
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A release key, a checkout copy at 0.2.0 and its artefact."""
    tmp = tmp_path_factory.mktemp("release")
    key = tmp / "release.pem"
    pub = generate_release_key(key)
    checkout = copy_checkout(tmp / "src", version="0.2.0")
    models = tiny_models(tmp / "models")
    art = build_release(
        checkout, key, tmp / "dist", version="0.2.0", models_dir=models, wheelhouse=fake_wheelhouse
    )
    return {"key": key, "pub": pub, "checkout": checkout, "models": models, "artefact": art}


def rewrite(src: Path, dst: Path, change) -> Path:
    """Copy the tar ``src`` to ``dst`` member by member, passing (info, data) through ``change``
    (which returns a list of (info, data) to write instead)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for info in tin.getmembers():
            f = tin.extractfile(info)
            data = f.read() if f else b""
            for new_info, new_data in change(info, data):
                new_info.size = len(new_data)
                tout.addfile(new_info, io.BytesIO(new_data))
    return dst


def test_build_lists_every_part_and_verifies(kit):
    art = kit["artefact"]
    assert art.name == "bansos-edge-0.2.0.tar"
    release = verify_release(art, kit["pub"])
    m = release.manifest
    assert release.version == "0.2.0" and m["schema"] == "bansos.release/1"
    files = set(m["files"])
    assert "wheels/bansos_edge-0.2.0-py3-none-any.whl" in files
    assert {"models/manifest.json", "models/detector.tflite"} <= files
    assert {"systemd/edge.service", "systemd/edge-rollback.service"} <= files
    assert "systemd/edge-update.path" in files and "systemd/edge-recover.service" in files
    # The migration list: every layout this code can bring forward, up to the one it writes.
    assert m["ledger"] == {"version": LEDGER_VERSION, "migrations_from": sorted(MIGRATIONS)}
    assert sorted(MIGRATIONS) == list(range(1, LEDGER_VERSION))
    for entry in m["files"].values():
        assert len(entry["sha256"]) == 64 and entry["bytes"] > 0


def test_version_must_be_the_checkouts_own(kit, tmp_path):
    with pytest.raises(ReleaseError, match="checkout is 0.2.0"):
        build_release(
            kit["checkout"], kit["key"], tmp_path, version="9.9.9", wheelhouse=fake_wheelhouse
        )
    assert not list(tmp_path.iterdir())


def test_a_model_that_differs_from_its_manifest_is_not_released(kit, tmp_path):
    models = tiny_models(tmp_path / "models")
    (models / "detector.tflite").write_bytes(b"other bytes")
    with pytest.raises(ReleaseError, match="detector"):
        build_release(
            kit["checkout"],
            kit["key"],
            tmp_path / "d",
            models_dir=models,
            wheelhouse=fake_wheelhouse,
        )


def test_another_key_is_refused(kit, central_key):
    with pytest.raises(ReleaseError, match="signature"):
        verify_release(kit["artefact"], public_pem(central_key.public_key()))


def _flip_last_byte(info, data):
    if info.name.startswith("wheels/"):
        data = data[:-1] + bytes([data[-1] ^ 1])
    return [(info, data)]


def _edit_manifest(info, data):
    if info.name == MANIFEST:
        m = json.loads(data)
        m["version"] = "0.9.0"
        data = json.dumps(m).encode()
    return [(info, data)]


def _extra_file(info, data):
    out = [(info, data)]
    if info.name == SIGNATURE:
        out.append((tarfile.TarInfo("models/extra.tflite"), b"smuggled"))
    return out


def _escape(info, data):
    if info.name.startswith("systemd/edge.service"):
        info = tarfile.TarInfo("../etc/edge.service")
    return [(info, data)]


def _drop_model(info, data):
    return [] if info.name == "models/detector.tflite" else [(info, data)]


def _unsigned(info, data):
    return [] if info.name == SIGNATURE else [(info, data)]


@pytest.mark.parametrize(
    "change, why",
    [
        (_flip_last_byte, "sha256 differs"),
        (_edit_manifest, "signature does not verify"),
        (_extra_file, "not listed in the signed manifest"),
        (_escape, "escapes the release folder"),
        (_drop_model, "missing from the artefact"),
        (_unsigned, "not a signed release"),
    ],
)
def test_tampered_artefacts_are_refused(kit, tmp_path, change, why):
    bad = rewrite(kit["artefact"], tmp_path / "bad.tar", change)
    with pytest.raises(ReleaseError, match=why):
        verify_release(bad, kit["pub"])


@pytest.mark.parametrize("where", ["header", "middle", "last byte"])
def test_truncated_artefacts_are_refused(kit, tmp_path, where):
    data = kit["artefact"].read_bytes()
    with tarfile.open(kit["artefact"]) as tar:
        last = tar.getmembers()[-1]
        end = last.offset_data + last.size  # after it only the tar's zero padding
    cut_at = {"header": 100, "middle": end // 2, "last byte": end - 1}[where]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:cut_at])
    with pytest.raises(ReleaseError):
        verify_release(cut, kit["pub"])


def test_verify_can_extract_while_checking(kit, tmp_path):
    verify_release(kit["artefact"], kit["pub"], extract_to=tmp_path / "x")
    assert (tmp_path / "x/systemd/edge.service").read_text() == (
        kit["checkout"] / "systemd/edge.service"
    ).read_text()


def test_release_key_config_has_no_fallback(tmp_path, kit, central_pem):
    cfg = parse_config({"device": {"state_dir": str(tmp_path)}})
    assert load_release_key(cfg) is None  # unset: updates refused, never central's key instead
    central = tmp_path / "central.pem"
    central.write_bytes(central_pem)
    same = parse_config(
        {
            "bundle": {"central_public_key": str(central)},
            "ota": {"release_public_key": str(central)},
        }
    )
    with pytest.raises(KeyFileError, match="central's bundle key"):
        load_release_key(same)
    missing = parse_config({"ota": {"release_public_key": str(tmp_path / "nope.pem")}})
    with pytest.raises(KeyFileError, match="ota.release_public_key"):
        load_release_key(missing)
    good = tmp_path / "release.pub"
    good.write_bytes(kit["pub"])
    assert load_release_key(parse_config({"ota": {"release_public_key": str(good)}})) == kit["pub"]


def test_cli_keygen_build_verify(tmp_path, kit, capsys):
    key = tmp_path / "k.pem"
    assert main(["release", "keygen", "--out", str(key)]) == 0
    assert main(["release", "keygen", "--out", str(key)]) == 1  # never overwritten
    # The real wheelhouse builder: pip builds this project's wheel from the copy.
    args = ["release", "build", "--key", str(key), "--out", str(tmp_path / "dist")]
    args += ["--checkout", str(kit["checkout"]), "--models", str(kit["models"])]
    assert main([*args, "--version", "0.2.0"]) == 0
    art = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert art.is_file()
    pub = f"{key}.pub"
    assert main(["release", "verify", str(art), "--pub", pub]) == 0
    assert "release 0.2.0: signature and" in capsys.readouterr().out
    with tarfile.open(art) as tar:
        assert "wheels/bansos_edge-0.2.0-py3-none-any.whl" in tar.getnames()
    assert main(["release", "verify", str(art), "--pub", str(kit["key"]) + ".pub"]) == 1
    assert "signature" in capsys.readouterr().err
