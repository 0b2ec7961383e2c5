"""Retention: old personal data goes, the chain stays verifiable, the current round stays whole."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support import REF_KEY, ROUND, T0, pay, unavailable

from edge.__main__ import main
from edge.errors import AlreadyPaid
from edge.ledger.audit import audit_ledger, read_events
from edge.ledger.prune import STUB_FIELDS, prune_crops, prune_ledger
from edge.ledger.verify import verify_events
from edge.privacy import household_ref

DAY = 86400.0
OLD_ROUND, MID_ROUND = "2026-06", "2026-09"  # ROUND (2026-12) is the installed one


def remote(event_id: str, hid: str, round_id: str) -> dict:
    return {
        "event_id": event_id,
        "device_id": "edge-other-0002",
        "outcome": "accepted",
        "household_ref": household_ref(REF_KEY, round_id, hid),
        "round_id": round_id,
        "ts": "2026-06-01T00:00:00.000Z",
    }


@pytest.fixture
def history(ledger, clock):
    """200 days of a terminal: an old round, a round still active lately, the current one."""
    clock.set(T0 - 200 * DAY)
    old = {
        "paid": pay(ledger, "KPM-3171-0001-0001", OLD_ROUND),
        "refused": ledger.record("no_match", household_id="KPM-3171-0001-0002", round_id=OLD_ROUND),
        "unsent": ledger.record("spoof", household_id="KPM-3171-0001-0003", round_id=OLD_ROUND),
        "unprinted": pay(ledger, "KPM-3171-0001-0004", OLD_ROUND),
        "no_round": ledger.record("no_face"),
        "mid": ledger.record("no_match", household_id="KPM-3171-0001-0005", round_id=MID_ROUND),
    }
    ledger.record_remote_payout(remote("0b8c1f5e-0000-4000-8000-000000000001", "KPM-9", OLD_ROUND))
    ledger.record_remote_payout(remote("0b8c1f5e-0000-4000-8000-000000000002", "KPM-8", ROUND))
    clock.set(T0 - 20 * DAY)
    recent = ledger.record("no_match", household_id="KPM-3171-0001-0006", round_id=MID_ROUND)
    clock.set(T0 - 120 * DAY)
    old["current_round"] = pay(ledger, "KPM-3171-0001-0007", ROUND)  # current round, long ago
    clock.set(T0)
    now = pay(ledger, "KPM-3171-0001-0008", ROUND)
    for ev in [*old.values(), recent, now]:
        if ev is not old["unsent"]:
            ledger.mark_sent(ev["event_id"])  # the broker acknowledged it
        if ev["outcome"] == "accepted" and ev is not old["unprinted"]:
            ledger.set_receipt(ev["event_id"], "printed")
    return old, recent, now


def prune(ledger, **kw):
    args = {"ledger_days": 90, "synced_days": 30, "installed_rounds": [ROUND], "now": T0}
    return prune_ledger(ledger.path, **{**args, **kw})


def rows(ledger) -> dict[str, tuple]:
    conn = sqlite3.connect(ledger.path)
    try:
        found = conn.execute("SELECT event_id, household_id, round_id, body FROM events")
        return {eid: (hid, rnd, json.loads(body)) for eid, hid, rnd, body in found}
    finally:
        conn.close()


def test_old_acknowledged_events_become_chain_stubs(ledger, history, identity):
    old, recent, now = history
    report = prune(ledger)
    assert (report.events, report.payouts) == (3, 1)  # paid, refused, no_round; 1 payout row
    after = rows(ledger)
    for name in ("paid", "refused", "no_round"):
        hid, rnd, body = after[old[name]["event_id"]]
        assert body["pruned"] is True and set(body) == {*STUB_FIELDS, "pruned"}
        assert hid is None and rnd is None
        assert body["hash"] == old[name]["hash"] and body["sig"] == old[name]["sig"]
        assert "household_ref" not in body and "round_id" not in body
    # Kept whole: not acknowledged, receipt not printed, a round active lately, the current one.
    for ev in (old["unsent"], old["unprinted"], old["mid"], old["current_round"], recent, now):
        assert after[ev["event_id"]][2] == ev
    assert ledger.household_of(old["paid"]["event_id"]) is None
    assert ledger.is_paid("KPM-3171-0001-0001", OLD_ROUND) is None
    assert ledger.is_paid("KPM-3171-0001-0004", OLD_ROUND)  # its receipt is still to print

    # The whole chain still verifies: links and signatures of the stubs, content of the rest.
    report = audit_ledger(ledger.path, identity.device_public_pem())
    assert report.ok, report.summary()
    assert any("3 event(s) pruned" in w for w in report.warnings)
    events = list(read_events(ledger.path))
    forged = [dict(e) for e in events]
    forged[0]["hash"] = "ab" * 32  # a stub whose hash was swapped: signature and link break
    assert not verify_events(forged, identity.device_public_pem()).ok


def test_the_current_round_is_never_pruned_so_no_double_payout(ledger, history, clock):
    clock.set(T0 - 50 * DAY)
    failed = ledger.record("no_match", household_id="KPM-3171-0001-0010", round_id=ROUND)
    ledger.mark_sent(failed["event_id"])
    clock.set(T0)
    prune(ledger, ledger_days=1)  # even with the shortest retention
    assert ledger.is_paid("KPM-3171-0001-0007", ROUND)
    with pytest.raises(AlreadyPaid):
        pay(ledger, "KPM-3171-0001-0007", ROUND)
    # The attempt limit still counts this round's failures; the other rounds are gone.
    assert ledger.count_outcomes("KPM-3171-0001-0010", ROUND, ("no_match",), None) == 1
    assert ledger.count_outcomes("KPM-3171-0001-0006", MID_ROUND, ("no_match",), None) == 0


def test_prune_is_idempotent_and_puts_the_guards_back(ledger, history):
    prune(ledger)
    assert prune(ledger).events == 0
    conn = sqlite3.connect(ledger.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE events SET body = '{}' WHERE seq = 1")
        with pytest.raises(sqlite3.IntegrityError, match="permanent"):
            conn.execute("DELETE FROM payouts")
    finally:
        conn.close()
    # The terminal keeps writing after a prune, on the same chain.
    pay(ledger, "KPM-3171-0001-0099", ROUND)


def test_a_pruned_payout_is_not_reprinted(ledger, history):
    from edge.config import Config
    from edge.errors import CommandRefused
    from edge.payout.receipts import ReceiptDesk

    old, _, _ = history
    prune(ledger)

    class Paper:
        enabled = True

        def print_receipt(self, r, *, reprint=False):  # pragma: no cover - must not be called
            raise AssertionError("a pruned payout was printed")

    desk = ReceiptDesk(Config(), Paper(), ledger, lambda hid: None)
    with pytest.raises(CommandRefused, match="past retention"):
        desk.reprint(old["paid"]["event_id"])


def test_synced_payouts_of_past_rounds_go(ledger, history):
    report = prune(ledger)
    assert report.remote_payouts == 1
    ref_old = household_ref(REF_KEY, OLD_ROUND, "KPM-9")
    ref_now = household_ref(REF_KEY, ROUND, "KPM-8")
    assert ledger.is_paid("KPM-9", OLD_ROUND, ref_old) is None
    assert ledger.is_paid("KPM-8", ROUND, ref_now)["where"] == "remote"  # current round stays


def test_debug_crops_older_than_the_limit_go(tmp_path):
    folder = tmp_path / "debug"
    folder.mkdir()
    for name, age_days in (("old.png", 10), ("new.png", 1), ("notes.txt", 30)):
        path = folder / name
        path.write_bytes(b"x")
        os.utime(path, (T0 - age_days * DAY, T0 - age_days * DAY))
    assert prune_crops(folder, 7, now=T0) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["new.png", "notes.txt"]
    assert prune_crops(tmp_path / "absent", 7) == 0


def test_edge_prune_command(tmp_path, make_ledger, clock, capsys):
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[device]\nstate_dir = "{state}"\n[retention]\nledger_days = 30\ndebug_crops_days = 2\n'
    )
    led = make_ledger(state / "ledger.sqlite")
    clock.set(T0 - 100 * DAY)
    ev = led.record("no_match", household_id="KPM-3171-0001-0002", round_id=OLD_ROUND)
    led.mark_sent(ev["event_id"])
    (state / "debug").mkdir()
    crop = state / "debug" / f"{ev['event_id']}.png"
    crop.write_bytes(b"png")
    os.utime(crop, (T0 - 100 * DAY, T0 - 100 * DAY))
    assert main(["-c", str(cfg), "prune"]) == 0
    out = capsys.readouterr().out
    assert "1 event(s) to chain stubs" in out and "1 debug crop(s)" in out
    assert led.event(ev["event_id"])["pruned"] is True and not crop.exists()


def test_prune_timer_units_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze", "apt-get install systemd")
    units = Path(__file__).resolve().parent.parent / "systemd"
    edge_bin = Path(sys.executable).parent / "edge"
    for name in ("edge-prune.service", "edge-prune.timer"):
        text = (units / name).read_text().replace("/opt/edge/venv/bin/edge", str(edge_bin))
        (tmp_path / name).write_text(text)
    service = (units / "edge-prune.service").read_text()
    assert "ExecStart=/opt/edge/venv/bin/edge --config /etc/edge/config.toml prune" in service
    assert "PrivateNetwork=yes" in service  # pruning needs no network
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "edge-prune.timer")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "edge-prune" not in done.stderr, done.stderr


def test_a_resend_request_skips_pruned_stubs(ledger, history, identity):
    from types import SimpleNamespace

    from edge.config import Config
    from edge.mqtt.reporter import Reporter
    from edge.mqtt.schemas import validate

    prune(ledger)
    cfg = Config()
    cfg.mqtt.tls = False
    reporter = Reporter(cfg, ledger, identity)
    sent: list[dict] = []
    reporter._client = SimpleNamespace(
        publish=lambda topic, payload, qos: sent.append(json.loads(payload))
    )
    assert reporter.resend_action({"from_seq": 1, "to_seq": 100}) == {"resent": len(sent)}
    assert len(sent) == len(list(ledger.events())) - 3  # the three stubs stay home
    for event in sent:
        validate("event", event)


def test_prune_works_in_short_batches_and_refuses_a_missing_file(ledger, history, monkeypatch):
    from edge.errors import LedgerError
    from edge.ledger import prune as module

    monkeypatch.setattr(module, "BATCH", 2)  # three stubs: two transactions of work, one empty
    assert prune(ledger).events == 3
    assert prune(ledger).events == 0
    with pytest.raises(LedgerError, match="no such ledger"):
        prune_ledger(ledger.path.with_name("absent.sqlite"), ledger_days=1, synced_days=1)
    assert not ledger.path.with_name("absent.sqlite").exists()
