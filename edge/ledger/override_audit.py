"""What ``edge audit`` checks and counts of supervised overrides (edge/payout/override.py).

Counted per terminal and per staff member, with the share of payouts they make. An override
event that lacks two different staff members or a reason, or that overrides something that is
not an overridable refusal of the same household and round earlier in the stream, is an error:
the terminal never writes one. Many overrides are not tampering but are what central must look
at, so they are flagged as warnings: a share of payouts above :data:`FLAG_SHARE`, or one staff
member in more than :data:`FLAG_STAFF_PER_DAY` overrides on one (UTC) day.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from edge.enrolment.badges import OVERRIDABLE
from edge.events import is_payout

FLAG_SHARE = 0.05
FLAG_STAFF_PER_DAY = 3


@dataclass
class OverrideTally:
    """Fed every event of a stream in order; writes its findings into an AuditReport."""

    refusals: dict[str, dict] = field(default_factory=dict)  # event_id -> refusal event
    payouts: Counter = field(default_factory=Counter)  # device -> payouts
    overrides: Counter = field(default_factory=Counter)  # device -> accepted overrides
    staff: Counter = field(default_factory=Counter)  # staff id -> accepted overrides
    staff_days: Counter = field(default_factory=Counter)  # (staff id, day) -> overrides
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, ev: dict) -> None:
        outcome = str(ev.get("outcome"))
        device = str(ev.get("device_id"))
        if outcome in OVERRIDABLE:
            self.refusals[str(ev.get("event_id"))] = ev
        if is_payout(outcome):
            self.payouts[device] += 1
        if outcome == "override_refused":
            self.refused += 1
        if outcome != "accepted_override":
            return
        self.overrides[device] += 1
        where = f"seq {ev.get('seq')}"
        raw = ev.get("override")
        block: dict = raw if isinstance(raw, dict) else {}
        ids = [str(s.get("staff_id")) for s in block.get("staff", []) if isinstance(s, dict)]
        for staff_id in sorted(set(ids)):  # one count per event, even if listed twice
            self.staff[str(staff_id)] += 1
            self.staff_days[(str(staff_id), str(ev.get("ts", ""))[:10])] += 1
        if len(ids) != 2 or len(set(ids)) != 2 or not block.get("reason"):
            self.errors.append(f"{where}: override lacks two different staff members or a reason")
        refusal = self.refusals.get(str(block.get("overrides")))
        if refusal is None:
            self.warnings.append(f"{where}: the refusal it overrides is not in this stream")
        elif (refusal.get("household_ref"), refusal.get("round_id")) != (
            ev.get("household_ref"),
            ev.get("round_id"),
        ):
            self.errors.append(f"{where}: override of another household's refusal")

    def finish(self, report: Any) -> None:
        """Write counts, errors and flags into ``report`` (an edge.ledger.verify.AuditReport)."""
        report.overrides = dict(self.overrides)
        report.override_staff = dict(self.staff)
        report.override_refused = self.refused
        report.errors += self.errors
        report.warnings += self.warnings
        for device, n in sorted(self.overrides.items()):
            share = n / max(self.payouts[device], 1)
            if share > FLAG_SHARE:
                report.warnings.append(
                    f"FLAG {device}: overrides are {share:.0%} of its payouts ({n})"
                )
        for (staff_id, day), n in sorted(self.staff_days.items()):
            if n > FLAG_STAFF_PER_DAY:
                report.warnings.append(f"FLAG staff {staff_id}: {n} overrides on {day}")
