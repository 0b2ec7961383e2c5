"""Power-cut tests: a child pays (and prints) in a loop and is SIGKILLed at random points.

Afterwards every payout the child saw committed is in the ledger, no household is paid twice,
and the signed chain verifies with no gap. The child writes ``paid <household> <event_id>``
to a log only after :meth:`Ledger.record` returned, i.e. after the fsynced commit. With a
printer, no receipt comes out twice unmarked and every slip cut off by a kill is on record.
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
from functools import partial

import pytest
from escpos_decode import split_slips
from support import pay, wait_for

from edge.config import Config
from edge.config.devices import PrinterConfig
from edge.devices.printer import make_printer
from edge.errors import AlreadyPaid
from edge.events import verify_receipt_payload
from edge.ledger.audit import audit_ledger, read_events
from edge.payout.receipts import ReceiptDesk
from edge.privacy import household_ref

KILLS = 25
DEVICE = "edge-crash-0001"

CHILD = r"""
import random, sys
from edge.keys import DeviceIdentity
from edge.errors import AlreadyPaid
from edge.ledger.store import Ledger
from edge.privacy import household_ref

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
                        household_ref=household_ref(bytes(32), "2026-12", hh),
                        score=0.8, threshold=0.6, liveness=0.9)
        log.write("paid %s %s\n" % (hh, ev["event_id"]))
    except AlreadyPaid:
        led.record("already_paid", household_id=hh, round_id="2026-12")
        log.write("dup %s\n" % hh)
    if rng.random() < 0.2:
        led.record("no_match", household_id=hh, round_id="2026-12", score=0.3, threshold=0.6)
    last = hh
"""


PRINT_KILLS = 20

# The same, with receipts: each payout is printed to a file printer (real ESC/POS bytes) by the
# real ReceiptDesk; every start first prints what the last run left unprinted.
PRINTING_CHILD = r"""
import random, sys
from edge.config import Config
from edge.config.devices import PrinterConfig
from edge.devices.printer import make_printer
from edge.errors import AlreadyPaid
from edge.keys import DeviceIdentity
from edge.ledger.store import Ledger
from edge.privacy import household_ref
from edge.payout.receipts import ReceiptDesk

db, keys, spool, log_path, seed = sys.argv[1:6]
led = Ledger(db, DeviceIdentity.load_or_create(keys), "edge-crash-0001", "3171")
printer = make_printer(PrinterConfig(kind="file", path=spool), ".")
desk = ReceiptDesk(Config(), printer, led, lambda hid: "W*** D***")
rng = random.Random(int(seed))
log = open(log_path, "a", buffering=1)
log.write("start\n")
desk.retry_pending()
while True:
    hh = "KPM-3171-%04d-0001" % rng.randrange(5000)
    try:
        ev = led.record("accepted", household_id=hh, round_id="2026-12", amount=300000,
                        household_ref=household_ref(bytes(32), "2026-12", hh))
    except AlreadyPaid:
        continue
    desk.handle(ev)
"""


def _started(log_path, n: int) -> bool:
    """The child logs ``start`` once it is running: have ``n`` children got that far?"""
    return log_path.exists() and log_path.read_text().count("start\n") >= n


def _run_and_kill(script, args, log_path, kills, rng, max_sleep):
    """Start ``script`` with ``args``, log path and run number; SIGKILL it at a random moment
    after it logged its start; ``kills`` times."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for k in range(kills):
        child = subprocess.Popen(
            [sys.executable, "-c", script, *map(str, args), str(log_path), str(k)],
            env=env,
            stderr=subprocess.PIPE,
        )
        if not wait_for(partial(_started, log_path, k + 1), timeout=20.0, interval=0.01):
            child.kill()
            pytest.fail(f"child {k} did not start: {child.communicate()[1].decode()[-2000:]}")
        time.sleep(rng.uniform(0.0, max_sleep))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]


