"""MQTT sub-commands: ``edge consume`` (central reference consumer) and ``edge command``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_DB = "sqlite:///var/central/events.sqlite"


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default="localhost", help="broker host (default: localhost)")
    p.add_argument(
        "--port", type=int, default=None, help="broker port (default 8883 with TLS, else 1883)"
    )
    p.add_argument("--tls", action="store_true", help="mutual TLS (needs --ca, --cert, --key)")
    p.add_argument("--ca", default="", help="CA certificate that signed the broker's certificate")
    p.add_argument("--cert", default="", help="this client's certificate (CN = MQTT username)")
    p.add_argument("--key", default="", help="this client's private key")
    p.add_argument("--username", default="", help="username (plain TCP labs only)")
    p.add_argument(
        "--password-env",
        default="EDGE_MQTT_PASSWORD",
        help="environment variable with the password",
    )
    p.add_argument("--prefix", default="bansos/v1", help="topic prefix")


def _settings(args: argparse.Namespace):
    from edge.mqtt.client import BrokerSettings

    return BrokerSettings(
        host=args.broker,
        port=args.port or (8883 if args.tls else 1883),
        tls=args.tls,
        ca_file=args.ca,
        cert_file=args.cert,
        key_file=args.key,
        username=args.username,
        password=os.environ.get(args.password_env, ""),
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to the ``edge`` parser."""
    p = sub.add_parser(
        "consume",
        help="central: store every terminal's events (verified, once) and report totals",
        description="Reference consumer: joins the MQTT 5 shared subscription "
        "$share/<group>/<prefix>/+/+/event, verifies each event's hash and device signature, "
        "stores it idempotently, and flags sequence gaps and double payouts.",
    )
    _broker_args(p)
    p.add_argument(
        "--db",
        default=DEFAULT_DB,
        help=f"sqlite:///path or postgresql://... (default {DEFAULT_DB})",
    )
    p.add_argument(
        "--group", default="central", help="shared subscription group (default: central)"
    )
    p.add_argument(
        "--no-group",
        action="store_true",
        help="plain subscription (a single consumer, see docs/mqtt.md)",
    )
    p.add_argument(
        "--registry",
        help="the signed device registry (edge registry build; needs --central-pub), or, "
        "unsigned and without regency or revocation checks, a folder of <device_id>.pem/.json",
    )
    p.add_argument("--central-pub", help="central Ed25519 public key: verifies --registry")
    p.add_argument("--client-id", help="MQTT client id (default: consumer-<group>-<host>)")
    p.add_argument(
        "--summary", action="store_true", help="print totals per regency and round, then exit"
    )
    p.add_argument(
        "--request-resend",
        action="store_true",
        help="publish signed resend commands for every sequence gap, then exit",
    )
    p.add_argument(
        "--central-key",
        help="central Ed25519 private key (PEM): --request-resend, and automatic recovery of "
        "missing events while consuming",
    )
    p.add_argument(
        "--no-recovery",
        action="store_true",
        help="with --central-key: do not ask terminals for missing events automatically",
    )
    p.add_argument(
        "--silent-after",
        type=float,
        default=900.0,
        help="seconds without a report or event before a device is flagged silent (default 900)",
    )
    _counter_arg(p)
    p.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0: run)"
    )
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("command", help="central: send one signed command to a terminal")
    _broker_args(p)
    p.add_argument("--central-key", required=True, help="central Ed25519 private key (PEM)")
    p.add_argument("--device", required=True, help="terminal id")
    p.add_argument("--regency", required=True, help="terminal's regency code")
    p.add_argument("name", help="bundle | config | reprint | health | resend")
    p.add_argument("--args", default="{}", help="command args as JSON, e.g. '{\"set\": {...}}'")
    p.add_argument("--bundle-file", help="bundle: the bundle blob to send (chunked)")
    p.add_argument("--bundle-id", help="bundle: its id")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the results")
    p.add_argument(
        "--registry", help="signed device registry: check each result's device signature"
    )
    p.add_argument("--central-pub", help="central Ed25519 public key: verifies --registry")
    _counter_arg(p)
    p.set_defaults(func=cmd_command)


