"""The `edge` sub-commands for keys, bundles, audit and invitation QR codes, end to end."""

from __future__ import annotations

import csv
import json
import sqlite3

import cv2
import numpy as np
import pytest
from support import REF_KEY, pay

from edge.__main__ import main
from edge.config import Config
from edge.keys import write_card
from edge.payout.claim import decode_claim
from edge.privacy import household_ref

DEVICE = "edge-cli-0001"


@pytest.fixture()
def cfg_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(f'[device]\nid = "{DEVICE}"\nstate_dir = "{tmp_path / "state"}"\n')
    return path


def edge(cfg_file, *args):
    return main(["-c", str(cfg_file), *map(str, args)])


def test_keys_init_show_never_print_private(cfg_file, tmp_path, capsys, make_identity):
    assert edge(cfg_file, "keys", "show") == 1  # nothing to show before init
    capsys.readouterr()
    assert edge(cfg_file, "keys", "init") == 0
    out = capsys.readouterr().out
    keys = tmp_path / "state" / "keys"
    assert {"device_ed25519.pem", "bundle_x25519.pem", "tls_key.pem", "tls.csr"} <= {
        p.name for p in keys.iterdir()
    }
    assert "PRIVATE" not in out and "BEGIN PUBLIC KEY" in out
    assert edge(cfg_file, "keys", "show", "--out", tmp_path / "card.json") == 0
    out = capsys.readouterr().out
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["device_id"] == DEVICE and card["bundle_fingerprint"] in out
    ident = make_identity(keys)  # loads what `keys init` made
    assert card["sign_public_pem"].encode() == ident.device_public_pem()


def test_central_keygen(cfg_file, tmp_path, capsys):
    assert edge(cfg_file, "central-keygen", tmp_path / "central.key") == 0
    assert (tmp_path / "central.key.pub").read_text().startswith("-----BEGIN PUBLIC KEY")
    assert edge(cfg_file, "central-keygen", tmp_path / "central.key") == 1


def test_claim_qr_png(cfg_file, tmp_path, capsys):
    png = tmp_path / "inv.png"
    assert (
        edge(
            cfg_file,
            "claim-qr",
            "--household",
            "KPM-3171-0001-0042",
            "--round",
            "2026-12",
            "--png",
            png,
        )
        == 0
    )
    text, _, _ = cv2.QRCodeDetector().detectAndDecode(cv2.imread(str(png)))
    assert decode_claim(text).household_id == "KPM-3171-0001-0042"
    assert (
        edge(cfg_file, "claim-qr", "--household", "bad id", "--round", "2026-12", "--png", png) == 1
    )


def _ledger_with_events(tmp_path, ident, make_ledger):
    led = make_ledger(tmp_path / "state" / "ledger.sqlite", ident, DEVICE)
    ev = pay(led, "KPM-3171-0001-0001")
    led.record("no_match", household_id="KPM-3171-0001-0002", round_id="2026-12")
    events = list(led.events())
    led.close()
    (tmp_path / "dev.pem").write_bytes(ident.device_public_pem())
    return ev, events


def test_audit_ledger_stream_and_receipt(cfg_file, tmp_path, capsys, make_identity, make_ledger):
    from edge.events import receipt_payload

    ident = make_identity(tmp_path / "state" / "keys")  # the terminal's keys, as `edge` finds them
    ev, events = _ledger_with_events(tmp_path, ident, make_ledger)
    db = tmp_path / "state" / "ledger.sqlite"
    assert edge(cfg_file, "audit", db, "--device-pub", tmp_path / "dev.pem") == 0
    assert "OK" in capsys.readouterr().out
    assert edge(cfg_file, "audit", db) == 0  # stored key, with a warning
    assert "warning" in capsys.readouterr().out

    stream = tmp_path / "events.jsonl"
    stream.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert edge(cfg_file, "audit", stream, "--device-pub", tmp_path / "dev.pem") == 0
    capsys.readouterr()

    text = receipt_payload(ev)
    # A receipt is checked against a key that names its device (a card, or the registry).
    card = tmp_path / "dev.json"
    write_card(ident, DEVICE, card)
    assert edge(cfg_file, "audit", "--receipt", text, "--device-pub", card) == 0
    assert "receipt valid" in capsys.readouterr().out
    forged = text.replace(ev["household_ref"], household_ref(REF_KEY, "2026-12", "KPM-9"))
    assert edge(cfg_file, "audit", "--receipt", forged, "--device-pub", card) == 1
    assert "INVALID" in capsys.readouterr().out
    assert edge(cfg_file, "audit", "--receipt", text, "--device-pub", tmp_path / "dev.pem") == 1
    assert "bare public key" in capsys.readouterr().out

    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_append_only_u")
    conn.execute("UPDATE events SET body = replace(body, '\"no_match\"', '\"accepted\"')")
    conn.commit()
    conn.close()
    assert edge(cfg_file, "audit", db, "--device-pub", tmp_path / "dev.pem") == 1
    out = capsys.readouterr().out
    assert "hash mismatch" in out and "FAILED" in out


# -- real faces: enrol ORL identities as households, build, inspect, install -----------------


@pytest.fixture(scope="module")
def engine_cfg(models_dir, faces_dir):
    """Defaults with the built models (the embedder the bundle's templates come from)."""
    cfg = Config()
    cfg.models.dir = str(models_dir)
    return cfg


