"""Device heads at central: what each terminal says it holds, and proof when it lies.

Health reports carry ``last_seq`` (the newest ledger event); health and status messages may
carry ``head``, a checkpoint the device signed over (seq, hash, ts). The consumer hands every
such message to :class:`HeadBook`, which keeps each device's latest head with the time it was
seen (table ``heads``) and every signed checkpoint (table ``checkpoints``). Two things a
tampered terminal cannot hide once a checkpoint has left it:

- ``head_rollback``: a signed head with a lower seq than one already held, and signed later
  than it (a retained or stale message is not evidence): the newest events were deleted.
- ``head_fork``: a signed head, or an event, whose hash at seq N differs from what central
  holds at N: the chain was cut and written again.

The heads also show what is missing at the end of a stream, which no sequence gap can:
:func:`lag_rows` gives, per device, the events missing, since when, and how long the device
has been silent; :mod:`edge.mqtt.recovery` asks for the missing events.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from edge.errors import PayloadError
from edge.events import check_head, parse_iso_utc
from edge.mqtt.schemas import validate
from edge.mqtt.topics import DEFAULT_PREFIX, split

log = logging.getLogger(__name__)

HEAD_TABLES = (
    """CREATE TABLE IF NOT EXISTS heads (
        device_id TEXT PRIMARY KEY,
        regency TEXT,
        last_seq BIGINT NOT NULL DEFAULT 0,
        last_seq_at DOUBLE PRECISION,
        signed_seq BIGINT,
        signed_hash TEXT,
        signed_ts TEXT,
        signed_sig TEXT,
        signed_at DOUBLE PRECISION,
        state TEXT,
        seen_at DOUBLE PRECISION NOT NULL,
        behind_since DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        device_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL,
        ts TEXT NOT NULL,
        sig TEXT NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (device_id, seq))""",
    """CREATE TABLE IF NOT EXISTS resends (
        command_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        from_seq BIGINT NOT NULL,
        to_seq BIGINT NOT NULL,
        attempt INTEGER NOT NULL,
        asked_at DOUBLE PRECISION NOT NULL,
        due_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        arrived INTEGER NOT NULL DEFAULT 0,
        done_at DOUBLE PRECISION,
        asked_by TEXT,
        answer TEXT,
        resent INTEGER)""",
    "CREATE INDEX IF NOT EXISTS resends_device ON resends (device_id, status)",
    """CREATE TABLE IF NOT EXISTS leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        until DOUBLE PRECISION NOT NULL)""",
)
MAX_REPORT_BYTES = 64 * 1024


class HeadBook:
    """Records heads from ``health`` and ``status`` messages into an EventStore.

    ``registry`` answers ``lookup(device_id) -> DeviceEntry | None`` (the consumer's registry);
    a head from a device it does not know, or one whose signature fails, is rejected and kept
    in the store's ``rejected`` table like a bad event.
    """

    def __init__(self, store: Any, registry: Any, prefix: str = DEFAULT_PREFIX, clock=time.time):
        self._store = store
        self._registry = registry
        self._prefix = prefix
        self._clock = clock
        self.recorded = 0
        self.rejected = 0

    def observe(self, topic: str, payload: bytes, retained: bool = False) -> str:
        """Record one report: ``recorded``, ``ignored: …`` or ``rejected: …``; never raises.

        ``retained`` (the broker's retain flag) marks an old status replayed on subscribe: its
        head is kept if it is new, but it is no evidence of a rollback and not a sign of life.
        """
        where = split(topic, self._prefix)
        if where is None or where[2] not in ("health", "status"):
            return "ignored: not a health or status topic"
        try:
            return self._observe(where[0], where[1], where[2], payload, retained)
        except Exception as exc:  # a report must never stall the consumer's network thread
            log.exception("head report on %s could not be recorded", topic)
            return self._reject(topic, f"{exc.__class__.__name__} while recording", payload)

    def _observe(self, regency: str, device_id: str, leaf: str, payload: bytes, retained: bool):
        topic = f"{self._prefix}/{regency}/{device_id}/{leaf}"
        report, problem = _parse(leaf, payload)
        if problem is None:
            if report["device_id"] != device_id or report.get("regency", regency) != regency:
                problem = "report does not belong to the topic it came on"
            elif (entry := self._registry.lookup(device_id)) is None:
                problem = "unknown device"
            elif entry.revoked:
                problem = f"device revoked at {entry.revoked_at}"
            elif entry.regency and entry.regency != regency:
                problem = f"device is registered in regency {entry.regency}, not {regency}"
            elif report.get("head") is not None:
                problem = check_head(report["head"], device_id, entry.public_pem)
        if problem is not None:
            return self._reject(topic, problem, payload)
        last_seq = report.get("last_seq") if leaf == "health" else None
        state = report.get("state") if leaf == "status" else None
        args = (device_id, regency, last_seq, report.get("head"), state, retained, self._clock())
        outcome = self._store.write(_record, *args, device=device_id)
        self.recorded += 1
        return outcome

    def _reject(self, topic: str, problem: str, payload: bytes) -> str:
        self.rejected += 1
        log.warning("rejected a report on %s: %s", topic, problem)
        try:
            self._store.reject(topic, problem, payload)
        except Exception as exc:  # the database is away: the next report comes soon enough
            log.warning("could not keep the rejected report: %s", exc)
        return f"rejected: {problem}"


def _parse(leaf: str, payload: bytes) -> tuple[dict, str | None]:
    """The report and None, or ``{}`` and why it is malformed."""
    if len(payload) > MAX_REPORT_BYTES:
        return {}, f"{leaf}: payload too large"
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}, f"{leaf}: not JSON"
    if not isinstance(obj, dict):
        return {}, f"{leaf}: not a JSON object"
    # ``head`` is checked by check_head, whatever the schema of the day says about it.
    try:
        validate(leaf, {k: v for k, v in obj.items() if k != "head"})
    except PayloadError as exc:
        return {}, str(exc)
    return obj, None


def _record(sql, device_id, regency, last_seq, head, state, retained, now) -> str:
    row = sql(
        "SELECT last_seq, signed_seq, signed_ts FROM heads WHERE device_id = ?", (device_id,)
    ).fetchone()
    if row is None:
        sql(
            "INSERT INTO heads (device_id, regency, last_seq, seen_at) VALUES (?, ?, 0, ?)",
            (device_id, regency, now),
        )
        row = (0, None, None)
    stored_seq, signed_seq, signed_ts = row
    outcome = "recorded"
    if head is not None:
        outcome = _checkpoint(sql, device_id, head, signed_seq, signed_ts, retained, now)
    reported = [s for s in (last_seq, head and head["seq"]) if s is not None]
    if reported and max(reported) > stored_seq:
        sql(
            "UPDATE heads SET last_seq = ?, last_seq_at = ? WHERE device_id = ?",
            (max(reported), now, device_id),
        )
    if retained:
        sql("UPDATE heads SET state = COALESCE(state, ?) WHERE device_id = ?", (state, device_id))
    else:
        sql(
            "UPDATE heads SET regency = ?, seen_at = ?, state = COALESCE(?, state) "
            "WHERE device_id = ?",
            (regency, now, state, device_id),
        )
    return outcome


def _checkpoint(sql, device_id, head, signed_seq, signed_ts, retained, now) -> str:
    seq, digest = head["seq"], head["hash"]
    outcome = "recorded"
    held = sql(
        "SELECT 'checkpoint', hash FROM checkpoints WHERE device_id = ? AND seq = ? "
        "UNION ALL SELECT event_id, hash FROM events WHERE device_id = ? AND seq = ?",
        (device_id, seq, device_id, seq),
    ).fetchall()
    for what, other in held:
        if other != digest:
            detail = f"signed head at seq {seq} differs from the {what} central holds there"
            _anomaly(sql, "head_fork", f"{device_id}@{seq}:{digest[:16]}", device_id, detail, now)
            outcome = "recorded: fork"
    if signed_seq is not None and seq < signed_seq:
        # A lower head is evidence only when it is not older than the higher one: a retained
        # status, or two reports handled out of order by a shared group, are merely stale.
        # Signed strictly later: two heads of the same instant prove no order.
        if not retained and _when(head["ts"]) > _when(signed_ts):
            detail = f"signed head went back from seq {signed_seq} to {seq}"
            ref = f"{device_id}@{seq}<{signed_seq}"
            _anomaly(sql, "head_rollback", ref, device_id, detail, now)
            log.warning("device %s: %s", device_id, detail)
            outcome = "recorded: rollback"
    sql(
        "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING",
        (device_id, seq, digest, head["ts"], head["sig"], now),
    )
    if signed_seq is None or seq > signed_seq:
        sql(
            "UPDATE heads SET signed_seq = ?, signed_hash = ?, signed_ts = ?, signed_sig = ?, "
            "signed_at = ? WHERE device_id = ?",
            (seq, digest, head["ts"], head["sig"], now, device_id),
        )
    return outcome


def _when(ts: str | None) -> float:
    try:
        return parse_iso_utc(ts).timestamp() if ts else 0.0
    except ValueError:
        return 0.0


def _anomaly(sql, kind: str, ref: str, device_id: str, detail: str, now: float) -> None:
    # The anomalies table is keyed by (kind, event_id); a head anomaly has no event of its own,
    # so ``ref`` names the device and seq instead.
    sql(
        "INSERT INTO anomalies VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, event_id) DO NOTHING",
        (kind, ref, device_id, detail, now),
    )


# -- reading: heads, missing spans, lag --------------------------------------------------------


def head_seqs(store: Any) -> dict[str, tuple[str, int]]:
    """Device id -> (regency, highest seq the device has reported, signed or not)."""
    rows = store.query("SELECT device_id, regency, last_seq, COALESCE(signed_seq, 0) FROM heads")
    return {r[0]: (r[1], max(int(r[2]), int(r[3]))) for r in rows}


def missing_spans(store: Any, device_id: str, head: int) -> list[tuple[int, int]]:
    """Seq ranges 1..``head`` of ``device_id`` that central does not hold, gaps and tail."""
    rows = store.query(
        "SELECT seq, LAG(seq) OVER (ORDER BY seq) FROM events WHERE device_id = ? ORDER BY seq",
        (device_id,),
    )
    spans = []
    last = 0
    for seq, prev in rows:
        start = 1 if prev is None else prev + 1
        if seq > start:
            spans.append((start, seq - 1))
        last = seq
    if head > last:
        spans.append((last + 1, head))
    return spans


_LAG_KEYS = ("regency", "last_seq", "signed_seq", "seen_at", "last_seq_at", "behind_since", "state")


def lag_rows(store: Any, silent_after_s: float, now: float) -> list[dict]:
    """One row per device central knows (by events or by reports), oldest problem visible.

    ``head_seq`` is the highest seq known to exist (reported or stored), ``missing`` how many
    of 1..head_seq central lacks, ``missing_for_s`` since when it has lacked some (the recovery
    loop keeps ``behind_since``; without it, since the current head was first seen),
    ``silent_for_s`` how long since the device was last heard (report or event), and
    ``silent`` whether that is past ``silent_after_s``.
    """
    heads = {
        r[0]: dict(zip(_LAG_KEYS, r[1:], strict=True))
        for r in store.query(
            "SELECT device_id, regency, last_seq, signed_seq, seen_at, last_seq_at, "
            "behind_since, state FROM heads"
        )
    }
    stats = {
        r[0]: r[1:]
        for r in store.query(
            "SELECT device_id, MIN(regency), COUNT(DISTINCT seq), MAX(seq), MAX(received_at) "
            "FROM events GROUP BY device_id"
        )
    }
    out = []
    for device_id in sorted(set(heads) | set(stats)):
        h = heads.get(device_id, {})
        regency, stored, max_seq, received = stats.get(device_id, (None, 0, 0, None))
        head = max(int(h.get("last_seq") or 0), int(h.get("signed_seq") or 0), int(max_seq or 0))
        missing = head - int(stored)
        last_seen = max(t for t in (h.get("seen_at"), received, 0.0) if t is not None)
        since = None
        if missing > 0:
            since = h.get("behind_since") or h.get("last_seq_at") or last_seen
        out.append(
            {
                "device_id": device_id,
                "regency": h.get("regency") or regency,
                "head_seq": head,
                "stored": int(stored),
                "missing": missing,
                "behind_since": h.get("behind_since"),
                "missing_for_s": None if since is None else round(max(0.0, now - since), 1),
                "last_seen": last_seen,
                "silent_for_s": round(max(0.0, now - last_seen), 1),
                "silent": now - last_seen > silent_after_s,
                "state": h.get("state"),
            }
        )
    return out


def chunks(span: tuple[int, int], size: int) -> list[tuple[int, int]]:
    """``span`` cut into ranges of at most ``size`` seqs."""
    lo, hi = span
    return [(s, min(hi, s + size - 1)) for s in range(lo, hi + 1, size)]


def subtract(spans: list[tuple[int, int]], covered: list[tuple[int, int]]):
    """The parts of ``spans`` that no ``covered`` range already asks for."""
    out = []
    for lo, hi in spans:
        pieces = [(lo, hi)]
        for c_lo, c_hi in covered:
            nxt = []
            for a, b in pieces:
                if c_hi < a or c_lo > b:
                    nxt.append((a, b))
                    continue
                if a < c_lo:
                    nxt.append((a, c_lo - 1))
                if b > c_hi:
                    nxt.append((c_hi + 1, b))
            pieces = nxt
        out.extend(pieces)
    return out
