"""Sub-commands for bundles, device keys and invitation QR codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge.config import load_config
from edge.errors import BundleError, EdgeError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to the ``edge`` parser."""
    p = sub.add_parser("bundle", help="build, inspect or install an enrolment bundle")
    bsub = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    b = bsub.add_parser("build", help="build a signed bundle from a CSV and a photo folder")
    b.add_argument("--csv", required=True, type=Path, help="households CSV (see docs/ledger.md)")
    b.add_argument("--photos", required=True, type=Path, help="folder the CSV's photos are in")
    b.add_argument("--round", required=True, dest="round_id", help="round id, e.g. 2026-12")
    b.add_argument("--amount", required=True, type=int, help="entitlement in rupiah")
    b.add_argument("--device-pub", required=True, type=Path, help="device card (edge keys show)")
    b.add_argument("--central-key", required=True, type=Path, help="central Ed25519 private key")
    b.add_argument("--out", required=True, type=Path, help="bundle file to write")
    b.add_argument("--report", type=Path, help="also write the enrolment report as CSV")
    b.add_argument(
        "--ref-keys",
        type=Path,
        help="folder of the household reference keys per regency and round (default: "
        "ref_keys/ beside --central-key); every terminal of a regency needs the same key",
    )
    b.add_argument(
        "--manifest",
        type=Path,
        help="central's manifest: household ids with their references (default: OUT.manifest.json)",
    )
    b.add_argument("--point", help="distribution point name (default: config device.point_name)")
    b.add_argument("--regency", help="BPS regency code (default: config device.regency)")
    b.add_argument("--device-id", help="terminal id (default: from the device card)")
    b.add_argument("--valid-from", help="ISO date/time (default: now)")
    b.add_argument("--valid-days", type=float, default=31.0, help="validity in days (31)")
    b.add_argument(
        "--override-policy", type=Path, help="JSON limits on supervised overrides (docs/flow.md)"
    )
    b.add_argument(
        "--register",
        metavar="DB",
        help="also register its entitlements in the central store (edge central register)",
    )
    b.set_defaults(func=cmd_bundle_build)

    i = bsub.add_parser("inspect", help="show a bundle's metadata (no templates, no names)")
    i.add_argument("file", type=Path)
    i.add_argument("--central-pub", type=Path, help="also check the signature with this key")
    i.set_defaults(func=cmd_bundle_inspect)

    n = bsub.add_parser("install", help="verify a bundle and install it in the state dir")
    n.add_argument("file", type=Path)
    central_pub_option(n)
    n.set_defaults(func=cmd_bundle_install)

    k = sub.add_parser("keys", help="device identity: make or show the terminal's keys")
    k.add_argument("action", choices=("init", "show"))
    k.add_argument("--out", type=Path, help="write the device card (public keys, JSON) here")
    k.set_defaults(func=cmd_keys)

    c = sub.add_parser("central-keygen", help="make a central Ed25519 key pair (pilot only)")
    c.add_argument("out", type=Path, help="private key file; the public key goes to OUT.pub")
    c.set_defaults(func=cmd_central_keygen)

    q = sub.add_parser("claim-qr", help="render the QR code of an invitation letter")
    q.add_argument("--household", required=True)
    q.add_argument("--round", required=True, dest="round_id")
    q.add_argument("--png", required=True, type=Path)
    q.set_defaults(func=cmd_claim_qr)


# -- helpers ----------------------------------------------------------------------------------


