"""Events per second through edge.ledger.store.Ledger: every record is one durable SQLite commit.

Two kinds of record are timed: a refusal (signed event + outbox row) and an accepted payout
(the same plus the payout row with its uniqueness check). The ledger lives in a fresh folder
under bench/out so the figures are those of the real disk, not of a RAM file system.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import Context, require_module
from bench.stats import summarise_ms
from edge.privacy import household_ref

BENCH_REF_KEY = bytes(32)  # the household reference key of the bench round

log = logging.getLogger(__name__)


def run(ctx: Context) -> dict:
    """Commits per second and per-commit milliseconds for refusals and payouts."""
    ledger_mod = require_module("edge.ledger.store", "LEDGER")
    keys_mod = require_module("edge.keys", "LEDGER")
    n = 40 if ctx.opts.quick else 500
    ctx.opts.out_dir.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="ledger-", dir=ctx.opts.out_dir)
    try:
        identity = keys_mod.DeviceIdentity.load_or_create(Path(work) / "keys")
        ledger = ledger_mod.Ledger(
            Path(work) / "ledger.sqlite", identity, "edge-bench-0001", "3171"
        )
        try:
            figures = _measure(ledger, n)
        finally:
            ledger.close()
        db_bytes = sum(p.stat().st_size for p in Path(work).glob("ledger.sqlite*"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "status": "ok",
        "events": n,
        **figures,
        "db_bytes_per_event": round(db_bytes / max(2 * n, 1), 1),
    }


def _measure(ledger, n: int) -> dict:
    """``n`` refusals, then ``n`` payouts, then the outbox drained, on one open ledger."""
    common = {"round_id": "R-BENCH", "threshold": 0.6, "model_id": "bench", "bundle_id": "bench"}

    def refusal(i: int) -> None:
        ledger.record(
            "no_match", household_id=f"KPM-3171-{i:08d}", score=0.31, liveness=0.9, **common
        )

    def payout(i: int) -> None:
        hid = f"KPM-3171-{i:08d}"
        ledger.record(
            "accepted",
            household_id=hid,
            household_ref=household_ref(BENCH_REF_KEY, "R-BENCH", hid),
            amount=600_000,
            score=0.82,
            liveness=0.95,
            **common,
        )

    figures: dict[str, object] = {
        "refusal": _time_records(n, refusal),
        "payout": _time_records(n, payout),
    }
    figures["outbox_depth_before_drain"] = ledger.outbox_depth()
    drained, drain_s = _drain(ledger)
    figures["mark_sent_per_s"] = round(drained / drain_s, 1) if drain_s > 0 else None
    return figures


def _drain(ledger) -> tuple[int, float]:
    """Empty the outbox as the reporter does after each PUBACK: (events, seconds)."""
    t0 = time.perf_counter()
    drained = 0
    while True:
        items = ledger.outbox(limit=100)
        if not items:
            break
        for item in items:
            ledger.mark_sent(item.event_id)
            drained += 1
    return drained, time.perf_counter() - t0


def _time_records(n: int, record) -> dict:
    ms = []
    t_start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        record(i)
        ms.append((time.perf_counter() - t0) * 1000.0)
    total = time.perf_counter() - t_start
    return {"events_per_s": round(n / total, 1), "commit_ms": summarise_ms(ms)}
