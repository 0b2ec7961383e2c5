"""``edge registry``: central signs the device registry; terminals install it; the ACL follows.

Central side: ``build`` (from a CSV of device id, regency and device card), ``revoke``,
``acl`` (the Mosquitto acl_file), ``publish`` (retained, so every terminal gets it). Everyone:
``show`` (verify and list). Terminal side: ``install`` (provisioning, from a file).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
from pathlib import Path

from edge.errors import RegistryError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``edge registry`` and its actions to the ``edge`` parser."""
    from edge.cli.payout import central_pub_option

    p = sub.add_parser("registry", help="the device registry signed by central (keys, regencies)")
    rsub = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    b = rsub.add_parser("build", help="central: sign a registry from a CSV of devices")
    b.add_argument(
        "--devices",
        required=True,
        type=Path,
        help="CSV with columns device_id, regency, card (device card or public PEM; relative "
        "paths are read next to the CSV)",
    )
    b.add_argument("--key", required=True, type=Path, help="central Ed25519 private key")
    b.add_argument("--out", required=True, type=Path, help="registry file to write")
    b.add_argument(
        "--previous",
        type=Path,
        help="the registry in force: the new version is one above it and its revocations stay",
    )
    b.add_argument("--version", type=int, help="version number (default: previous + 1, or 1)")
    b.set_defaults(func=cmd_build)

    r = rsub.add_parser("revoke", help="central: revoke a device (a new, higher version)")
    r.add_argument("registry", type=Path, help="the registry in force")
    r.add_argument("--device", required=True, help="device id to revoke")
    r.add_argument("--key", required=True, type=Path, help="central Ed25519 private key")
    r.add_argument("--out", required=True, type=Path, help="new registry file to write")
    r.set_defaults(func=cmd_revoke)

    s = rsub.add_parser("show", help="verify a registry and list its devices")
    s.add_argument("registry", type=Path)
    central_pub_option(s)
    s.set_defaults(func=cmd_show)

    a = rsub.add_parser("acl", help="central: the Mosquitto acl_file for the registry")
    a.add_argument("registry", type=Path)
    central_pub_option(a)
    a.add_argument("--prefix", default="bansos/v1", help="topic prefix")
    a.add_argument("--central-user", default="central", help="central's MQTT user (its CN)")
    a.add_argument("--out", type=Path, help="write here (default: print)")
    a.set_defaults(func=cmd_acl)

    i = rsub.add_parser("install", help="terminal: verify a registry and install it")
    i.add_argument("registry", type=Path)
    central_pub_option(i)
    i.set_defaults(func=cmd_install)

    u = rsub.add_parser("publish", help="central: publish the registry, retained, to all")
    u.add_argument("registry", type=Path)
    central_pub_option(u)
    from edge.cli.mqtt import _broker_args

    _broker_args(u)
    u.set_defaults(func=cmd_publish)


def _central_pub(args) -> bytes:
    from edge.cli.payout import central_public_pem
    from edge.config import load_config

    return central_public_pem(load_config(args.config), args.central_pub)


def _read_devices(path: Path):
    """Device entries from the CSV (``device_id,regency,card``)."""
    from edge.keys import load_device_public
    from edge.registry import DeviceEntry

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RegistryError(f"{path}: cannot read the devices CSV: {exc}") from exc
    out = []
    for n, row in enumerate(rows, 2):
        try:
            device_id, regency, card = row["device_id"], row["regency"], row["card"]
        except KeyError as exc:
            raise RegistryError(f"{path}: needs columns device_id, regency, card") from exc
        card_path = Path(card) if Path(card).is_absolute() else path.parent / card
        pub = load_device_public(card_path)
        if pub.device_id not in (None, device_id):
            raise RegistryError(f"{path}:{n}: card {card} belongs to {pub.device_id}")
        out.append(DeviceEntry(device_id, regency, pub.sign_public_pem))
    return out


def _open(path: Path, central_pem: bytes):
    from edge.registry import open_registry

    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read: {exc.strerror}") from exc
    return open_registry(blob, central_pem)


def _central_key_pair(path: Path):
    from edge.keys import load_central_private_key, public_pem

    key = load_central_private_key(path)
    return key, public_pem(key.public_key())


def cmd_build(args) -> int:
    from edge.fsutil import write_atomic
    from edge.registry import sign_registry

    key, pub = _central_key_pair(args.key)
    devices = {d.device_id: d for d in _read_devices(args.devices)}
    version = args.version or 1
    if args.previous:
        previous = _open(args.previous, pub)
        version = args.version or previous.version + 1
        if version <= previous.version:
            raise RegistryError(f"version must be above the previous {previous.version}")
        for old in previous.devices.values():
            # A revoked device stays revoked: the CSV cannot bring a stolen terminal back.
            if old.revoked:
                devices[old.device_id] = old
    blob = sign_registry(key, devices.values(), version)
    write_atomic(args.out, blob, mode=0o644)
    print(f"registry version {version}: {len(devices)} device(s) -> {args.out}")
    return 0


def cmd_revoke(args) -> int:
    from edge.fsutil import write_atomic
    from edge.registry import revoke, sign_registry

    key, pub = _central_key_pair(args.key)
    current = _open(args.registry, pub)
    devices = revoke(current, args.device)
    blob = sign_registry(key, devices, current.version + 1)
    write_atomic(args.out, blob, mode=0o644)
    print(f"{args.device} revoked in registry version {current.version + 1} -> {args.out}")
    print("next: `edge registry acl` for the broker, `edge registry publish` for the terminals")
    return 0


def cmd_show(args) -> int:
    reg = _open(args.registry, _central_pub(args))
    print(f"registry version {reg.version}, issued {reg.issued_at}, signed by central")
    for d in sorted(reg.devices.values(), key=lambda d: (d.regency or "", d.device_id)):
        state = f"REVOKED {d.revoked_at}" if d.revoked else "active"
        print(f"  {d.regency} {d.device_id:<24} {state}")
    return 0


def cmd_acl(args) -> int:
    from edge.registry import mosquitto_acl

    reg = _open(args.registry, _central_pub(args))
    text = mosquitto_acl(reg, args.prefix, args.central_user)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        print(f"acl for registry version {reg.version} -> {args.out}; reload mosquitto (SIGHUP)")
    else:
        print(text, end="")
    return 0


def cmd_install(args) -> int:
    from edge.config import load_config
    from edge.registry import FILE_NAME, RegistryStore

    cfg = load_config(args.config)
    store = RegistryStore(cfg.state_path / FILE_NAME, _central_pub(args))
    try:
        blob = args.registry.read_bytes()
    except OSError as exc:
        raise RegistryError(f"{args.registry}: cannot read: {exc.strerror}") from exc
    reg, changed = store.install(blob)
    word = "installed" if changed else "already installed"
    print(f"registry version {reg.version} {word} in {store.path} ({len(reg.devices)} devices)")
    return 0


def cmd_publish(args) -> int:
    from edge.cli.mqtt import _settings
    from edge.mqtt.client import make_client
    from edge.registry import registry_topic

    # Verified first: a bad retained registry would displace the good one for every terminal.
    blob = _open(args.registry, _central_pub(args)).blob
    settings = _settings(args)
    client = make_client(f"edge-registry-{os.getpid()}", settings)
    client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
    client.loop_start()
    try:
        # Retained: a terminal that connects later, or after an outage, gets it at once.
        client.publish(registry_topic(args.prefix), blob, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    print(f"registry published on {registry_topic(args.prefix)} (retained)")
    return 0
