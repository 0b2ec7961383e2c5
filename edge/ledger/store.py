"""The ledger: SQLite, the terminal's durable truth.

One file (``state_dir/ledger.sqlite``, WAL, ``synchronous=FULL``) with:

- ``events``: every decision, hash-chained and signed by the device key (append-only);
- ``payouts``: one row per accepted payout, ``UNIQUE(household_id, round_id)``: a second
  payout for the same household and round cannot be written, whatever the code above does;
  the signed event names the household only by its pseudonymous ``household_ref``, while the
  ``household_id`` columns of ``events`` and ``payouts`` are this terminal's local note;
- ``remote_payouts``: payouts other terminals reported (claims sync), consulted before paying;
- ``outbox``: events not yet acknowledged by the broker;
- ``receipts``: whether an accepted payout's receipt is pending, printing or printed, and how
  often its printing was cut off;
- ``meta``: device id, regency, the device's public key, the head sequence number and the
  layout version (older files are upgraded when opened).

An accepted payout, its event, its outbox row and its pending receipt are written in one
transaction that is on disk (fsync) before :meth:`Ledger.record` returns, so the LED turns
green and the receipt prints only for a payout that survives a power cut.
"""

from __future__ import annotations

import base64
import logging
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from edge.errors import AlreadyPaid, LedgerError
from edge.events import (
    CLOCK_FLOOR,
    GENESIS,
    OUTCOMES,
    SCHEMA,
    canonical,
    event_hash,
    is_payout,
    iso_utc,
    parse_iso_utc,
    sign_head,
    sign_receipt,
)
from edge.keys import DeviceIdentity
from edge.ledger.changes import ConfigEvents
from edge.ledger.history import ClaimHistory
from edge.ledger.outbox import Outbox
from edge.ledger.receipts import ReceiptRows
from edge.ledger.remote import RemotePayouts
from edge.ledger.schema import (
    SCHEMA_SQL,
    connect,
    init_meta,
    num,
)
from edge.ledger.stream import EventStream
from edge.privacy import mask_id

log = logging.getLogger(__name__)


