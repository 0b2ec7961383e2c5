"""Hardware sub-commands: receipt, camera-test, printer-test, signals-test."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from edge.config import load_config
from edge.errors import DeviceError

if TYPE_CHECKING:
    from edge.devices.camera import Frame
    from edge.devices.receipt import Receipt


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to the ``edge`` parser."""
    p = sub.add_parser(
        "receipt",
        help="render a sample receipt (example data) as PNG and/or text",
        description="Render a sample receipt made from fictitious, masked example data.",
    )
    p.add_argument("--png", metavar="FILE", help="write a 384-px wide PNG")
    p.add_argument("--text", action="store_true", help="print the 32-column text")
    p.add_argument(
        "--refusal",
        metavar="OUTCOME",
        help="render a refusal slip for OUTCOME (e.g. already_paid) instead",
    )
    p.add_argument("--reprint", action="store_true", help="mark it as a reprint (CETAK ULANG)")
    p.set_defaults(func=cmd_receipt)

    p = sub.add_parser("camera-test", help="open the configured camera and measure it")
    p.add_argument("--frames", type=int, default=30, help="frames to read (default 30)")
    p.set_defaults(func=cmd_camera_test)

    p = sub.add_parser("printer-test", help="query the configured printer and print a test slip")
    p.add_argument("--status-only", action="store_true", help="only ask online/paper")
    p.set_defaults(func=cmd_printer_test)

    p = sub.add_parser("signals-test", help="show every LED/buzzer pattern in turn")
    p.add_argument("--seconds", type=float, default=2.0, help="time per pattern (default 2)")
    p.set_defaults(func=cmd_signals_test)


def cmd_receipt(args: argparse.Namespace) -> int:
    from edge.devices.receipt import Refusal, example_receipt, render_text

    sample = example_receipt()
    item: Receipt | Refusal = sample
    if args.refusal:
        item = Refusal(
            sample.point_name, sample.device_id, sample.ts, args.refusal, sample.event_id
        )
    if not args.png and not args.text:
        args.text = True
    if args.text:
        print(render_text(item, reprint=args.reprint), end="")
    if args.png:
        from edge.devices.receipt_png import render_png  # Pillow only when an image is wanted

        path = render_png(item, args.png, reprint=args.reprint)
        print(f"wrote {path}")
    return 0


def cmd_camera_test(args: argparse.Namespace) -> int:
    from edge.devices.camera import open_camera
    from edge.devices.camera_stream import CameraStream

    cfg = load_config(args.config).camera
    camera = open_camera(cfg)
    faults: list[bool] = []
    stream = CameraStream(camera, cfg.queue_size, faults.append, stall_s=cfg.stall_s)
    wait = max(5.0, 2 * cfg.stall_s)
    got: list[Frame] = []
    with stream:
        while len(got) < args.frames:
            frame = stream.get(wait)
            if frame is None:
                break
            got.append(frame)
    print(f"camera: {camera.name}")
    if not got:
        raise DeviceError(
            f"camera: no frame within {wait:.0f} s ({stream.last_error or 'no error'})"
        )
    h, w = got[0].rgb.shape[:2]
    span = got[-1].ts - got[0].ts
    fps = (len(got) - 1) / span if len(got) > 1 and span > 0 else 0.0
    print(f"frames: {len(got)}  size: {w}x{h}  fps: {fps:.1f}")
    print(f"dropped: {stream.dropped}  faults: {stream.faults}  finished: {stream.finished}")
    return 0


def cmd_printer_test(args: argparse.Namespace) -> int:
    import platform

    from edge.devices.printer import make_printer

    cfg = load_config(args.config)
    printer = make_printer(cfg.printer, cfg.state_path)
    try:
        st = printer.status()
        print(f"printer: {printer.kind}  online: {st.online}  paper: {st.paper}")
        if args.status_only:
            return 0 if st.online else 1
        printer.print_diagnostic(
            [
                f"Terminal: {cfg.device.id}",
                f"Titik: {cfg.device.point_name}",
                f"Printer: {printer.kind} {cfg.printer.port if printer.kind == 'serial' else ''}",
                f"Kertas: {st.paper}",
                f"Host: {platform.node()}",
                "Uji cetak berhasil jika teks ini terbaca.",
            ]
        )
        print("test slip printed")
    finally:
        printer.close()
    return 0


def cmd_signals_test(args: argparse.Namespace) -> int:
    from edge.devices.signals import PATTERNS, make_signals

    cfg = load_config(args.config)
    signals = make_signals(cfg.signals)
    try:
        for name in PATTERNS:
            print(f"signal: {name}")
            signals.show(name)
            time.sleep(args.seconds)
        signals.show("off")
    finally:
        signals.close()
    return 0
