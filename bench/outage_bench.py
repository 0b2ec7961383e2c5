"""A terminal offline for a day, then back: how fast central catches up, and how it gets there.

A ledger is filled with ``n`` signed events whose timestamps spread over the past 24 hours (not
timed): a terminal that paid out all day with no network. Then, through one Mosquitto with
mutual TLS:

- ``outbox``: the terminal reconnects while a consumer is subscribed; its Reporter drains the
  outbox (QoS 1, PUBACK, ``mark_sent``) and the clock stops when central has stored every
  event. This is the normal catch-up.
- ``recovery``: the worst case of issue 17. The backlog went to the broker while the consumers
  were away (a shared group after a broker restart), so the terminal has marked every event
  sent and only the recovery loop can bring them back. A consumer in a shared group starts
  with the recovery loop on; it learns the head from the terminal's next health report and asks
  for everything with signed ``resend`` commands. ``to_complete_s`` runs from the consumer's
  start; ``events_per_s`` from the first resend command to the last event stored.

    python bench/outage_bench.py [n_events] [--plain]
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# The tests' broker helper, found through the sys.path entry above, which mypy cannot follow.
from mosquitto import Broker, Pki, wait_for  # type: ignore[import-not-found]  # noqa: E402

from edge.config import parse_config  # noqa: E402
from edge.keys import DeviceIdentity, public_pem  # noqa: E402
from edge.ledger.store import Ledger  # noqa: E402
from edge.mqtt.consumer import Consumer, DeviceRegistry  # noqa: E402
from edge.mqtt.processor import CommandProcessor  # noqa: E402
from edge.mqtt.recovery import RecoveryPolicy  # noqa: E402
from edge.mqtt.reporter import Reporter  # noqa: E402
from edge.mqtt.store import EventStore  # noqa: E402

DEVICE = "edge-outage-01"
DAY_S = 24 * 3600.0
HEALTH_S = 5.0
# Production defaults except a shorter settle time and scan period, which only move the start.
POLICY = RecoveryPolicy(interval_s=1.0, settle_s=2.0)


class _DayClock:
    """The ledger's clock during the simulated day: n readings spread over 24 hours."""

    def __init__(self, n: int) -> None:
        self.t = time.time() - DAY_S
        self.step = DAY_S / max(1, n)

    def __call__(self) -> float:
        self.t += self.step
        return min(self.t, time.time())


def _fill(root: Path, n: int) -> tuple[Ledger, DeviceIdentity]:
    identity = DeviceIdentity.generate()
    ledger = Ledger(root / "ledger.sqlite", identity, DEVICE, "3171", clock=_DayClock(n))
    # Set-up only: the day's events are fodder for the catch-up, and an fsync each would make
    # filling the ledger the slowest part of the run.
    ledger._conn.execute("PRAGMA synchronous=OFF")
    quiet = logging.getLogger("edge.ledger.store")  # one INFO line per event: a day's worth
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    for i in range(n):
        if i % 4 == 0:
            ledger.record("accepted", household_id=f"H-{i:07d}", round_id="2026-11", amount=600000)
        else:
            ledger.record("no_match", score=0.21, threshold=0.6, liveness=0.9)
    quiet.setLevel(level)
    ledger._conn.execute("PRAGMA synchronous=FULL")
    return ledger, identity


def _reporter(broker: Broker, root: Path, ledger: Ledger, identity, central_key) -> Reporter:
    cfg = parse_config(
        {
            "device": {"id": DEVICE, "regency": "3171", "state_dir": str(root)},
            "mqtt": {**broker.mqtt_config(DEVICE), "health_interval_s": HEALTH_S},
        }
    )
    pem = public_pem(central_key.public_key())
    return Reporter(cfg, ledger, identity, CommandProcessor(pem, DEVICE, root, {}))


def _consumer(broker, store, registry, group, name, central_key=None) -> Consumer:
    consumer = Consumer(
        broker.settings("central"),
        store,
        registry,
        group=group,
        client_id=name,
        central_key=central_key,
        recovery=POLICY,
    )
    consumer.start()
    if not consumer.subscribed.wait(10):
        raise RuntimeError("consumer could not subscribe")
    return consumer


def run(n_events: int = 5000, tls: bool = True) -> dict:
    """Catch-up after a day offline: outbox drain, then the recovery loop's worst case."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    central_key = Ed25519PrivateKey.generate()
    timeout = max(120.0, n_events / 20)
    with tempfile.TemporaryDirectory(prefix="outage-bench-") as tmp:
        root = Path(tmp)
        broker = Broker(root / "broker", Pki(root / "pki") if tls else None)
        broker.start()
        ledger, identity = _fill(root, n_events)
        registry = DeviceRegistry(keys={DEVICE: identity.device_public_pem()})
        reporter = None
        stores = []
        try:
            # 1. The normal way back: the outbox drains into a subscribed consumer.
            stores.append(EventStore(root / "central-outbox.sqlite"))
            consumer = _consumer(broker, stores[0], registry, None, "outage-plain")
            reporter = _reporter(broker, root, ledger, identity, central_key)
            t0 = time.perf_counter()
            reporter.start()
            if not wait_for(lambda: stores[0].count() == n_events, timeout, 0.05):
                raise RuntimeError(f"outbox: {stores[0].count()} of {n_events} arrived")
            outbox_s = time.perf_counter() - t0
            consumer.stop()
            # 2. The worst case: a shared group that saw none of it; only resends help.
            stores.append(EventStore(root / "central-recovery.sqlite"))
            t0 = time.perf_counter()
            consumer = _consumer(broker, stores[1], registry, "late", "outage-late", central_key)
            if not wait_for(lambda: stores[1].count() == n_events, timeout, 0.05):
                raise RuntimeError(f"recovery: {stores[1].count()} of {n_events} arrived")
            done = time.perf_counter()
            consumer.stop()
            asked = stores[1].query("SELECT MIN(asked_at), COUNT(*) FROM resends")[0]
            last = stores[1].query("SELECT MAX(received_at) FROM events")[0][0]
            rate_s = max(1e-3, last - asked[0])
        finally:
            if reporter is not None:
                reporter.stop()
            for s in stores:
                s.close()
            ledger.close()
            broker.stop()
    return {
        "events": n_events,
        "offline_s": DAY_S,
        "tls": tls,
        "outbox": {
            "seconds": round(outbox_s, 2),
            "events_per_s": round(n_events / outbox_s, 1),
        },
        "recovery": {
            "to_complete_s": round(done - t0, 2),
            "events_per_s": round(n_events / rate_s, 1),
            "resend_commands": int(asked[1]),
            "max_range": POLICY.max_range,
            "health_interval_s": HEALTH_S,
        },
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    print(json.dumps(run(int(args[0]) if args else 5000, tls="--plain" not in sys.argv), indent=2))
