"""The command line of provision.py (a module of its own to keep provision.py about the steps)."""

from __future__ import annotations

import argparse

from boot import MODELS, parse_usb_id
from target import parse_broker, parse_pins

DESCRIPTION = "Provision one terminal: package, models, device keys, config, systemd unit."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument("--root", default="/", help="root of the target system (default /)")
    p.add_argument("--device-id", required=True, help="e.g. edge-3171-0001")
    p.add_argument("--regency", required=True, help="four-digit BPS regency code")
    p.add_argument(
        "--broker",
        required=True,
        type=parse_broker,
        help="MQTT broker host[:port] (port 8883 default)",
    )
    p.add_argument("--point-name", help="distribution point name printed on receipts")
    p.add_argument(
        "--printer-port",
        help="serial receipt printer: its port, or 'uart' for GPIO14/15 of --model",
    )
    p.add_argument(
        "--printer-usb", type=usb_id, help="USB receipt printer: idVendor:idProduct (lsusb)"
    )
    p.add_argument("--model", choices=MODELS, default="pi4", help="Raspberry Pi model")
    p.add_argument("--pins", type=parse_pins, default={}, help="red=17,green=27,blue=22,buzzer=18")
    p.add_argument("--camera", default="picamera2", choices=("picamera2", "opencv", "auto"))
    p.add_argument("--central-pub", help="central Ed25519 public key PEM (verifies bundles)")
    p.add_argument("--registry", help="device registry signed by central (edge registry build)")
    p.add_argument("--ca", help="CA certificate PEM of the broker")
    p.add_argument(
        "--release-pub",
        help="release Ed25519 public key (`edge release keygen`): verifies releases, turns on "
        "updates over the air ([ota] and the edge-update units)",
    )
    p.add_argument("--release-ca", help="the only CA trusted for HTTPS release downloads")
    p.add_argument("--no-tls", action="store_true", help="plain MQTT (lab only)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--wheel", help="bansos_edge wheel to install")
    src.add_argument("--source", help="source checkout to install")
    src.add_argument(
        "--release",
        help="signed release artefact (`edge release build`): verified with --release-pub, "
        "installed as /opt/edge/releases/<version> with its wheels and models",
    )
    p.add_argument("--models", help="models folder made by `make models` (manifest.json)")
    p.add_argument("--no-install", action="store_true", help="do not run pip (tests, dry layout)")
    p.add_argument("--no-system", action="store_true", help="no useradd/systemctl on a real root")
    p.add_argument("--restart", action="store_true", help="restart the service even if unchanged")
    p.add_argument(
        "--boot", help="mounted boot partition: UART edits, and user-data merged on Trixie"
    )
    p.add_argument(
        "--wheelhouse",
        help="wheelhouse folder (provisioning/wheelhouse.py build), or a target name to build "
        "one now: bookworm-aarch64, trixie-aarch64, x86_64",
    )
    p.add_argument("--wheelhouse-to", help="put the wheelhouse on this USB stick (label BANSOS)")
    p.add_argument("--out", help="where to put the CSR and device card (default ./provisioned/ID)")
    return p


def usb_id(text: str) -> tuple[int, int]:
    try:
        return parse_usb_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
