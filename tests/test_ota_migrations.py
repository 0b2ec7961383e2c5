"""Ledger layouts across releases: every layout ever released migrates forward to today's,
keeping every payout; the layout a release can open is what its rollback is checked against."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from support import HOUSEHOLD, ROUND, pay

from edge.ledger.audit import audit_ledger
from edge.ledger.schema import LEDGER_VERSION, RECEIPTS_COLUMNS, SCHEMA_SQL
from edge.ota.install import ledger_layout

# Layout 1, as the first release created it: receipts knew only 'pending' and 'printed', and
# meta had no ledger_version.
V1_RECEIPTS = """(
    event_id TEXT PRIMARY KEY REFERENCES events (event_id),
    status TEXT NOT NULL CHECK (status IN ('pending', 'printed')),
    updated TEXT NOT NULL
)"""
TABLES = ("meta", "events", "payouts", "remote_payouts", "outbox")


def layout_1(src: Path, dst: Path) -> None:
    """A layout-1 ledger made by SQL from the rows of ``src`` (same device, same events)."""
    conn = sqlite3.connect(dst)
    conn.executescript(SCHEMA_SQL.replace(RECEIPTS_COLUMNS, V1_RECEIPTS))
    conn.execute("ATTACH DATABASE ? AS src", (str(src),))
    for table in TABLES:
        conn.execute(f"INSERT INTO {table} SELECT * FROM src.{table}")
    conn.execute("DELETE FROM meta WHERE key = 'ledger_version'")
    conn.execute(
        "INSERT INTO receipts SELECT event_id, CASE status WHEN 'printed' THEN 'printed'"
        " ELSE 'pending' END, updated FROM src.receipts"
    )
    conn.commit()
    conn.execute("DETACH DATABASE src")
    conn.close()


def layout_2(src: Path, dst: Path) -> None:
    """Today's layout: the file as the current code wrote it."""
    dst.write_bytes(src.read_bytes())


# One builder for every layout a release ever wrote. A new LEDGER_VERSION must add its own.
LAYOUTS = {1: layout_1, 2: layout_2}


def test_there_is_a_fixture_for_every_released_layout():
    assert set(LAYOUTS) == set(range(1, LEDGER_VERSION + 1))


@pytest.mark.parametrize("version", sorted(LAYOUTS))
def test_every_released_layout_migrates_forward_keeping_payouts(
    tmp_path, make_ledger, identity, version
):
    scratch = tmp_path / "scratch.sqlite"
    with make_ledger(scratch) as led:
        first = pay(led)
        led.set_receipt(first["event_id"], "printed")
        pay(led, "KPM-3171-0001-0002")
        led.record("no_match", household_id="KPM-3171-0001-0003", round_id=ROUND, score=0.1)
    path = tmp_path / "ledger.sqlite"
    LAYOUTS[version](scratch, path)
    assert ledger_layout(path) == version
    assert audit_ledger(path, identity.device_public_pem()).ok

    with make_ledger(path) as led:  # the daemon's first start on the new release
        assert led.is_paid(HOUSEHOLD, ROUND) is not None
        assert led.is_paid("KPM-3171-0001-0002", ROUND) is not None
        assert led.stats()["events"] == 3
        pay(led, "KPM-3171-0001-0004")  # the chain goes on in the new layout
    assert ledger_layout(path) == LEDGER_VERSION
    report = audit_ledger(path, identity.device_public_pem())
    assert report.ok, report.summary()
