"""Events per second through one Mosquitto to one consumer, end to end.

A ledger is filled with ``n`` signed events first (not timed). Then the clock runs from the
reporter's start until the consumer has verified and stored every event and the ledger has
marked every row sent: schema check, hash and Ed25519 check, SQLite insert, PUBACKs, all
included. Mutual TLS by default, like production.

    python bench/mqtt_bench.py [n_events] [devices] [--plain]
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
from edge.keys import DeviceIdentity  # noqa: E402
from edge.ledger.store import Ledger  # noqa: E402
from edge.mqtt.client import make_client  # noqa: E402
from edge.mqtt.consumer import Consumer, DeviceRegistry  # noqa: E402
from edge.mqtt.reporter import Reporter  # noqa: E402
from edge.mqtt.store import EventStore  # noqa: E402
from edge.privacy import household_ref  # noqa: E402


def _fill(
    root: Path, device_id: str, n: int, durable: bool = True
) -> tuple[Ledger, DeviceIdentity]:
    identity = DeviceIdentity.generate()
    ledger = Ledger(root / f"{device_id}.sqlite", identity, device_id, "3171")
    if not durable:
        # Bench set-up only: these events are fodder for the broker and consumer phase, and an
        # fsync per event would make filling the ledger the slowest part of the run.
        ledger._conn.execute("PRAGMA synchronous=OFF")
    for i in range(n):
        if i % 4 == 0:
            hid = f"{device_id}-{i:07d}"
            ref = household_ref(bytes(32), "2026-11", hid)
            ledger.record(
                "accepted", household_id=hid, household_ref=ref, round_id="2026-11", amount=600000
            )
        else:
            ledger.record("no_match", score=0.21, threshold=0.6, liveness=0.9)
    return ledger, identity


def _consumer_phase(broker: Broker, root: Path, n_events: int, devices: int) -> dict:
    """Pre-signed events from ``devices`` publishers at QoS 1 -> one verifying consumer."""
    ids = [f"edge-bench-{i:02d}" for i in range(devices)]
    per = [n_events // devices + (1 if i < n_events % devices else 0) for i in range(devices)]
    filled = {d: _fill(root, d, k, durable=False) for d, k in zip(ids, per, strict=True)}
    registry = DeviceRegistry(keys={d: f[1].device_public_pem() for d, f in filled.items()})
    store = EventStore(root / "central.sqlite")
    consumer = Consumer(broker.settings("central"), store, registry, client_id="bench-consumer")
    consumer.start()
    publishers = []
    try:
        if not consumer.subscribed.wait(10):
            raise RuntimeError("consumer could not subscribe")
        payloads = {
            d: [item.payload for item in f[0].outbox(limit=n_events)] for d, f in filled.items()
        }
        for d in ids:
            settings = broker.settings(d)
            client = make_client(d, settings)
            client.max_inflight_messages_set(64)
            client.connect(settings.host, settings.port)
            client.loop_start()
            publishers.append(client)
        t0 = time.perf_counter()
        infos = []
        for d, client in zip(ids, publishers, strict=True):
            topic = f"bansos/v1/3171/{d}/event"
            infos += [client.publish(topic, p, qos=1) for p in payloads[d]]
        done = wait_for(
            lambda: store.count() == n_events, timeout=max(60.0, n_events / 50), interval=0.01
        )
        elapsed = time.perf_counter() - t0
        if not done:
            raise RuntimeError(f"only {store.count()} of {n_events} events arrived")
        acked = sum(1 for i in infos if i.is_published())
    finally:
        for client in publishers:
            client.disconnect()
            client.loop_stop()
        consumer.stop()
    stats = {
        "events": n_events,
        "publishers": devices,
        "seconds": round(elapsed, 3),
        "events_per_s": round(n_events / elapsed, 1),
        "pubacks": acked,
        "duplicates": consumer.duplicates,
        "rejected": consumer.rejected,
    }
    store.close()
    for ledger, _ in filled.values():
        ledger.close()
    return stats


def _reporter_phase(broker: Broker, root: Path, n_events: int) -> dict:
    """One real terminal: Reporter from a durable ledger, PUBACK -> mark_sent, to a consumer."""
    ledger, identity = _fill(root, "edge-term-01", n_events)
    store = EventStore(root / "central-reporter.sqlite")
    registry = DeviceRegistry(keys={"edge-term-01": identity.device_public_pem()})
    # Its own group: the first phase's consumer still holds a share of "central" (see docs).
    consumer = Consumer(
        broker.settings("central"), store, registry, group="terminal", client_id="bench-consumer-2"
    )
    consumer.start()
    reporter = None
    try:
        if not consumer.subscribed.wait(10):
            raise RuntimeError("consumer could not subscribe")
        cfg = parse_config(
            {
                "device": {"id": "edge-term-01", "regency": "3171", "state_dir": str(root)},
                "mqtt": {**broker.mqtt_config("edge-term-01"), "health_interval_s": 3600},
            }
        )
        reporter = Reporter(cfg, ledger, identity)
        t0 = time.perf_counter()
        reporter.start()
        done = wait_for(
            lambda: store.count() == n_events and ledger.outbox_depth() == 0,
            timeout=max(60.0, n_events / 20),
            interval=0.01,
        )
        elapsed = time.perf_counter() - t0
        if not done:
            raise RuntimeError(f"only {store.count()} of {n_events} events arrived")
    finally:
        if reporter is not None:
            reporter.stop()
        consumer.stop()
    store.close()
    ledger.close()
    return {
        "events": n_events,
        "seconds": round(elapsed, 3),
        "events_per_s": round(n_events / elapsed, 1),
    }


def run(n_events: int = 2000, tls: bool = True, devices: int = 4) -> dict:
    """Events per second through one fresh Mosquitto to one verifying, storing consumer.

    ``events_per_s`` is the broker + consumer figure: ``devices`` publishers send pre-signed
    ledger events at QoS 1 and the clock stops when the consumer has schema-checked, verified
    (hash, Ed25519) and stored every one in SQLite. ``terminal`` is one real terminal end to
    end (Reporter, PUBACK, ``mark_sent``) for ``min(n_events, 500)`` events: a terminal is
    bounded by its own ledger's fsync per acknowledged row, far above any real decision rate.
    """
    with tempfile.TemporaryDirectory(prefix="mqtt-bench-") as tmp:
        root = Path(tmp)
        broker = Broker(root / "broker", Pki(root / "pki") if tls else None)
        broker.start()
        try:
            central = _consumer_phase(broker, root, n_events, devices)
            terminal = _reporter_phase(broker, root, min(n_events, 500))
        finally:
            broker.stop()
    return {**central, "tls": tls, "terminal": terminal}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 2000
    devices = int(args[1]) if len(args) > 1 else 4
    print(json.dumps(run(n, tls="--plain" not in sys.argv, devices=devices), indent=2))