class ProgressBar:
    """A one-line progress bar on a terminal; silent when stderr is not a TTY."""

    def __init__(self, label: str, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.label = label
        self.enabled = self.stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        width = 30
        filled = int(width * done / total)
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _parse_when(text: str | None) -> datetime:
    from edge.events import parse_iso_utc

    if not text:
        return datetime.now(UTC)
    try:
        return parse_iso_utc(text)
    except ValueError as exc:
        raise EdgeError(f"not an ISO date/time: {text!r}") from exc


def central_pub_option(parser: argparse.ArgumentParser) -> None:
    """``--central-pub``, the file :func:`central_public_pem` prefers to the config's key."""
    parser.add_argument("--central-pub", type=Path, help="central public key (default: config)")


def central_public_pem(cfg, override: Path | None = None) -> bytes:
    """Central's public key: the ``--central-pub`` file, else ``bundle.central_public_key``."""
    from edge.keys import load_central_public_pem

    if override is not None:
        pem = load_central_public_pem(override, key="--central-pub")
    else:
        pem = load_central_public_pem(cfg.bundle.central_public_key)
    if pem is None:
        raise BundleError(
            "no central public key: set bundle.central_public_key or pass --central-pub"
        )
    return pem


def embedder_ids(cfg) -> tuple[str, str]:
    """Model id and sha256 of the configured embedder (what bundle templates must match)."""
    from edge.modelstore import ModelStore
    from edge.vision.pipeline import embedder_name

    name = embedder_name(cfg)
    store = ModelStore.load(cfg.models.dir, required=[name])
    return store.model_id(name), store.sha256(name)


# -- commands ---------------------------------------------------------------------------------


def cmd_bundle_build(args) -> int:
    from edge.enrolment.bundle import BundleSpec, build_bundle
    from edge.enrolment.refkeys import manifest, ref_key_for, write_manifest
    from edge.enrolment.roster import engine_analyse, enrol, read_csv
    from edge.keys import load_central_private_key, load_device_public
    from edge.vision.pipeline import FaceEngine

    cfg = load_config(args.config)
    device = load_device_public(args.device_pub)
    if device.bundle_public is None:
        raise BundleError(f"{args.device_pub}: no bundle key; use the card from `edge keys show`")
    device_id = args.device_id or device.device_id
    if not device_id:
        raise BundleError("the device card has no device id; pass --device-id")
    central = load_central_private_key(args.central_key)
    rows, invalid = read_csv(args.csv)
    engine = FaceEngine.from_config(cfg)
    result = enrol(
        rows,
        args.photos,
        engine_analyse(engine),
        amount=args.amount,
        duplicate_threshold=cfg.vision.duplicate_threshold,
        default_regency=args.regency or cfg.device.regency,
        progress=ProgressBar("enrolling"),
    )
    result.report[:0] = invalid
    print(result.report_text())
    if args.report:
        result.write_report_csv(args.report)
    if not result.households:
        raise BundleError("no household could be enrolled; bundle not written")
    valid_from = _parse_when(args.valid_from)
    regency = args.regency or cfg.device.regency
    ref_keys = args.ref_keys or args.central_key.parent / "ref_keys"
    policy = _override_policy(args.override_policy)
    spec = BundleSpec(
        device_id=device_id,
        round_id=args.round_id,
        point_name=args.point or cfg.device.point_name,
        regency=regency,
        model_id=engine.model_id,
        model_sha256=engine.model_sha256,
        valid_from=valid_from,
        valid_until=valid_from + timedelta(days=args.valid_days),
        bundle_id=str(uuid.uuid4()),
        ref_key=ref_key_for(ref_keys, regency, args.round_id),
    )
    blob = build_bundle(
        spec,
        result.households,
        result.labels,
        result.matrix,
        central_key=central,
        device_bundle_public=device.bundle_public,
        override_policy=policy,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(blob)
    print(f"bundle written: {args.out} ({len(blob)} bytes) for device {device_id}")
    manifest_path = args.manifest or args.out.with_name(args.out.name + ".manifest.json")
    doc = manifest(spec, result.households)
    write_manifest(manifest_path, doc)
    print(f"manifest for central (full household ids, keep it there): {manifest_path}")
    if args.register:
        from edge.central.manifest import register_manifest
        from edge.central.store import CentralStore

        store = CentralStore(args.register)
        try:
            n = register_manifest(store, doc)
        finally:
            store.close()
        print(f"registered {n} entitlement(s) of round {args.round_id} at central")
    return 0


def _override_policy(path: Path | None):
    """The override policy a bundle is to carry, from a JSON file (None: no overrides)."""
    if path is None:
        return None
    from edge.enrolment.badges import parse_policy

    try:
        return parse_policy(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: {exc}") from exc


def cmd_bundle_inspect(args) -> int:
    from edge.enrolment.bundle import open_envelope, read_metadata
    from edge.keys import load_central_public_key, verify_ed25519

    blob = args.file.read_bytes()
    meta = read_metadata(blob)
    households = meta.pop("households", [])
    meta["households"] = len(households)
    meta["members"] = sum(len(h.get("members", [])) for h in households)
    if args.central_pub:
        body, sig = open_envelope(blob)
        key = load_central_public_key(args.central_pub.read_bytes())
        meta["signature"] = "valid" if sig and verify_ed25519(key, sig, body) else "INVALID"
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0 if meta.get("signature", "valid") == "valid" else 1


def cmd_bundle_install(args) -> int:
    from edge.enrolment.store import BundleStore
    from edge.keys import DeviceIdentity

    cfg = load_config(args.config)
    central = central_public_pem(cfg, args.central_pub)
    identity = DeviceIdentity.load_or_create(cfg.state_path / "keys")
    model_id, sha = embedder_ids(cfg)
    store = BundleStore(cfg.state_path, central, identity, model_id, sha, device_id=cfg.device.id)
    bundle = store.install(args.file.read_bytes())
    print(json.dumps(bundle.summary(), indent=2))
    return 0


def cmd_keys(args) -> int:
    from edge.keys import (
        BUNDLE_KEY_FILE,
        CARD_FILE,
        SIGN_KEY_FILE,
        DeviceIdentity,
        make_tls_key_and_csr,
        write_card,
    )

    cfg = load_config(args.config)
    keys_dir = cfg.state_path / "keys"
    if args.action == "show" and not (
        (keys_dir / SIGN_KEY_FILE).exists() and (keys_dir / BUNDLE_KEY_FILE).exists()
    ):
        raise EdgeError(f"no device keys in {keys_dir}: run `edge keys init`")
    identity = DeviceIdentity.load_or_create(keys_dir)
    if args.action == "init":
        make_tls_key_and_csr(keys_dir, cfg.device.id)
        write_card(identity, cfg.device.id, keys_dir / CARD_FILE)
        print(f"device keys ready in {keys_dir}; TLS CSR for the CA: {keys_dir / 'tls.csr'}")
    card = identity.card(cfg.device.id)
    if args.out:
        write_card(identity, cfg.device.id, args.out)
        print(f"device card written: {args.out}")
    print(f"device id:          {card['device_id']}")
    print(f"signing key (sha):  {card['sign_fingerprint']}")
    print(f"bundle key (sha):   {card['bundle_fingerprint']}")
    print(f"bundle key (X25519, base64): {card['bundle_public']}")
    print(card["sign_public_pem"], end="")
    return 0


def cmd_central_keygen(args) -> int:
    from edge.keys import generate_central_key

    generate_central_key(args.out)
    print(f"central key: {args.out} (keep it secret); public key: {args.out}.pub")
    return 0


def cmd_claim_qr(args) -> int:
    from edge.payout.claim import encode_claim, render_claim_png

    render_claim_png(args.household, args.round_id, args.png)
    print(f"{args.png}: {encode_claim(args.household, args.round_id)}")
    return 0