def _counter_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--counters",
        help="central's command counter file (default: beside --central-key, "
        "<key>.counters.sqlite); every command gets a larger counter than the last",
    )


def _counters(args: argparse.Namespace):
    from edge.mqtt.counter import CommandCounter

    path = args.counters or str(Path(args.central_key).with_suffix(".counters.sqlite"))
    return CommandCounter(path)


def print_summary(store, out=None, silent_after_s: float = 900.0) -> None:
    """Totals per regency and round, then lag, silent devices, gaps and anomalies."""
    out = out or sys.stdout
    rows = store.summary()
    print(f"{'regency':<8} {'round':<16} {'payouts':>8} {'amount (Rp)':>16}", file=out)
    for r in rows:
        print(f"{r['regency']:<8} {r['round_id']:<16} {r['count']:>8} {r['amount']:>16,}", file=out)
    total = sum(r["amount"] for r in rows)
    print(f"{'total':<25} {sum(r['count'] for r in rows):>8} {total:>16,}", file=out)
    print(f"events stored: {store.count()}, rejected: {store.rejected_count()}", file=out)
    outcomes = store.outcome_counts()
    print("outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())), file=out)
    overrides = store.overrides()
    for kind, label in (("per_device", "terminal"), ("per_staff", "staff"), ("refused", "refused")):
        for key, n in sorted(overrides[kind].items()):
            print(f"OVERRIDES {label} {key}: {n}", file=out)
    for row in store.lag(silent_after_s):
        if row["missing"] > 0:
            print(
                f"LAG {row['device_id']}: {row['missing']} of {row['head_seq']} event(s) missing "
                f"for {row['missing_for_s']:.0f} s",
                file=out,
            )
        if row["silent"]:
            print(
                f"SILENT {row['device_id']}: nothing heard for {row['silent_for_s']:.0f} s",
                file=out,
            )
    print_fleet(store, out)
    for device_id, spans in sorted(store.gaps().items()):
        text = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in spans)
        print(f"GAP {device_id}: seq {text} missing", file=out)
    for a in store.anomalies():
        print(f"ANOMALY {a['kind']} {a['device_id']} {a['event_id']}: {a['detail']}", file=out)


def print_fleet(store, out=None) -> None:
    """Running versions across the fleet, and every terminal whose update did not confirm."""
    out = out or sys.stdout
    fleet = store.fleet()
    if not fleet:
        return
    versions: dict[str, int] = {}
    for t in fleet:
        versions[t["version"] or "?"] = versions.get(t["version"] or "?", 0) + 1
    text = ", ".join(f"{v}={n}" for v, n in sorted(versions.items()))
    print(f"versions ({len(fleet)} terminals): {text}", file=out)
    for t in fleet:
        state = t["update_state"]
        if state and state != "confirmed":
            why = f": {t['error']}" if t["error"] else ""
            print(
                f"UPDATE {t['device_id']} {t['version']} -> {t['update_version']} {state}{why}",
                file=out,
            )


def cmd_consume(args: argparse.Namespace) -> int:
    from edge.mqtt.consumer import Consumer, resend_requests
    from edge.mqtt.recovery import RecoveryPolicy
    from edge.mqtt.store import EventStore

    store = EventStore(args.db)
    try:
        if args.summary:
            print_summary(store, silent_after_s=args.silent_after)
            return 0
        if args.request_resend:
            if not args.central_key:
                print("edge consume: --request-resend needs --central-key", file=sys.stderr)
                return 2
            key = Path(args.central_key).read_bytes()
            requests = resend_requests(store, key, args.prefix, counter=_counters(args))
            _publish_all(_settings(args), requests)
            print(f"requested {len(requests)} resend(s)")
            return 0
        if not args.registry:
            print("edge consume: --registry is needed to verify device signatures", file=sys.stderr)
            return 2
        registry = _consumer_registry(args.registry, args.central_pub)
        central_key = None
        if args.central_key and not args.no_recovery:
            central_key = Path(args.central_key).read_bytes()
        consumer = Consumer(
            _settings(args),
            store,
            registry,
            group=None if args.no_group else args.group,
            prefix=args.prefix,
            client_id=args.client_id,
            central_key=central_key,
            recovery=RecoveryPolicy(silent_after_s=args.silent_after),
        )
        stop = threading.Event()
        previous = {
            s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)
        }
        consumer.start()
        started = time.monotonic()
        while not stop.wait(1.0 if args.duration else 30.0):
            if args.duration and time.monotonic() - started >= args.duration:
                break
            lag = store.lag(args.silent_after)
            log.info(
                "stored %d, duplicates %d, rejected %d, devices behind %d (%d events), silent %d",
                consumer.stored,
                consumer.duplicates,
                consumer.rejected,
                sum(1 for r in lag if r["missing"] > 0),
                sum(max(0, r["missing"]) for r in lag),
                sum(1 for r in lag if r["silent"]),
            )
        consumer.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(
            f"stored {consumer.stored}, duplicates {consumer.duplicates}, rejected {consumer.rejected}"
        )
        return 0
    finally:
        store.close()