@pytest.mark.slow
def test_build_inspect_install_on_real_faces(
    engine_cfg, faces_dir, tmp_path, capsys, make_identity
):
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(
        f'[device]\nid = "{DEVICE}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[models]\ndir = "{engine_cfg.models.dir}"\n'
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    for s in range(1, 7):
        (photos / f"s{s}").symlink_to(faces_dir / f"orl__s{s:02d}")
    cv2.imwrite(str(photos / "blank.png"), np.full((112, 92, 3), 128, np.uint8))
    rows = [
        [
            f"KPM-3171-0001-000{s}",
            "M1",
            "recipient",
            f"Orang Ke {s}",
            "3171",
            f"s{s}/1.pgm;s{s}/2.pgm",
        ]
        for s in range(1, 7)
    ]
    # One person claiming under a second household, and a photo with no face.
    rows.append(["KPM-3171-0001-0007", "M1", "recipient", "Orang Lain", "3171", "s1/5.pgm"])
    rows.append(["KPM-3171-0001-0008", "M1", "recipient", "Orang Kosong", "3171", "blank.png"])
    with open(tmp_path / "hh.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["household_id", "member_id", "role", "name", "regency", "photos"])
        w.writerows(rows)

    assert edge(cfg_path, "keys", "init") == 0
    assert edge(cfg_path, "keys", "show", "--out", tmp_path / "card.json") == 0
    assert edge(cfg_path, "central-keygen", tmp_path / "central.key") == 0
    capsys.readouterr()
    bundle = tmp_path / "b.bundle"
    rc = edge(
        cfg_path,
        "bundle",
        "build",
        "--csv",
        tmp_path / "hh.csv",
        "--photos",
        photos,
        "--round",
        "2026-12",
        "--amount",
        300000,
        "--device-pub",
        tmp_path / "card.json",
        "--central-key",
        tmp_path / "central.key",
        "--out",
        bundle,
        "--report",
        tmp_path / "report.csv",
    )
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "enrolled: 6 households, 6 members, 12 templates" in out
    report = list(csv.DictReader(open(tmp_path / "report.csv")))
    dup = [r for r in report if r["status"] == "duplicate"]
    assert [r["household_id"] for r in dup] == ["KPM-3171-0001-0007"]
    assert "KPM-3171-0001-0001" in dup[0]["reason"]
    blank = [r for r in report if r["household_id"] == "KPM-3171-0001-0008"]
    assert blank[0]["status"] == "refused" and "no face" in blank[0]["reason"]
    assert "Orang" not in out and "Orang" not in (tmp_path / "report.csv").read_text()

    assert (
        edge(cfg_path, "bundle", "inspect", bundle, "--central-pub", tmp_path / "central.key.pub")
        == 0
    )
    meta = json.loads(capsys.readouterr().out)
    assert meta["signature"] == "valid" and meta["households"] == 6
    assert meta["template_count"] == 12 and meta["device"]["id"] == DEVICE

    assert (
        edge(cfg_path, "bundle", "install", bundle, "--central-pub", tmp_path / "central.key.pub")
        == 0
    )
    capsys.readouterr()
    tampered = tmp_path / "t.bundle"
    env = json.loads(bundle.read_bytes())
    env["sig"] = env["sig"][:10] + ("A" if env["sig"][10] != "A" else "B") + env["sig"][11:]
    tampered.write_text(json.dumps(env))
    assert (
        edge(cfg_path, "bundle", "install", tampered, "--central-pub", tmp_path / "central.key.pub")
        == 1
    )

    # The installed bundle identifies an unseen photo of household 3's recipient.
    from edge.cli.payout import embedder_ids
    from edge.enrolment.roster import load_photo
    from edge.enrolment.store import BundleStore
    from edge.vision.pipeline import FaceEngine

    ident = make_identity(tmp_path / "state" / "keys")  # the keys `keys init` made
    cfg = engine_cfg
    store = BundleStore(
        tmp_path / "state", (tmp_path / "central.key.pub").read_bytes(), ident, *embedder_ids(cfg)
    )
    labels, matrix = store.current().templates()
    # Central's manifest maps each household to the reference this terminal computes, with the
    # round key kept beside central's private key for the next bundle of the regency and round.
    manifest = json.loads(bundle.with_name(bundle.name + ".manifest.json").read_text())
    key = (tmp_path / "ref_keys" / "3171_2026-12.key").read_bytes()
    assert store.current().ref_key == key
    rows = {h["household_id"]: h["household_ref"] for h in manifest["households"]}
    assert len(rows) == 6 and manifest["bundle_id"] == store.current().bundle_id
    assert all(store.current().household_ref(hid) == ref for hid, ref in rows.items())
    emb = (
        FaceEngine.from_config(cfg).analyse(load_photo(faces_dir / "orl__s03" / "7.pgm")).embedding
    )
    assert emb is not None
    assert labels[int(np.argmax(matrix @ emb))] == "KPM-3171-0001-0003/M1"


class FakeTTY:
    """A stream that says it is a terminal and keeps what was written."""

    def __init__(self, tty: bool = True) -> None:
        self.tty = tty
        self.written: list[str] = []

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> None:
        self.written.append(s)

    def flush(self) -> None:
        pass


def test_progress_bar_only_on_a_terminal():
    from edge.cli.payout import ProgressBar

    tty = FakeTTY()
    bar = ProgressBar("enrolling", stream=tty)
    for i in range(1, 5):
        bar(i, 4)
    assert tty.written[0].startswith("\renrolling [") and "1/4" in tty.written[0]
    assert "#" * 30 in tty.written[-2] and tty.written[-1] == "\n"
    pipe = FakeTTY(tty=False)
    ProgressBar("enrolling", stream=pipe)(1, 4)
    assert pipe.written == []


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("bundle", "keys", "audit", "claim-qr", "central-keygen"):
        assert cmd in out
