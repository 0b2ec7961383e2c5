"""Reconciliation: CSV + signed summary per round and regency, checked against terminal ledgers;
and the ``edge central`` commands that register manifests and users."""

from __future__ import annotations

import csv
import io
import json

import pytest
from central_world import AMOUNT, ROUND, World, household

from edge.__main__ import main
from edge.central.auth import authenticate
from edge.central.store import CentralStore
from edge.keys import generate_central_key


@pytest.fixture
def world(tmp_path):
    w = World(CentralStore(tmp_path / "central.sqlite"), tmp_path)
    w.all_terminals()
    w.pay("edge-a01", 1)
    w.pay("edge-a01", 2)
    w.refuse("edge-a01", "no_match")
    w.pay("edge-a02", 1)
    w.pay("edge-c01", 1)  # another regency: not in 3171's files
    yield w
    w.close()


@pytest.fixture
def keys(tmp_path):
    private = tmp_path / "central" / "central_private.pem"
    private.parent.mkdir()
    generate_central_key(private)
    return private, private.with_name("central_private.pem.pub")


def reconcile(world, keys, out, *extra) -> tuple[dict, bytes]:
    db = f"sqlite:///{world.root / 'central.sqlite'}"
    args = ["central", "reconcile", "--db", db, "--round", ROUND, "--regency", "3171"]
    assert main([*args, "--central-key", str(keys[0]), "--out", str(out), *extra]) == 0
    stem = out / f"reconciliation-{ROUND}-3171"
    return json.loads(stem.with_suffix(".json").read_text()), stem.with_suffix(".csv").read_bytes()


def verify(keys, out, *extra) -> int:
    summary = out / f"reconciliation-{ROUND}-3171.json"
    return main(["central", "verify", str(summary), "--central-pub", str(keys[1]), *extra])


def test_summary_verifies_against_the_csv_and_the_terminal_ledgers(world, keys, tmp_path, capsys):
    out = tmp_path / "out"
    summary, data = reconcile(world, keys, out, "--home-visits")
    assert (summary["entitled"], summary["collected"], summary["not_collected"]) == (9, 3, 6)
    assert (summary["payouts"], summary["amount"]) == (3, 3 * AMOUNT)
    assert [(d["device_id"], d["payouts"]) for d in summary["devices"]] == [
        ("edge-a01", 2),
        ("edge-a02", 1),
    ]
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert [r["household"] for r in rows] == [
        household("edge-a01", 1),
        household("edge-a01", 2),
        household("edge-a02", 1),
    ]
    visits = (out / f"home-visits-{ROUND}-3171.csv").read_text().splitlines()
    assert len(visits) == 1 + 6 and household("edge-b01", 3) in visits[3]
    ledgers = ["--ledger", str(world.root / "edge-a01.sqlite")]
    ledgers += ["--ledger", str(world.root / "edge-a02.sqlite")]
    csv_path = str(out / f"reconciliation-{ROUND}-3171.csv")
    capsys.readouterr()
    assert verify(keys, out, "--csv", csv_path, *ledgers) == 0
    assert capsys.readouterr().out.startswith("OK: signature, csv")


def test_tampering_and_missing_payouts_are_found(world, keys, tmp_path, capsys):
    out = tmp_path / "out"
    summary, data = reconcile(world, keys, out)
    csv_path = out / f"reconciliation-{ROUND}-3171.csv"
    csv_path.write_bytes(data.replace(b"300000", b"3000000", 1))
    assert verify(keys, out, "--csv", str(csv_path)) == 1
    assert "MISMATCH csv" in capsys.readouterr().out
    # A payout the terminal made but central never received shows against its ledger.
    world.pay("edge-a02", 2, feed=False)
    assert verify(keys, out, "--ledger", str(world.root / "edge-a02.sqlite")) == 1
    text = capsys.readouterr().out
    assert "edge-a02: payouts ledger 2 vs central 1" in text
    # A summary edited after signing is refused outright.
    json_path = out / f"reconciliation-{ROUND}-3171.json"
    json_path.write_text(json.dumps({**summary, "amount": 1}))
    assert verify(keys, out) == 1
    assert "signature" in capsys.readouterr().out


def test_register_and_user_commands(tmp_path, monkeypatch, capsys, world):
    db = f"sqlite:///{tmp_path / 'other.sqlite'}"
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(world.manifest("edge-b01")))
    assert main(["central", "register", "--db", db, str(path)]) == 0
    assert "3 household(s) registered" in capsys.readouterr().out
    monkeypatch.setenv("EDGE_CENTRAL_PASSWORD", "a long enough password")
    assert main(["central", "user", "--db", db, "kab", "--role", "regency", "--scope", "3171"]) == 0
    store = CentralStore(tmp_path / "other.sqlite")
    try:
        assert authenticate(store, "kab", "a long enough password").scope == "3171"
        [(n,)] = store.rows("SELECT COUNT(*) FROM c_entitlements WHERE point = 'Balai Desa Cipete'")
        assert n == 3
    finally:
        store.close()
    assert main(["central", "user", "--db", db, "x", "--role", "regency", "--scope", "31"]) == 1


@pytest.mark.slow
def test_bundle_build_registers_its_entitlements_at_central(models_dir, faces_dir, tmp_path):
    """``edge bundle build --register DB``: central knows who is entitled once it built it."""
    import csv as csv_mod

    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(
        f'[device]\nid = "edge-r01"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[models]\ndir = "{models_dir}"\n'
    )
    with open(tmp_path / "hh.csv", "w", newline="") as fh:
        w = csv_mod.writer(fh)
        w.writerow(["household_id", "member_id", "role", "name", "regency", "photos"])
        for s in (1, 2):
            w.writerow(
                [
                    f"KPM-3171-0009-000{s}",
                    "M1",
                    "recipient",
                    f"Orang {s}",
                    "3171",
                    f"orl__s0{s}/1.pgm",
                ]
            )
    edge = ["-c", str(cfg_path)]
    assert main([*edge, "keys", "init"]) == 0
    assert main([*edge, "keys", "show", "--out", str(tmp_path / "card.json")]) == 0
    assert main([*edge, "central-keygen", str(tmp_path / "central.key")]) == 0
    db = f"sqlite:///{tmp_path / 'central.sqlite'}"
    rc = main(
        [
            *edge,
            "bundle",
            "build",
            "--csv",
            str(tmp_path / "hh.csv"),
            "--photos",
            str(faces_dir),
            "--round",
            ROUND,
            "--amount",
            "300000",
            "--device-pub",
            str(tmp_path / "card.json"),
            "--central-key",
            str(tmp_path / "central.key"),
            "--out",
            str(tmp_path / "b.bundle"),
            "--point",
            "Kantor Pos Mampang",
            "--regency",
            "3171",
            "--register",
            db,
        ]
    )
    assert rc == 0
    store = CentralStore(tmp_path / "central.sqlite")
    try:
        rows = store.rows(
            "SELECT household_id, point, device_id, amount FROM c_entitlements ORDER BY 1"
        )
        assert rows == [
            ("KPM-3171-0009-0001", "Kantor Pos Mampang", "edge-r01", 300000),
            ("KPM-3171-0009-0002", "Kantor Pos Mampang", "edge-r01", 300000),
        ]
    finally:
        store.close()