def _consumer_registry(path: str, central_pub: str | None):
    """The signed registry when central's key is given; else the old unsigned one (migration)."""
    from edge.errors import RegistryError
    from edge.keys import load_central_public_pem
    from edge.mqtt.consumer import DeviceRegistry
    from edge.registry import RegistryStore

    if central_pub is None:
        if Path(path).is_file() and b'"schema":"bansos.registry/1"' in Path(path).read_bytes():
            raise RegistryError(f"{path} is a signed device registry: give --central-pub")
        log.warning("unsigned device registry: no regency or revocation checks (see --central-pub)")
        return DeviceRegistry(path)
    pem = load_central_public_pem(Path(central_pub), key="--central-pub")
    store = RegistryStore(path, pem or b"")
    if store.current() is None:
        raise RegistryError(f"{path}: no valid signed device registry (see the log)")
    return store


def _results_signed(args: argparse.Namespace, results: list[dict]) -> bool:
    """True when every result carries the signature of the device the registry names."""
    from edge.registry import message_problem

    registry = _consumer_registry(args.registry, args.central_pub)
    entry = registry.lookup(args.device)
    problems = [p for p in (message_problem(entry, r) for r in results) if p]
    for problem in problems:
        print(f"edge command: result not from {args.device}: {problem}", file=sys.stderr)
    return not problems


def _publish_all(settings, messages: list[tuple[str, bytes]]) -> None:
    from edge.mqtt.client import make_client

    client = make_client(f"edge-command-{os.getpid()}", settings)
    client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def cmd_command(args: argparse.Namespace) -> int:
    from edge.mqtt.client import make_client
    from edge.mqtt.commands import bundle_commands, sign_command
    from edge.mqtt.topics import Topics, result_topic

    key = Path(args.central_key).read_bytes()
    counter = _counters(args)
    topics = Topics(args.regency, args.device, args.prefix)
    if args.name == "bundle":
        if not (args.bundle_file and args.bundle_id):
            print("edge command bundle: needs --bundle-file and --bundle-id", file=sys.stderr)
            return 2
        blob = Path(args.bundle_file).read_bytes()
        payloads = bundle_commands(key, args.device, args.bundle_id, blob, counter=counter)
    else:
        payloads = [
            sign_command(key, args.device, args.name, json.loads(args.args), counter=counter)
        ]
    counter.close()
    topic = topics.command(args.name)
    settings = _settings(args)
    results: list[dict] = []
    client = make_client(f"edge-command-{os.getpid()}", settings)
    client.on_message = lambda c, u, m: results.append(json.loads(m.payload))
    client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
    client.loop_start()
    try:
        client.subscribe(result_topic(topic), qos=1)
        time.sleep(0.2)
        for payload in payloads:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
        deadline = time.monotonic() + args.timeout
        while len(results) < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        client.disconnect()
        client.loop_stop()
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "sig"}, ensure_ascii=False))
    if args.registry and not _results_signed(args, results):
        return 1
    if len(results) < len(payloads):
        print(
            f"edge command: {len(payloads) - len(results)} result(s) not received", file=sys.stderr
        )
        return 1
    return 0 if all(r["ok"] for r in results) else 1