class Ledger(EventStream, Outbox, ReceiptRows, RemotePayouts, ConfigEvents, ClaimHistory):
    """Durable, tamper-evident record of every decision on this terminal. Thread-safe."""

    def __init__(
        self,
        path: Path | str,
        identity: DeviceIdentity,
        device_id: str,
        regency: str,
        clock=time.time,
        stamp=None,
    ) -> None:
        self.path = Path(path)
        # stamp(last_ts) -> (ts, note): the time rule of edge.ops.clock.TimeKeeper; the note
        # goes into the event as extra.clock. None: the plain ``clock``.
        self._stamp = stamp
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.regency = regency
        self.boot_session = str(uuid.uuid4())
        self._identity = identity
        self._clock = clock
        self._lock = threading.RLock()
        try:
            self._conn = connect(self.path)
            self._conn.executescript(SCHEMA_SQL)
            self._init_meta()
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot open ledger: {exc}") from exc
        log.info("ledger open: %s events, boot session %s", self._head()[0], self.boot_session)

    # -- set-up --------------------------------------------------------------------------------

    def _init_meta(self) -> None:
        pem = self._identity.device_public_pem().decode()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                init_meta(
                    self._conn,
                    self.path,
                    {
                        "schema": SCHEMA,
                        "device_id": self.device_id,
                        "regency": self.regency,
                        "device_public_pem": pem,
                        "created": iso_utc(self._clock()),
                        "head_seq": "0",
                    },
                )
                self._conn.execute("COMMIT")
            except BaseException:
                _rollback(self._conn)
                raise

    def last_ts(self) -> float | None:
        """The time of the last signed event (POSIX seconds), None for an empty ledger."""
        with self._lock:
            row = self._conn.execute("SELECT ts FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return parse_iso_utc(row[0]).timestamp() if row else None

    def _head(self) -> tuple[int, str]:
        row = self._conn.execute(
            "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

    # -- writing -------------------------------------------------------------------------------

    def _check_clock(self, now: float) -> None:
        # Signing with a clock stuck at 1970 (a Pi without RTC before NTP) would put nonsense
        # timestamps into a signed, append-only record; refuse instead.
        if now < CLOCK_FLOOR:
            raise LedgerError(
                f"clock reads {iso_utc(max(now, 0))}, before {iso_utc(CLOCK_FLOOR, 'seconds')}: "
                "refusing to sign events; set the time (NTP or RTC) first"
            )

    def record(
        self,
        outcome: str,
        *,
        household_id: str | None = None,
        round_id: str | None = None,
        amount: int | None = None,
        score: float | None = None,
        threshold: float | None = None,
        liveness: float | None = None,
        model_id: str | None = None,
        bundle_id: str | None = None,
        extra: dict | None = None,
        household_ref: str | None = None,
        override: dict | None = None,
    ) -> dict:
        """Write one signed decision event durably and return it.

        ``override`` is the supervised-override block (staff, reason, the refusal it overrides)
        of ``accepted_override`` and ``override_refused`` events (edge/payout/override.py).
        For a payout (``accepted``, ``accepted_override``) the payout row, the event, its
        outbox row and a pending receipt are one
        fsynced transaction; :class:`AlreadyPaid` is raised (and nothing written) when this
        household was already paid for this round, here or at another terminal. The event
        carries ``household_ref``, never ``household_id`` (kept in this ledger's columns).
        """
        accepted = _check_decision(outcome, household_id, round_id, amount, household_ref)
        if self._stamp is None:
            now = self._clock()
        else:
            with self._lock:  # the last event's time, and ours not before it
                now, note = self._stamp(self.last_ts())
            extra = {**(extra or {}), "clock": note}
        self._check_clock(now)
        fields: dict[str, Any] = {
            "outcome": outcome,
            "household_ref": household_ref,
            "round_id": round_id,
            "amount": int(amount) if accepted and amount is not None else None,
            "score": num(score),
            "threshold": num(threshold),
            "liveness": num(liveness),
            "model_id": model_id,
            "bundle_id": bundle_id,
        }
        if override is not None:
            fields["override"] = dict(override)
        with self._lock:
            event = self._commit(fields, household_id, iso_utc(now), extra)
        log.info(
            "recorded seq %s %s household %s round %s",
            event["seq"],
            outcome,
            mask_id(household_id),
            round_id,
        )
        return event

    def _commit(
        self, fields: dict, hid: str | None, ts: str, extra: dict | None, kind: str = "decision"
    ) -> dict:
        """One transaction: double-payout check, next link of the chain, every row; fsynced."""
        conn = self._conn
        accepted = is_payout(fields["outcome"])
        claim = (hid, fields["round_id"], fields["household_ref"])
        conn.execute("BEGIN IMMEDIATE")
        try:
            if accepted:
                paid = self._find_paid(*claim)
                if paid:
                    raise AlreadyPaid(paid)
            seq, prev_hash = self._head()
            event = self._signed_event(seq + 1, prev_hash, ts, fields, extra, kind)
            self._insert_event(event, hid)
            conn.execute("COMMIT")  # synchronous=FULL: on disk before this returns
        except sqlite3.IntegrityError as exc:
            _rollback(conn)
            # Only reachable if the read above raced a writer in another process.
            paid = self._find_paid(*claim) if accepted else None
            if paid:
                raise AlreadyPaid(paid) from exc
            raise LedgerError(f"ledger refused the event: {exc}") from exc
        except BaseException:
            _rollback(conn)
            raise
        return event

    def _signed_event(
        self, seq: int, prev_hash: str, ts: str, fields: dict, extra: dict | None, kind: str
    ) -> dict:
        """The event linked to ``prev_hash``, with its receipt signature, hash and signature."""
        event = {
            "schema": SCHEMA,
            "event_id": str(uuid.uuid4()),
            "device_id": self.device_id,
            "regency": self.regency,
            "boot_session": self.boot_session,
            "seq": seq,
            "ts": ts,
            "kind": kind,
            **fields,
            "prev_hash": prev_hash,
        }
        if extra:
            event["extra"] = dict(extra)
        if is_payout(event["outcome"]):
            event["receipt_sig"] = sign_receipt(event, self._identity.sign)
        digest = event_hash(event)
        event["hash"] = digest
        event["sig"] = base64.b64encode(self._identity.sign(digest.encode())).decode()
        return event

    def _insert_event(self, event: dict, hid: str | None) -> None:
        """Rows of one event inside the caller's transaction: event, outbox, payout, receipt;
        ``hid`` (the full household id) goes into the local columns only."""
        q = self._conn.execute
        seq, event_id, ts = event["seq"], event["event_id"], event["ts"]
        rid = event["round_id"]
        q(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                event_id,
                ts,
                event["outcome"] or event["kind"],  # the column is NOT NULL: "config"
                hid,
                rid,
                event["hash"],
                canonical(event).decode(),
            ),
        )
        q("INSERT INTO outbox (seq, event_id) VALUES (?, ?)", (seq, event_id))
        if is_payout(event["outcome"]):
            q(
                "INSERT INTO payouts VALUES (?, ?, ?, ?, ?)",
                (hid, rid, event_id, event["amount"], ts),
            )
            q(
                "INSERT INTO receipts (event_id, status, updated) VALUES (?, 'pending', ?)",
                (event_id, ts),
            )
        q("UPDATE meta SET value = ? WHERE key = 'head_seq'", (str(seq),))

    # -- reading -------------------------------------------------------------------------------

    def _find_paid(
        self, household_id: str | None, round_id: str | None, household_ref: str | None
    ) -> dict | None:
        # A local payout wins over reports from other terminals; among those, the earliest.
        # Other terminals report the household by its reference of the round; a report from
        # before references (remote_payouts.household_id then holds the full id) still counts.
        row = self._conn.execute(
            "SELECT 'local', event_id, amount, ts, ? FROM payouts"
            " WHERE household_id = ? AND round_id = ?"
            " UNION ALL SELECT 'remote', event_id, NULL, ts, device_id FROM remote_payouts"
            " WHERE household_id IN (?, ?) AND round_id = ?"
            " ORDER BY 1, 4 LIMIT 1",
            (self.device_id, household_id, round_id, household_ref, household_id, round_id),
        ).fetchone()
        if row is None:
            return None
        where, event_id, amount, ts, device_id = row
        return {
            "where": where,
            "household_id": household_id,
            "round_id": round_id,
            "event_id": event_id,
            "amount": amount,
            "ts": ts,
            "device_id": device_id,
        }

    def is_paid(
        self, household_id: str, round_id: str, household_ref: str | None = None
    ) -> dict | None:
        """The payout for this household and round (``where`` = local|remote), or None;
        other terminals' payouts are found by ``household_ref`` only."""
        with self._lock:
            return self._find_paid(household_id, round_id, household_ref)

    def signed_head(self) -> dict:
        """A head checkpoint ``{"seq", "hash", "ts", "sig"}`` of the chain as it is now.

        Signed by the device (:func:`edge.events.sign_head`); health, status and receipts carry
        it off the terminal, where it later proves a cut or forked ledger (docs/security.md).
        """
        with self._lock:
            seq, digest = self._head()
        return sign_head(self.device_id, seq, digest, iso_utc(self._clock()), self._identity.sign)

    def stats(self) -> dict:
        """Counts for health reports: events, payouts, outbox depth, receipts not yet printed
        and receipts whose printing was cut off at least once."""
        with self._lock:
            q = self._conn.execute
            return {
                "events": self._head()[0],
                "payouts": q("SELECT COUNT(*) FROM payouts").fetchone()[0],
                "remote_payouts": q("SELECT COUNT(*) FROM remote_payouts").fetchone()[0],
                "outbox": q("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0],
                "pending_receipts": q(
                    "SELECT COUNT(*) FROM receipts WHERE status != 'printed'"
                ).fetchone()[0],
                "interrupted_receipts": q(
                    "SELECT COUNT(*) FROM receipts WHERE interrupted > 0"
                ).fetchone()[0],
            }

    def close(self) -> None:
        """Checkpoint the WAL and close."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_decision(
    outcome: str,
    household_id: str | None,
    round_id: str | None,
    amount: int | None,
    household_ref: str | None,
) -> bool:
    """Refuse an unknown outcome or a payout without its keys; True for a payout."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    accepted = is_payout(outcome)
    if accepted and not (household_id and household_ref and round_id and amount is not None):
        # Without its reference, claims sync and central could not match the payout.
        raise ValueError("a payout needs household_id, household_ref, round_id and amount")
    return accepted


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