@pytest.mark.slow
def test_sigkill_loses_no_payout_and_never_pays_twice(tmp_path, make_identity, make_ledger):
    db = tmp_path / "ledger.sqlite"
    keys = tmp_path / "keys"
    log_path = tmp_path / "child.log"
    ident = make_identity(keys)  # on disk: the child signs with these keys
    _run_and_kill(CHILD, (db, keys), log_path, KILLS, random.Random(20261201), 0.25)

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
    accepted = Counter(e["household_ref"] for e in events if e["outcome"] == "accepted")
    assert accepted and max(accepted.values()) == 1, "a household was paid twice"
    by_id = {e["event_id"]: e for e in events}
    ref = {hh: household_ref(bytes(32), "2026-12", hh) for hh in committed}
    lost = [
        hh for hh, eid in committed.items() if by_id.get(eid, {}).get("household_ref") != ref[hh]
    ]
    assert lost == [], f"{len(lost)} committed payouts missing from the ledger"

    conn = sqlite3.connect(db)
    payouts = dict(conn.execute("SELECT household_id, event_id FROM payouts"))
    (outbox,) = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
    conn.close()
    assert {household_ref(bytes(32), "2026-12", hh) for hh in payouts} == set(accepted)
    assert all(payouts[hh] == eid for hh, eid in committed.items())
    assert outbox == len(events)

    report = audit_ledger(db, ident.device_public_pem())
    assert report.ok, report.summary()
    assert report.gaps == [] and report.count == len(events)
    assert 1 < report.boot_sessions <= KILLS

    # The terminal comes back after the last cut and carries on the same chain.
    led = make_ledger(db, ident, DEVICE)
    some_hh = next(iter(committed))
    with pytest.raises(AlreadyPaid):
        pay(led, some_hh)
    ev = led.record("no_face")
    assert ev["seq"] == len(events) + 1 and ev["prev_hash"] == events[-1]["hash"]


@pytest.mark.slow
def test_sigkill_while_printing_never_prints_a_second_original(
    tmp_path, make_identity, make_ledger
):
    """Kills land mostly mid-slip (the QR is encoded between the header and the code itself).
    After every restart: no receipt came out twice unmarked, each cut-off slip was counted,
    and every payout has a whole receipt."""
    db, keys, spool = tmp_path / "ledger.sqlite", tmp_path / "keys", tmp_path / "receipts.bin"
    ident = make_identity(keys)  # on disk: the child signs with these keys
    args = (db, keys, spool)
    _run_and_kill(PRINTING_CHILD, args, tmp_path / "child.log", PRINT_KILLS, random.Random(7), 0.4)

    # The last restart, here: what the last kill left is printed now.
    with make_ledger(db, ident, DEVICE) as led:
        printer = make_printer(PrinterConfig(kind="file", path=str(spool)), tmp_path)
        ReceiptDesk(Config(), printer, led, lambda hid: None).retry_pending()
        printer.close()
        assert led.stats()["pending_receipts"] == 0
        payouts = [e for e in led.events() if e["outcome"] == "accepted"]
        cuts = {e["event_id"]: led.receipt_state(e["event_id"]).interrupted for e in payouts}
    assert len(payouts) > PRINT_KILLS, "the child barely ran: the test proves nothing"

    slips = split_slips(spool.read_bytes())
    cut_off = [s for s in slips if not s.whole]
    assert len(cut_off) >= 1, "no kill landed mid-slip: the test proves nothing"
    assert len(cut_off) <= sum(cuts.values()), "a cut-off slip is not on record"
    whole: dict[str, Counter] = {e["event_id"]: Counter() for e in payouts}
    pem = ident.device_public_pem()
    for slip in (s for s in slips if s.whole):
        [qr] = slip.decoded.qr
        marked = "** CETAK ULANG **" in slip.texts
        whole[verify_receipt_payload(qr, pem)["event_id"]][marked] += 1
    for event_id, printed in whole.items():
        assert printed[False] <= 1, f"receipt {event_id} printed twice as an original"
        if cuts[event_id]:
            assert printed[True] >= 1, f"receipt {event_id} cut off and not printed again"
        else:
            assert printed == Counter({False: 1}), f"receipt {event_id}: {printed}"
    report = audit_ledger(db, pem)
    assert report.ok, report.summary()
    assert len(report.warnings) == sum(1 for n in cuts.values() if n)
