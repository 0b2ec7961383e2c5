#!/usr/bin/env python3
"""Provision one terminal: package, models, device keys, config, systemd unit.

Run it on the Pi (``--root /``, the default) or against a mounted SD card
(``--root /media/$USER/rootfs``). Idempotent: a second run with the same arguments changes
nothing and says "unchanged". See docs/operations.md, section "Provision a terminal".

Only the standard library is imported at the top: on a fresh Pi this script first builds the
virtualenv, then re-runs itself with the virtualenv's Python to use ``edge.config``/``edge.keys``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if (REPO / "edge" / "__init__.py").is_file() and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(HERE))
import artefact  # noqa: E402
import rootfs  # noqa: E402
import units  # noqa: E402
from args import build_parser  # noqa: E402
from target import (  # noqa: E402
    CA_FILE,
    CENTRAL_PUB,
    CERT_FILE,
    CHANGED_FLAG,
    CONFIG,
    DIST,
    GROUPS,
    KEYS,
    MODELS,
    REEXEC_FLAG,
    SRC,
    STATE,
    SYSUSERS,
    VENV,
    Report,
    Target,
    check_models,
    write_out,
)


def find_asset(name: str) -> Path:
    """A file shipped beside this script (on the Pi) or in the checkout's systemd/ folder."""
    for candidate in (HERE / name, *(REPO / d / name for d in ("systemd", "provisioning", "docs"))):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"provision: cannot find {name} next to {HERE}")


