"""A small sd_notify(3) of our own: READY, STATUS, WATCHDOG and STOPPING without libsystemd.

Every helper does nothing (and returns False) when ``$NOTIFY_SOCKET`` is unset, so the daemon
runs the same under systemd, in a terminal and in tests.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send one datagram of ``KEY=value`` lines to systemd; True when it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        # Abstract namespace: systemd writes '@', the kernel wants a leading NUL byte.
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
        return False
    return True


def ready() -> bool:
    """Tell systemd that start-up finished (Type=notify units become active here)."""
    return notify("READY=1")


def status(text: str) -> bool:
    """One line for `systemctl status`; newlines would start a new assignment, so they go."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog() -> bool:
    """Keep-alive ping; call it only from a loop that is healthy."""
    return notify("WATCHDOG=1")


def stopping() -> bool:
    """Tell systemd that a clean shutdown has begun."""
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Seconds of WatchdogSec, or None when no watchdog is set for this process.

    Ping at half this interval, as sd_watchdog_enabled(3) advises.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None  # set for our parent (e.g. a wrapper shell), not for us
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


_IMPORTED_AT = time.monotonic()


def process_age_s(
    stat_text: str | None = None,
    boottime: float | None = None,
    ticks_per_s: int | None = None,
) -> float:
    """Seconds since this process started, as systemd counts a unit's start-up.

    Read from the kernel (``/proc/self/stat`` field 22, the start time in clock ticks after
    boot, against ``CLOCK_BOOTTIME``), so interpreter start-up and imports are included. Where
    /proc cannot be read, the time since this module was imported (a lower bound). The
    arguments replace the kernel's values in tests.
    """
    try:
        if stat_text is None:
            with open("/proc/self/stat") as fh:
                stat_text = fh.read()
        # The command name (field 2) is in parentheses and may hold spaces: split after it.
        started_ticks = int(stat_text.rsplit(")", 1)[1].split()[19])
        ticks = ticks_per_s or os.sysconf("SC_CLK_TCK")
        now = time.clock_gettime(time.CLOCK_BOOTTIME) if boottime is None else boottime
    except (OSError, ValueError, IndexError) as exc:
        log.debug("process start time unknown: %s", exc)
        return time.monotonic() - _IMPORTED_AT
    return max(0.0, now - started_ticks / ticks)
