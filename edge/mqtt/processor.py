"""The terminal's side of signed commands: verify, refuse replays, then run an action.

A command (:mod:`edge.mqtt.commands`) is refused, reported, and changes nothing when it is
malformed, unsigned, badly signed, addressed to another terminal, sent while the terminal's
clock is not trusted, too old or from the future, replayed, unknown, or asks for a config
change outside its bounds (:mod:`edge.mqtt.remote_config`). Replays are refused by a
counter, not by the clock: central gives every command for a device a larger ``counter``
than the last (:class:`edge.mqtt.counter.CommandCounter`), and the terminal keeps the highest
counter it applied durably and refuses any command whose counter is not above it, however its
clock moves. Large enrolment bundles arrive in chunks; each chunk is a separately signed
command (with its own counter, sent in order), and the blob is verified (sha256 here,
signature by the bundle store) only once it is whole.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.errors import CommandRefused, PayloadError
from edge.events import canonical, iso_utc, parse_iso_utc, unb64
from edge.keys import load_ed25519_public, verify_ed25519
from edge.mqtt.actions import Action
from edge.mqtt.commands import MAX_RESEND
from edge.mqtt.remote_config import check_keys
from edge.mqtt.schemas import parse, safe_text

log = logging.getLogger(__name__)

# Rules of edge.ops.clock.TimeKeeper that give a time nobody verified this boot: a command is
# judged by such a clock only when it agrees with the command's signed time.
UNVERIFIED_TIME = ("mono", "carried", "wall")

DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_MAX_SKEW_S = 300.0


def _check_chunk_data(args: dict) -> None:
    # Bundle and release chunks alike; a release chunk then goes to a file (too big to
    # reassemble in the command database, as bundles are).
    if args["chunk"] >= args["chunks"]:
        raise CommandRefused("chunk index out of range")
    try:
        unb64(args["data"])
    except ValueError as exc:
        raise CommandRefused("chunk data is not base64") from exc


class CommandProcessor:
    """Checks commands addressed to one terminal and runs the matching action.

    ``actions`` maps a command name (``bundle``, ``config``, ``reprint``, ``health``,
    ``resend``) to a callable taking the command's args and returning a small dict. The
    ``bundle`` action receives ``{"bundle_id", "sha256", "blob": bytes}`` once every chunk is
    in; ``config`` receives ``{"set": {...}, "command_id", "counter"}`` with allow-listed keys
    only. ``state_path`` is the SQLite file that keeps the highest counter applied and pending
    chunks (a directory gets ``commands.sqlite`` inside it). ``clock_guard`` (an
    ``edge.ops.clock.TimeKeeper``): see :meth:`_check_clock_trusted`.
    """

    def __init__(
        self,
        central_public_pem: bytes,
        device_id: str,
        state_path: Path,
        actions: dict[str, Action],
        *,
        clock: Callable[[], float] = time.time,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        clock_guard: Any = None,
    ) -> None:
        self._key = load_ed25519_public(central_public_pem)
        self._clock_guard = clock_guard
        self.device_id = device_id
        self._actions = dict(actions)
        self._clock = clock
        self._max_age_s = max_age_s
        self._max_skew_s = max_skew_s
        path = Path(state_path)
        if path.is_dir():
            path = path / "commands.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection guarded by a lock: handle() runs on the reporter's thread.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # The highest counter applied per device (this terminal's own id only, in practice).
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS counters (device_id TEXT PRIMARY KEY, highest INTEGER)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS chunks (sha256 TEXT, chunk INTEGER, chunks INTEGER,"
            " bundle_id TEXT, data BLOB, at REAL, PRIMARY KEY (sha256, chunk))"
        )

    def register(self, name: str, action: Action, replace: bool = False) -> None:
        """Add an action (the reporter adds its own ``resend`` and ``health``)."""
        if replace or name not in self._actions:
            self._actions[name] = action

    def close(self) -> None:
        """Close the state database."""
        with self._lock:
            self._db.close()

    def handle(self, topic: str, payload: bytes) -> dict:
        """Check and run one command; return the ``bansos.command_result/1`` dict to publish."""
        topic_name = topic.rsplit("/cmd/", 1)[-1] if "/cmd/" in topic else None
        seen: dict = {}
        try:
            with self._lock:
                cmd = self._check(topic_name, payload, seen)
                status, result = self._run(cmd)
        except CommandRefused as exc:
            log.warning("command refused: %s", safe_text(exc))
            return self._result(seen.get("cmd"), topic_name, "refused", str(exc))
        except Exception as exc:  # an action failed: report it, keep the daemon alive
            log.exception("command %s failed", safe_text(topic_name))
            error = f"{exc.__class__.__name__}: {exc}"
            return self._result(seen.get("cmd"), topic_name, "failed", error)
        log.info("command %s %s", cmd["name"], status)
        return self._result(cmd, topic_name, status, None, result)

    # -- checks ---------------------------------------------------------------------------

    def _check(self, topic_name: str | None, payload: bytes, seen: dict) -> dict:
        # The order is the contract: a command is refused for the first rule it breaks.
        cmd = self._check_signed(payload, seen)
        self._check_addressed(cmd, topic_name)
        now = self._check_clock_trusted(self._issued(cmd))
        self._check_fresh(cmd, now)
        self._check_args(cmd["name"], cmd["args"])
        return cmd

    @staticmethod
    def _issued(cmd: dict) -> float:
        try:
            return parse_iso_utc(cmd["issued_at"]).timestamp()
        except ValueError as exc:  # the schema's pattern lets 2026-13-45 through
            raise CommandRefused("malformed command: issued_at is no date") from exc

    def _check_clock_trusted(self, issued: float) -> float:
        """The time to judge the command by, or refused while the clock cannot be believed.

        Central's signature on ``issued_at`` is itself a time (a lower bound): a terminal whose
        clock is not verified (no NTP, no RTC) and runs behind anchors on it
        (``TimeKeeper.offer_central``), so a Pi back from a power cut days slow still takes its
        next bundle. A clock neither verified nor within ``max_skew_s`` of the signed time (for
        instance one days ahead) judges nothing: every command is refused until NTP answers.
        """
        if self._clock_guard is None:
            return self._clock()
        offer = getattr(self._clock_guard, "offer_central", None)
        if offer is not None:
            offer(issued)
        reading = self._clock_guard.check()
        if not reading.ok:
            raise CommandRefused(f"device clock is not trusted ({reading.reason}): try later")
        unverified = reading.source in UNVERIFIED_TIME
        if unverified and abs(reading.now - issued) > self._max_skew_s:
            raise CommandRefused(
                f"device clock is not trusted ({reading.reason}) and disagrees with the "
                "command's signed time: try later"
            )
        return reading.now

    def highest_counter(self) -> int:
        """The highest command counter this terminal has applied (0 before the first)."""
        row = self._db.execute(
            "SELECT highest FROM counters WHERE device_id = ?", (self.device_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _check_signed(self, payload: bytes, seen: dict) -> dict:
        """The parsed command when it is well formed and signed by central."""
        if b'"sig"' not in payload:
            raise CommandRefused("unsigned command")
        try:
            cmd = parse("command", payload)
        except PayloadError as exc:
            raise CommandRefused(f"malformed command: {exc}") from exc
        # Echoed in the result so central can match it, even when the command is refused.
        seen["cmd"] = cmd
        body = {k: v for k, v in cmd.items() if k != "sig"}
        try:
            sig = unb64(cmd["sig"])
        except ValueError as exc:
            raise CommandRefused("bad signature") from exc
        if not verify_ed25519(self._key, sig, canonical(body)):
            raise CommandRefused("bad signature")
        return cmd

    def _check_addressed(self, cmd: dict, topic_name: str | None) -> None:
        """Refuse a command for another terminal, on the wrong topic, or with no action here."""
        if cmd["device_id"] != self.device_id:
            raise CommandRefused("command is for another device")
        if topic_name is not None and cmd["name"] != topic_name:
            raise CommandRefused("command name does not match its topic")
        if cmd["name"] not in self._actions:
            raise CommandRefused(f"unknown command: {cmd['name']}")

    def _check_fresh(self, cmd: dict, now: float) -> None:
        """Refuse a replay (counter not above the highest applied), then a command from the
        future or past its age limit (the clock is trusted by now).

        A chunk of a bundle or release is exempt from the counter order: the broker may
        redeliver one out of order after a reconnect, and writing it again is harmless (the
        same bytes at the same place, and nothing is used before the whole blob matches its
        signed sha256; an old bundle or release is then refused for being older).
        """
        highest = self.highest_counter()
        if cmd["counter"] <= highest and "chunk" not in cmd["args"]:
            log.warning("command counter %s is not above %s", cmd["counter"], highest)
            raise CommandRefused("replayed command")
        issued = self._issued(cmd)
        if issued > now + self._max_skew_s:
            raise CommandRefused("command issued in the future")
        if issued < now - self._max_age_s:
            raise CommandRefused("command expired")

    def _check_args(self, name: str, args: dict) -> None:
        """Refuse arguments the schema allows but this terminal will not act on."""
        if name == "config":
            check_keys(args["set"])
        if name == "bundle":
            self._check_chunk(args)
        if name == "update" and "data" in args:
            _check_chunk_data(args)
        if name == "resend":
            span = args["to_seq"] - args["from_seq"]
            if not 0 <= span < MAX_RESEND:
                raise CommandRefused(f"resend range must hold 1..{MAX_RESEND} events")

    def _check_chunk(self, args: dict) -> None:
        _check_chunk_data(args)
        row = self._db.execute(
            "SELECT chunks, bundle_id FROM chunks WHERE sha256 = ? LIMIT 1", (args["sha256"],)
        ).fetchone()
        if row and (row[0] != args["chunks"] or row[1] != args["bundle_id"]):
            raise CommandRefused("chunk does not match the bundle's other chunks")

    # -- running --------------------------------------------------------------------------

    def _remember(self, cmd: dict, now: float) -> None:
        horizon = now - self._max_age_s - self._max_skew_s
        # Only unfinished bundles expire by the clock; replay protection does not.
        self._db.execute("DELETE FROM chunks WHERE at < ?", (horizon,))
        self._db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT (device_id) DO UPDATE"
            " SET highest = excluded.highest WHERE excluded.highest > counters.highest",
            (self.device_id, cmd["counter"]),
        )

    def _run(self, cmd: dict) -> tuple[str, dict]:
        now = self._clock()
        # Remembered before acting: a command cut short by a power loss is re-sent with a new id
        # rather than risk running twice.
        self._remember(cmd, now)
        name, args = cmd["name"], cmd["args"]
        if name == "config":  # the ledger's config event names the command that made it
            args = {**args, "command_id": cmd["id"], "counter": cmd["counter"]}
        if name != "bundle":
            return "applied", dict(self._actions[name](args) or {})
        data = unb64(args["data"])
        self._db.execute(
            "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?)",
            (args["sha256"], args["chunk"], args["chunks"], args["bundle_id"], data, now),
        )
        rows = self._db.execute(
            "SELECT data FROM chunks WHERE sha256 = ? ORDER BY chunk", (args["sha256"],)
        ).fetchall()
        if len(rows) < args["chunks"]:
            return "partial", {"received": len(rows), "chunks": args["chunks"]}
        blob = b"".join(r[0] for r in rows)
        self._db.execute("DELETE FROM chunks WHERE sha256 = ?", (args["sha256"],))
        if hashlib.sha256(blob).hexdigest() != args["sha256"]:
            raise CommandRefused("reassembled bundle does not match its sha256")
        out = self._actions["bundle"](
            {"bundle_id": args["bundle_id"], "sha256": args["sha256"], "blob": blob}
        )
        return "applied", dict(out or {})

    def _result(
        self,
        cmd: dict | None,
        topic_name: str | None,
        status: str,
        error: str | None,
        result: dict | None = None,
    ) -> dict:
        name = cmd["name"] if cmd else topic_name
        return {
            "schema": "bansos.command_result/1",
            "command_id": cmd["id"] if cmd else None,
            "device_id": self.device_id,
            "name": safe_text(name, 64) if name else None,
            "ok": status in ("applied", "partial"),
            "status": status,
            "error": safe_text(error, 200) if error else None,
            "result": result or {},
            "ts": iso_utc(self._clock()),
        }
