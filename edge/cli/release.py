"""`edge release`: build, verify, install and roll out signed releases (edge/ota)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edge.config import load_config
from edge.errors import ReleaseError

log = logging.getLogger(__name__)

UNIT_DIR = Path("/etc/systemd/system")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `edge release ...`."""
    p = sub.add_parser("release", help="build, verify, install and roll out signed releases")
    rs = p.add_subparsers(dest="release_command", metavar="ACTION", required=True)

    q = rs.add_parser("keygen", help="make the release signing key (NOT central's bundle key)")
    q.add_argument("--out", required=True, help="private key PEM to write (public: <out>.pub)")
    q.set_defaults(func=cmd_keygen)

    q = rs.add_parser("build", help="build and sign the release of a checkout")
    q.add_argument("--key", required=True, help="release private key (PEM)")
    q.add_argument("--out", default="dist", help="folder for the artefact (default dist/)")
    q.add_argument("--version", help="must equal the checkout's version (a check)")
    q.add_argument("--checkout", default=".", help="source checkout (default: .)")
    q.add_argument("--models", help="built models folder (default <checkout>/models/out)")
    wh = q.add_mutually_exclusive_group()
    wh.add_argument(
        "--target",
        help="the hash-pinned wheelhouse of requirements/<target>.txt, as provisioning "
        "builds it: bookworm-aarch64, trixie-aarch64, x86_64 (PyPI once)",
    )
    wh.add_argument("--deps", action="store_true", help="also put the runtime deps' wheels in")
    q.add_argument("--platform", help="pip platform tag of the target, with --deps")
    q.set_defaults(func=cmd_build)

    q = rs.add_parser("verify", help="check an artefact's signature and every file")
    q.add_argument("artefact")
    q.add_argument("--pub", help="release public key (default: ota.release_public_key)")
    q.set_defaults(func=cmd_verify)

    for name, helptext in (
        ("install", "install an artefact side by side and switch to it (technician, root)"),
        ("apply", "install the release the daemon asked for (edge-update.service, root)"),
        ("recover", "finish or undo an interrupted update (at boot; edge-rollback.service)"),
        ("status", "print the installer's journal"),
    ):
        q = rs.add_parser(name, help=helptext)
        if name == "install":
            q.add_argument("artefact")
        if name == "recover":
            q.add_argument("--boot", action="store_true", help="at boot: do not start edge.service")
        if name in ("install", "apply"):
            q.add_argument("--no-selftest", action="store_true", help="confirm on READY alone")
        q.set_defaults(func=cmd_installer, action=name)

    q = rs.add_parser("rollout", help="central: send a release to a stage of the fleet")
    from edge.cli.mqtt import _broker_args

    _broker_args(q)
    q.add_argument("artefact", help="the signed artefact (checked with --pub first)")
    q.add_argument("--pub", required=True, help="release public key, to check the artefact")
    q.add_argument("--central-key", required=True, help="central Ed25519 private key (PEM)")
    q.add_argument("--db", required=True, help="consumer database: the fleet and its regencies")
    q.add_argument("--url", help="https URL of the artefact (else chunks over MQTT)")
    q.add_argument("--devices", help="comma-separated device ids")
    q.add_argument("--regency", help="only this regency")
    q.add_argument("--percent", type=float, help="only this share of the fleet (stable hash)")
    q.add_argument("--dry-run", action="store_true", help="list the targets, send nothing")
    q.set_defaults(func=cmd_rollout)


def cmd_keygen(args: argparse.Namespace) -> int:
    from edge.ota.release import generate_release_key

    generate_release_key(args.out)
    print(f"release key: {args.out} (keep offline), public: {args.out}.pub")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from edge.ota.release import build_release, build_wheelhouse
    from edge.ota.wheelhouse import lock_wheelhouse

    if args.target and args.platform:
        raise ReleaseError("--platform is for --deps; a --target names its platform itself")
    path = build_release(
        args.checkout,
        args.key,
        args.out,
        version=args.version,
        models_dir=args.models,
        platform=args.platform,
        deps=args.deps,
        # The lock's wheelhouse, the same one a technician installs from; else this
        # project's wheel alone (--deps: with its dependencies, unpinned).
        wheelhouse=lock_wheelhouse(args.target) if args.target else build_wheelhouse,
    )
    print(path)
    return 0


