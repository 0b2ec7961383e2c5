"""Verify a stream of signed events: hashes, signatures, chain links, sequence numbers.

The core of ``edge audit`` (:mod:`edge.ledger.audit` adds the ledger file's own cross-checks
and the checkpoints from outside it), and what tests and the demo use to prove a ledger or
central's copy of it whole. Pure: events in, an :class:`AuditReport` out, no files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import KeyFileError
from edge.events import (
    GENESIS,
    REQUIRED,
    SCHEMA,
    event_hash,
    is_payout,
    receipt_signature_ok,
    signature_ok,
)
from edge.keys import load_ed25519_public
from edge.ledger.override_audit import OverrideTally


@dataclass
class AuditReport:
    """Result of verifying an event stream: every problem found, not just the first."""

    count: int = 0
    errors: list[str] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    boot_sessions: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # The newest seq a signed checkpoint from outside the ledger proved present (None: none).
    proven_to: int | None = None
    # Supervised overrides: accepted ones per device and per staff id, refused attempts.
    overrides: dict[str, int] = field(default_factory=dict)
    override_staff: dict[str, int] = field(default_factory=dict)
    override_refused: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and not self.gaps

    def summary(self) -> str:
        """A few lines for a person: counts, then each problem."""
        lines = [
            f"events: {self.count} (seq {self.first_seq}..{self.last_seq}), "
            f"boot sessions: {self.boot_sessions}",
            "outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())),
        ]
        if self.overrides or self.override_refused:
            per = ", ".join(f"{d}={n}" for d, n in sorted(self.overrides.items()))
            staff = ", ".join(f"{s}={n}" for s, n in sorted(self.override_staff.items()))
            lines.append(f"overrides: {per or 'none'}; refused attempts: {self.override_refused}")
            lines.append(f"overrides by staff: {staff or 'none'}")
        lines += [f"GAP: seq {a}..{b} missing" for a, b in self.gaps]
        lines += [f"ERROR: {e}" for e in self.errors]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.proven_to is None:
            lines.append(
                "NOTE: no signed head checkpoint given (--head or --receipt): deleting the "
                "newest events cannot be excluded"
            )
        else:
            lines.append(f"whole up to the signed checkpoint at seq {self.proven_to}")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def verify_events(
    events: Iterable[dict], device_public_pem: bytes, *, from_genesis: bool = True
) -> AuditReport:
    """Verify hashes, signatures, chain links and sequence numbers of events in seq order.

    An edited event shows as a hash mismatch (or a bad signature if the hash was recomputed);
    a deleted one as a sequence gap plus a broken chain link; an inserted or reordered one as a
    broken link. ``from_genesis=False`` accepts a stream that starts mid-ledger (a slice).
    """
    report = AuditReport()
    try:
        key = load_ed25519_public(device_public_pem)
    except KeyFileError as exc:
        report.errors.append(f"device public key: {exc}")
        return report
    walk = _Walk(from_genesis)
    overrides = OverrideTally()
    for ev in events:
        report.count += 1
        where = f"seq {ev.get('seq')}"
        missing = [k for k in REQUIRED if k not in ev]
        if missing or not isinstance(ev.get("seq"), int):
            report.errors.append(f"{where}: malformed event (missing {', '.join(missing)})")
            continue
        problems = walk.tally(ev, report)
        problems += walk.identity_problems(ev)
        problems += _signature_problems(ev, key)
        problems += walk.link_problems(ev, report)
        report.errors += [f"{where}: {p}" for p in problems]
        overrides.add(ev)
    overrides.finish(report)
    report.boot_sessions = len(walk.sessions)
    return report


@dataclass
class _Walk:
    """What :func:`verify_events` remembers from the events already seen."""

    from_genesis: bool
    sessions: set[str] = field(default_factory=set)
    event_ids: set[str] = field(default_factory=set)
    prev_seq: int | None = None
    prev_hash: str | None = None

    def tally(self, ev: dict, report: AuditReport) -> list[str]:
        """Count the event into the report; a stream that should start at genesis must."""
        problems = []
        if report.first_seq is None:
            report.first_seq = ev["seq"]
            if self.from_genesis and (ev["seq"] != 1 or ev.get("prev_hash") != GENESIS):
                problems.append("ledger does not start at seq 1 (head deleted)")
        report.last_seq = ev["seq"]
        self.sessions.add(str(ev.get("boot_session")))
        outcome = str(ev.get("outcome") or ev.get("kind"))  # a config event has no outcome
        report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
        return problems

    def identity_problems(self, ev: dict) -> list[str]:
        """A schema this audit does not know, or an event id used twice."""
        problems = []
        if ev.get("schema") != SCHEMA:
            problems.append(f"unknown schema {ev.get('schema')!r}")
        if ev["event_id"] in self.event_ids:
            problems.append("duplicate event_id")
        self.event_ids.add(ev["event_id"])
        return problems

    def link_problems(self, ev: dict, report: AuditReport) -> list[str]:
        """Order and chain against the previous event; a skipped range goes to ``gaps``."""
        problems = []
        seq = ev["seq"]
        if self.prev_seq is not None:
            if seq <= self.prev_seq:
                problems.append(f"out of order after seq {self.prev_seq}")
            elif seq != self.prev_seq + 1:
                report.gaps.append((self.prev_seq + 1, seq - 1))
            if ev.get("prev_hash") != self.prev_hash:
                problems.append(
                    f"chain broken (prev_hash does not match seq {self.prev_seq}: "
                    "event deleted, inserted or edited)"
                )
        self.prev_seq, self.prev_hash = seq, ev.get("hash")
        return problems


def _signature_problems(ev: dict, key: Ed25519PublicKey) -> list[str]:
    """Hash, device signature and (for a payout) receipt signature of one event."""
    if ev.get("pruned") is True:
        # Retention (edge prune) kept only the chain fields: the links and the device's
        # signature of the hash still check, the content no longer can.
        return [] if signature_ok(ev, key) else ["bad signature"]
    problems = []
    if event_hash(ev) != ev.get("hash"):
        problems.append("hash mismatch (event edited)")
    elif not signature_ok(ev, key):
        problems.append("bad signature")
    if is_payout(ev.get("outcome")) and "receipt_sig" in ev:
        if not receipt_signature_ok(ev, key):
            problems.append("bad receipt signature")
    return problems