class Provisioner(Target):
    """The steps, in order; each adds its lines to the report."""

    def __init__(self, args: argparse.Namespace, dry_run: bool = False) -> None:
        super().__init__(args.root, dry_run)
        self.args = args
        self.installed = False  # pip already ran in this process (before edge was importable)
        self.release = None  # the verified release artefact (--release)
        self.release_dir: Path | None = None  # where it is installed (releases/<version>)

    def stage_package(self) -> Path | None:
        """Put the wheel (or source tree) under /opt/edge; return what pip should install."""
        if self.args.wheel:
            wheel = Path(self.args.wheel)
            self.copy(wheel, DIST / wheel.name)
            return self.path(DIST / wheel.name)
        if self.args.source:
            self.copy_tree(Path(self.args.source), SRC, skip=("models",))
            return self.path(SRC)
        if self.release_dir is not None:
            return artefact.release_wheel(self.release_dir)
        staged = sorted(self.path(DIST).glob("*.whl")) if self.path(DIST).is_dir() else []
        if staged:  # first boot: install what was staged onto the SD card
            self.report.add("unchanged", f"/{DIST}/{staged[-1].name}", "staged earlier")
            return staged[-1]
        return None

    def install_package(self, target: Path | None) -> None:
        if self.installed:
            return
        self.installed = True
        if self.args.no_install:
            self.report.add("skipped", "pip install", "--no-install")
            return
        if os.environ.get(REEXEC_FLAG):  # pip ran in the system Python before the switch
            done = "ran" if os.environ.get(CHANGED_FLAG) else "unchanged"
            self.report.add(done, "pip install", "before switching to the venv")
            return
        if not self.real:
            # pip would build for this machine, not the Pi: the wheel waits in /opt/edge/dist
            # and first boot (provisioning/firstboot.py) installs it from the wheelhouse.
            self.report.add("skipped", "pip install", "--root: installed at first boot")
            return
        if target is None:
            raise SystemExit("provision: nothing to install: give --wheel or --source")
        venv_python = self.path(VENV / "bin" / "python")
        if not venv_python.exists():
            # System site packages: picamera2 and lgpio come from Raspberry Pi OS's apt.
            # Made where the link of a release points (releases/<v>/venv), as the OTA
            # installer makes each release's venv: a venv names its own path.
            venv = os.path.realpath(self.path(VENV))
            self.execute([sys.executable, "-m", "venv", "--system-site-packages", venv])
            self.report.add("created", f"/{VENV}")
        pip = [str(venv_python), "-m", "pip", "install", "--quiet"]
        for wheels in (self.path(DIST), self.release_dir and self.release_dir / "wheels"):
            if wheels and wheels.is_dir():
                pip += ["--find-links", str(wheels)]  # an offline wheelhouse, when present
        # No "[pi]" extra: picamera2 and lgpio come from apt (python3-picamera2, python3-lgpio).
        before = self.pip_freeze(venv_python)
        wheels = self.release_dir / "wheels" if self.release_dir else None
        if wheels and (wheels / "requirements.txt").is_file():
            from wheelhouse import install_commands  # the release's lock: no index, hash-checked

            for cmd in install_commands(venv_python, wheels):
                self.execute(cmd)
        else:
            self.execute([*pip, str(target)])
        if self.pip_freeze(venv_python) != before:
            self.report.add("ran", "pip install", target.name)
            # Survives the re-exec into the venv, so the service is restarted for it.
            os.environ[CHANGED_FLAG] = "1"
        else:
            self.report.add("unchanged", "pip install", target.name)

    def install_models(self) -> None:
        if self.args.models:
            self.copy_tree(Path(self.args.models), MODELS)
        if (self.path(MODELS) / "manifest.json").is_file():
            check_models(self.path(MODELS))
            self.report.add("unchanged", f"/{MODELS}/manifest.json", "sha256 verified")
        else:
            self.report.add("skipped", f"/{MODELS}", "no --models given and none installed")

    def make_identity(self):
        from edge.keys import TLS_CSR_FILE, DeviceIdentity, write_card

        keys = self.path(KEYS)
        before = {p.name: p.read_bytes() for p in keys.glob("*")} if keys.is_dir() else {}
        identity = DeviceIdentity.load_or_create(keys)
        self._tls_csr(keys)
        card = (json.dumps(identity.card(self.args.device_id), indent=2) + "\n").encode()
        if before.get("device.pub.json") != card:
            write_card(identity, self.args.device_id, keys / "device.pub.json")
        os.chmod(keys, 0o700)
        os.chmod(self.path(STATE), 0o700)  # as StateDirectoryMode= in the unit
        for p in sorted(keys.iterdir()):
            status = (
                "unchanged"
                if before.get(p.name) == p.read_bytes()
                else ("created" if p.name not in before else "updated")
            )
            private = p.name.endswith(".pem")
            if private and p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)
            self.report.add(status, f"/{KEYS / p.name}", "private, 0600" if private else "public")
        self.export_public(keys / TLS_CSR_FILE, keys / "device.pub.json")
        return identity

    def _tls_csr(self, keys: Path) -> None:
        """Make the TLS key and CSR once; a CSR for the same key and device id is kept as is."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.x509.oid import NameOID

        from edge.keys import TLS_CSR_FILE, TLS_KEY_FILE, make_tls_key_and_csr

        key_path, csr_path = keys / TLS_KEY_FILE, keys / TLS_CSR_FILE
        if key_path.is_file() and csr_path.is_file():
            try:
                csr = x509.load_pem_x509_csr(csr_path.read_bytes())
                key = serialization.load_pem_private_key(key_path.read_bytes(), None)
                same_key = csr.public_key() == key.public_key()
                cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                if same_key and cn and cn[0].value == self.args.device_id:
                    return
            except ValueError:
                pass  # unreadable CSR: make a new one for the same key
        make_tls_key_and_csr(keys, self.args.device_id)

    def export_public(self, csr: Path, card: Path) -> None:
        """Copy the CSR and device card (public only) to where the technician collects them."""
        out = Path(self.args.out or Path.cwd() / "provisioned" / self.args.device_id)
        out.mkdir(parents=True, exist_ok=True)
        for src in (csr, card):
            target = out / f"{self.args.device_id}.{src.name}"
            self.report.add(write_out(target, src.read_bytes()), str(target), "hand to central")

    def prepare_config(self) -> bytes:
        """The config file to write, validated before anything on the target is touched."""
        import tomllib

        from edge.cli.config_text import dump_toml
        from edge.config import load_config, parse_config

        path = self.path(CONFIG)
        data: dict = {}
        if path.is_file():
            # Keep what a technician tuned by hand; only the provisioned keys are overwritten.
            load_config(path)  # refuses a broken file instead of silently replacing it
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        for section, values in self.config_values().items():
            data.setdefault(section, {}).update(values)
        parse_config(data, "/" + str(CONFIG))
        text = (
            "# Written by provisioning/provision.py; edit freely, then run\n"
            "#   edge check-config /etc/edge/config.toml\n"
            "# Provisioned keys are overwritten by the next provision run; others are kept.\n"
            + dump_toml(data)
        )
        return text.encode()

    def config_values(self) -> dict[str, dict]:
        a = self.args
        host, port = a.broker
        mqtt = {
            "enabled": True,
            "host": host,
            "port": port,
            "tls": not a.no_tls,
            "key_file": f"/{KEYS}/tls_key.pem",
            "cert_file": f"/{CERT_FILE}",
        }
        if a.ca:
            mqtt["ca_file"] = f"/{CA_FILE}"
        values: dict[str, dict] = {
            "device": {"id": a.device_id, "regency": a.regency, "state_dir": f"/{STATE}"},
            "models": {"dir": f"/{MODELS}"},
            "camera": {"kind": a.camera},
            "signals": {"kind": "gpiozero", **a.pins},
            "printer": self.printer_values(),
            "mqtt": mqtt,
        }
        if a.point_name:
            values["device"]["point_name"] = a.point_name
        if a.central_pub:
            values["bundle"] = {"central_public_key": f"/{CENTRAL_PUB}"}
        values.update(artefact.config_values(a))
        return values

    def printer_values(self) -> dict:
        a = self.args
        if a.printer_usb:
            # udev links the printer to this name (provisioning/boot.py udev_rule)
            return {"kind": "usb", "path": "/dev/bansos-printer"}
        if a.printer_port:
            return {"kind": "serial", "port": rootfs.default_printer_port(a)}
        return {"kind": "none"}

    def check_inputs(self) -> None:
        """Refuse bad files from the technician before writing anything."""
        from edge.keys import load_central_public_key

        if self.args.central_pub:
            load_central_public_key(Path(self.args.central_pub).read_bytes())
        if self.args.registry:
            from edge.registry import open_registry

            if not self.args.central_pub:
                raise SystemExit("provision: --registry needs --central-pub to verify it")
            central = Path(self.args.central_pub).read_bytes()
            open_registry(Path(self.args.registry).read_bytes(), central)
        if self.args.models:
            check_models(Path(self.args.models))
        self.release = self.release or artefact.check(self.args)

    def install_release(self) -> None:
        """Unpack --release (verified once) as releases/<version> with edge/ota's links; else
        use the release installed earlier (first boot, a re-run) for the units and wheel."""
        self.release = self.release or artefact.check(self.args)
        if self.release_dir is None:
            self.release_dir = artefact.install_or_find(self, self.args, self.release)

    def install_trust(self) -> None:
        if self.args.central_pub:
            self.copy(Path(self.args.central_pub), CENTRAL_PUB)
        if self.args.ca:
            self.copy(Path(self.args.ca), CA_FILE)
        if self.args.registry:
            # Claims sync works from the first boot; newer versions then arrive retained.
            self.copy(Path(self.args.registry), STATE / "registry.json", 0o644)
        artefact.install_trust(self, self.args)

    def system_user(self) -> None:
        if not self.real:
            self.report.add(
                "skipped", "user edge", "--root: created at first boot from /etc/sysusers.d"
            )
            return
        if self.args.no_system:
            self.report.add("skipped", "user edge", "--no-system")
            return
        if self.user_exists():
            self.report.add("unchanged", "user edge")
        else:
            self.execute(["systemd-sysusers", f"/{SYSUSERS}"])
            self.report.add("created", "user edge", ", ".join(GROUPS))
        self.execute(["chown", "-R", "edge:edge", f"/{STATE}"])
        self.execute(["chgrp", "edge", f"/{CONFIG}"])

    @staticmethod
    def user_exists() -> bool:
        import pwd

        try:
            pwd.getpwnam("edge")
        except KeyError:
            return False
        return True

    def start_service(self) -> None:
        if not self.real or self.args.no_system:
            self.report.add("skipped", "systemctl restart edge", "not a running system")
            return
        self.execute(["systemctl", "daemon-reload"])
        if self.args.release_pub:  # enabled above by its link; watching from now, not next boot
            self.execute(["systemctl", "start", "edge-update.path"], check=False)
        active = self.execute(
            ["systemctl", "is-active", "--quiet", "edge.service"], check=False
        ).returncode
        changed = self.report.changed or os.environ.get(CHANGED_FLAG) == "1"
        if changed or self.args.restart or active != 0:
            # A unit that hit its start limit before the user or venv existed (first boot of a
            # card provisioned with --root) stays failed until reset.
            self.execute(["systemctl", "reset-failed", "edge.service"], check=False)
            self.execute(["systemctl", "restart", "edge.service"])
            self.report.add("ran", "systemctl restart edge")
        else:
            self.report.add("unchanged", "edge.service", "running, nothing changed")

    def run(self) -> Report:
        config = self.prepare_config()
        self.check_inputs()
        self.install_release()
        target = self.stage_package()
        self.install_package(target)
        self.install_models()
        self.make_identity()
        self.install_trust()
        self.write(CONFIG, config, 0o640)
        ota = bool(self.args.release_pub)
        units.install_units(self, find_asset, self.release_dir, ota)
        units.stage_tools(self, find_asset, Path(__file__).resolve())
        rootfs.install_udev(self, self.args)
        if not self.real:  # a card: first boot finishes on the Pi, offline
            rootfs.install_firstboot(self, self.args, find_asset)
            rootfs.stage_wheelhouse(self, self.args)
        rootfs.edit_boot(self, self.args)
        self.system_user()
        self.start_service()
        return self.report


def ensure_edge_importable(args: argparse.Namespace, argv: list[str]) -> None:
    """After pip install on a fresh Pi, continue in the virtualenv that now has ``edge``."""
    try:
        import edge.config  # noqa: F401
    except ModuleNotFoundError as exc:
        venv_python = Path(args.root) / VENV / "bin" / "python"
        if os.environ.get(REEXEC_FLAG) or not venv_python.exists():
            raise SystemExit(
                "provision: the edge package is not importable; install it first"
            ) from exc
        os.environ[REEXEC_FLAG] = "1"
        os.execv(str(venv_python), [str(venv_python), __file__, *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    prov = Provisioner(args)
    print(f"provision: {args.device_id} into {prov.root}" + ("" if prov.real else " (offline)"))
    if not args.no_install and prov.real:
        if args.release:
            artefact.before_pip(prov.install_release)
        prov.install_package(prov.stage_package())
        ensure_edge_importable(args, argv)
    from edge.errors import EdgeError

    try:
        report = prov.run()
    except EdgeError as exc:
        print(f"provision: error: {exc}", file=sys.stderr)
        return 1
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
