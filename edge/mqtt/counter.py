"""Central's command counters: every command for a device gets a larger counter than the last.

The terminal refuses a command whose counter is not above the highest it applied
(:class:`edge.mqtt.processor.CommandProcessor`), so replay protection needs no clock on the
terminal, only this sequence at central.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path


class CommandCounter:
    """Central's durable command counters, one sequence per device (a small SQLite file).

    :meth:`next` never returns the same or a smaller number twice for a device, across
    restarts: ``max(last + 1, microseconds since the epoch)``, so counters stay above those
    of a signer that had no counter file (see :func:`sign_command`).
    """

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=10)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS counters (device_id TEXT PRIMARY KEY, last INTEGER)"
        )

    def next(self, device_id: str) -> int:
        """Allocate the next counter for ``device_id`` (durable before it is returned)."""
        self._db.execute("BEGIN IMMEDIATE")  # two `edge command` runs at once stay ordered
        try:
            row = self._db.execute(
                "SELECT last FROM counters WHERE device_id = ?", (device_id,)
            ).fetchone()
            value = max((row[0] if row else 0) + 1, _micros())
            self._db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (device_id, value))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return value

    def close(self) -> None:
        """Close the counter file."""
        self._db.close()


_last_counter = 0
_counter_lock = threading.Lock()


def _micros() -> int:
    return time.time_ns() // 1000


def fallback_counter() -> int:
    """The next counter without a counter file (one signer, in one process)."""
    # Without a counter file: central's own microsecond clock, strictly increasing within
    # this process. Good for one signer whose clock never steps back; use CommandCounter.
    global _last_counter
    with _counter_lock:
        _last_counter = max(_last_counter + 1, _micros())
        return _last_counter
