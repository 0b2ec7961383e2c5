"""Edits of the boot partition (``/boot/firmware`` on the Pi): UART for the printer, cloud-init.

Pure text in, text out, so each edit is tested on fake partitions laid out like Raspberry Pi
OS Bookworm (no cloud-init) and Trixie (cloud-init, user-data written by Raspberry Pi Imager).
Every edit is idempotent: a second run finds its lines and changes nothing.
"""

from __future__ import annotations

import re
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

MODELS = ("pi4", "pi5")
MARK = "# bansos edge"

# The receipt printer's UART on GPIO14/15, per model. On a Pi 5 serial0 is the 3-pin debug
# header (ttyAMA10) and GPIO14/15 is ttyAMA0 once uart0 is on. On a Pi 4 the PL011 drives
# Bluetooth, so serial0 is the mini UART (ttyS0), usable once enable_uart=1 fixes the core clock.
UART_LINES = {"pi4": ("enable_uart=1",), "pi5": ("dtparam=uart0=on",)}
PRINTER_PORT = {"pi4": "/dev/serial0", "pi5": "/dev/ttyAMA0"}
# Kernel consoles that would print boot messages and a login prompt on the receipt roll.
CONSOLES = {
    "pi4": ("serial0", "ttyS0", "ttyAMA0"),
    "pi5": ("ttyAMA0",),  # console=serial0 on a Pi 5 is the debug header: left alone
}


def edit_config_txt(text: str, model: str) -> str:
    """``config.txt`` with the printer UART switched on for ``model`` in an ``[all]`` block."""
    wanted = UART_LINES[model]
    lines = text.splitlines()
    # Our block from an earlier run (perhaps for the other model) is replaced, not stacked.
    if f"{MARK}: receipt printer UART" in lines:
        start = lines.index(f"{MARK}: receipt printer UART")
        end = start + 1
        while end < len(lines) and lines[end] and not lines[end].startswith(("[", "#")):
            end += 1
        del lines[start - 1 if start and lines[start - 1] == "[all]" else start : end]
        while lines and not lines[-1].strip():
            lines.pop()
    block = ["[all]", f"{MARK}: receipt printer UART", *wanted]
    return "\n".join([*lines, *block]) + "\n"


def edit_cmdline(text: str, model: str) -> str:
    """``cmdline.txt`` (one line) without a serial console on the printer's UART."""
    words = text.split()
    gone = CONSOLES[model]
    kept = [w for w in words if not re.fullmatch(rf"console=({'|'.join(gone)})(,\d+)?", w)]
    return " ".join(kept) + "\n"


def has_cloud_init(boot: Path, root: Path | None) -> bool:
    """Trixie images ship cloud-init (and Imager writes user-data); Bookworm images do not."""
    if (boot / "user-data").is_file() or (boot / "meta-data").is_file():
        return True
    return root is not None and (
        (root / "usr/bin/cloud-init").exists() or (root / "etc/cloud/cloud.cfg").is_file()
    )


OUR_PART = "bansos-edge.cfg"
# cloud-init merges the parts: lists appended, dicts merged, Imager's values kept on conflict.
MERGE_HOW = "list(append)+dict(no_replace,recurse_list)+str()"


def merge_user_data(existing: bytes | None, ours: str) -> bytes:
    """User-data that keeps what Raspberry Pi Imager wrote (users, SSH keys, Wi-Fi, locale)
    byte for byte and adds our cloud-config as a second MIME part, which cloud-init merges.

    A second run replaces only our part. No YAML parser needed: the Imager part is never parsed.
    """
    parts: list[tuple[str, bytes]] = []
    if existing and existing.lstrip().startswith(b"Content-Type: multipart"):
        msg = BytesParser(policy=compat32).parsebytes(existing)
        for part in msg.get_payload():
            name = part.get_filename() or part.get_param("filename", header="content-disposition")
            if name != OUR_PART:
                parts.append((str(name or "part.cfg"), part.get_payload(decode=True)))
    elif existing and existing.strip():
        parts.append(("imager.cfg", existing))
    out = MIMEMultipart(boundary="==bansos-edge-user-data==")
    for name, body in [*parts, (OUR_PART, ours.encode())]:
        sub = MIMEText(body.decode(), "cloud-config", "utf-8")
        del sub["Content-Transfer-Encoding"]
        sub.set_payload(body.decode())
        sub.add_header("Content-Disposition", "attachment", filename=name)
        if name == OUR_PART:
            sub.add_header("Merge-Type", MERGE_HOW)
        out.attach(sub)
    return out.as_bytes(policy=compat32.clone(linesep="\n"))


def user_data_parts(data: bytes) -> dict[str, bytes]:
    """``{filename: body}`` of a multipart user-data (tests and `provision` reports)."""
    msg = BytesParser(policy=compat32).parsebytes(data)
    return {
        str(p.get_param("filename", header="content-disposition")): p.get_payload(decode=True)
        for p in msg.get_payload()
    }


def our_cloud_config(hostname: str) -> str:
    """What cloud-init adds on an image that has it; first boot itself is edge-firstboot.service
    on both images, so nothing here needs the internet (no packages, no updates)."""
    return (
        "#cloud-config\n"
        "# bansos edge terminal: the rest of first boot is edge-firstboot.service (offline).\n"
        f"hostname: {hostname}\n"
        "ntp:\n"
        "  enabled: true\n"
    )


def udev_rule(vendor: int, product: int, name: str = "bansos-printer") -> str:
    """A stable ``/dev/<name>`` for the USB receipt printer with this idVendor:idProduct.

    usblp makes ``/dev/usb/lpN`` in the order printers appear; the link follows the model.
    """
    return (
        "# bansos edge: the USB receipt printer, whichever /dev/usb/lpN it becomes\n"
        f'SUBSYSTEM=="usbmisc", KERNEL=="lp[0-9]*", ATTRS{{idVendor}}=="{vendor:04x}", '
        f'ATTRS{{idProduct}}=="{product:04x}", SYMLINK+="{name}", GROUP="lp", MODE="0660"\n'
    )


def parse_usb_id(text: str) -> tuple[int, int]:
    """``0416:5011`` -> (0x0416, 0x5011), as lsusb prints it."""
    m = re.fullmatch(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{4})", text.strip())
    if not m:
        raise ValueError(f"bad USB id {text!r}: use VVVV:PPPP as lsusb shows it")
    return int(m.group(1), 16), int(m.group(2), 16)
