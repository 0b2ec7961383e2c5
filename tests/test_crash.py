"""Power-cut test: a child pays in a loop and is SIGKILLed at random points, 25 times.

Afterwards every payout the child saw committed is in the ledger, no household is paid twice,
and the signed chain verifies with no gap. The child writes ``paid <household> <event_id>``
to a log only after :meth:`Ledger.record` returned, i.e. after the fsynced commit.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest

from edge.errors import AlreadyPaid
from edge.keys import DeviceIdentity
from edge.ledger.audit import audit_ledger, read_events
from edge.ledger.store import Ledger

KILLS = 25
DEVICE = "edge-crash-0001"

CHILD = r"""
import random, sys
from edge.keys import DeviceIdentity
from edge.errors import AlreadyPaid
from edge.ledger.store import Ledger

db, keys, log_path, seed = sys.argv[1:5]
ident = DeviceIdentity.load_or_create(keys)
led = Ledger(db, ident, "edge-crash-0001", "3171")
rng = random.Random(int(seed))
log = open(log_path, "a", buffering=1)
log.write("start\n")
last = None
while True:
    # A third of the attempts retry the household just served: the double-claim case.
    if last and rng.random() < 0.33:
        hh = last
    else:
        hh = "KPM-3171-%04d-0001" % rng.randrange(400)
    try:
        ev = led.record("accepted", household_id=hh, round_id="2026-12", amount=300000,
                        score=0.8, threshold=0.6, liveness=0.9)
        log.write("paid %s %s\n" % (hh, ev["event_id"]))
    except AlreadyPaid:
        led.record("already_paid", household_id=hh, round_id="2026-12")
        log.write("dup %s\n" % hh)
    if rng.random() < 0.2:
        led.record("no_match", household_id=hh, round_id="2026-12", score=0.3, threshold=0.6)
    last = hh
"""


def _wait_for_starts(log_path, n, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_path.exists() and log_path.read_text().count("start\n") >= n:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.slow
def test_sigkill_loses_no_payout_and_never_pays_twice(tmp_path):
    db = tmp_path / "ledger.sqlite"
    keys = tmp_path / "keys"
    log_path = tmp_path / "child.log"
    ident = DeviceIdentity.load_or_create(keys)
    rng = random.Random(20261201)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for k in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db), str(keys), str(log_path), str(k)],
            env=env,
            stderr=subprocess.PIPE,
        )
        started = _wait_for_starts(log_path, k + 1)
        if not started:
            child.kill()
            pytest.fail(f"child {k} did not start: {child.communicate()[1].decode()[-2000:]}")
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]

    committed = {}
    dups = 0
    for line in log_path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "paid" and len(parts) == 3:
            committed[parts[1]] = parts[2]
        elif parts and parts[0] == "dup":
            dups += 1
    assert len(committed) > 20, "the child barely ran: the test proves nothing"
    assert dups > 5, "no repeated claims were tried"

    events = list(read_events(db))
    accepted = Counter(e["household_id"] for e in events if e["outcome"] == "accepted")
    assert accepted and max(accepted.values()) == 1, "a household was paid twice"
    by_id = {e["event_id"]: e for e in events}
    lost = [hh for hh, eid in committed.items() if by_id.get(eid, {}).get("household_id") != hh]
    assert lost == [], f"{len(lost)} committed payouts missing from the ledger"

    conn = sqlite3.connect(db)
    payouts = dict(conn.execute("SELECT household_id, event_id FROM payouts"))
    (outbox,) = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
    conn.close()
    assert set(payouts) == set(accepted)
    assert all(payouts[hh] == eid for hh, eid in committed.items())
    assert outbox == len(events)

    report = audit_ledger(db, ident.device_public_pem())
    assert report.ok, report.summary()
    assert report.gaps == [] and report.count == len(events)
    assert 1 < report.boot_sessions <= KILLS

    # The terminal comes back after the last cut and carries on the same chain.
    led = Ledger(db, ident, DEVICE, "3171")
    some_hh = next(iter(committed))
    with pytest.raises(AlreadyPaid):
        led.record("accepted", household_id=some_hh, round_id="2026-12", amount=300000)
    ev = led.record("no_face")
    assert ev["seq"] == len(events) + 1 and ev["prev_hash"] == events[-1]["hash"]
    led.close()