def _release_pem(args: argparse.Namespace, cfg) -> bytes:
    from edge.ota.agent import load_release_key

    if getattr(args, "pub", None):
        return Path(args.pub).read_bytes()
    pem = load_release_key(cfg)
    if pem is None:
        raise ReleaseError("no release key: give --pub or set ota.release_public_key")
    return pem


def cmd_verify(args: argparse.Namespace) -> int:
    from edge.ota.release import verify_release

    pem = _release_pem(args, load_config(args.config))
    release = verify_release(Path(args.artefact), pem)
    files = release.manifest["files"]
    print(f"release {release.version}: signature and {len(files)} files OK")
    return 0


def make_installer(cfg, args: argparse.Namespace, *, boot: bool = False):
    """The installer the root units run, built from the config."""
    from edge.ota.deploy import SystemdService, command_selftest, file_handshake, venv_deploy
    from edge.ota.install import Installer

    def no_selftest(_release_dir: Path) -> tuple[bool, str]:
        return True, "skipped"

    selftest = (
        no_selftest
        if getattr(args, "no_selftest", False)
        else command_selftest(Path(args.config) if args.config else None, cfg.ota.confirm_timeout_s)
    )
    return Installer(
        cfg.ota.root,
        cfg.state_path,
        _release_pem(args, cfg),
        service=SystemdService(block=not boot),
        selftest=selftest,
        deploy=venv_deploy(),
        confirm_timeout_s=cfg.ota.confirm_timeout_s,
        unit_dir=UNIT_DIR,
        # Only the daemon's own request waits for it to pause; a technician stops it at once.
        wait_idle=file_handshake(cfg.state_path / "ota") if args.action == "apply" else None,
    )


def cmd_installer(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    installer = make_installer(cfg, args, boot=args.action == "recover" and args.boot)
    if args.action == "status":
        print(json.dumps(installer.journal(), indent=1))
        return 0
    with installer.locked():
        return _run_installer(cfg, installer, args)


def _run_installer(cfg, installer, args: argparse.Namespace) -> int:
    from edge.ota.agent import REQUEST

    if args.action == "recover":
        entry = installer.recover(start_service=not args.boot)
    elif args.action == "install":
        entry = installer.apply(Path(args.artefact))
    else:
        request_path = cfg.state_path / "ota" / REQUEST
        try:
            request = json.loads(request_path.read_text())
        except (OSError, ValueError):
            print("edge release apply: no install was requested", file=sys.stderr)
            return 0
        # Taken first: the path unit must not start this again for the same request.
        request_path.unlink()
        artefact = cfg.state_path / "ota" / Path(request["artefact"]).name
        entry = installer.apply(artefact, version=request["version"], request=request.get("id", ""))
    print(f"{entry['state']} {entry.get('version')} {entry.get('error') or ''}".rstrip())
    if args.action == "recover":
        return 0  # whatever the last update did, what runs now is whole
    return 0 if entry["state"] == "confirmed" else 1


def cmd_rollout(args: argparse.Namespace) -> int:
    from edge.cli.mqtt import _publish_all, _settings
    from edge.mqtt.store import EventStore
    from edge.ota import rollout
    from edge.ota.release import verify_release

    release = verify_release(Path(args.artefact), Path(args.pub).read_bytes())
    store = EventStore(args.db)
    try:
        # Terminals that sent events, and those only heard from in health reports.
        fleet = {**store.devices(), **{t["device_id"]: t["regency"] for t in store.fleet()}}
    finally:
        store.close()
    targets = rollout.select(
        fleet,
        devices=args.devices.split(",") if args.devices else None,
        regency=args.regency,
        percent=args.percent,
    )
    for device_id, regency in sorted(targets.items()):
        print(f"{regency} {device_id}")
    print(f"release {release.version} to {len(targets)} of {len(fleet)} terminal(s)")
    if args.dry_run or not targets:
        return 0
    key = Path(args.central_key).read_bytes()
    messages = rollout.update_commands(key, release, targets, url=args.url, prefix=args.prefix)
    _publish_all(_settings(args), messages)
    return 0
