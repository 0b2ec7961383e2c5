"""Rebuild central's counters in bulk from the events and entitlements.

The trigger (:mod:`edge.central.schema`) keeps the counters as events arrive. This module
gives the same numbers from scratch. It runs once when central is installed on a store that
already holds events (a consumer that ran before the dashboard existed), by
``edge central rebuild`` after a repair, and in the national-scale benchmark after its bulk
load. It is never run per request. Both databases take the same SQL.
"""

from __future__ import annotations

import logging

from edge.central.schema import OVERRIDE, PAYOUTS

log = logging.getLogger(__name__)

_PAY = ", ".join(f"'{o}'" for o in PAYOUTS)

# The entitlements' link to the payout that collected them: the first stored one.
RELINK = (
    "UPDATE c_entitlements SET collected_event = NULL, collected_at = NULL, "
    "collected_device = NULL",
    f"""UPDATE c_entitlements SET collected_event = (SELECT e.event_id FROM events e
        WHERE e.round_id = c_entitlements.round_id AND e.outcome IN ({_PAY})
        AND (e.household_ref = c_entitlements.household_ref
             OR e.household_ref = c_entitlements.household_id)
        ORDER BY e.received_at, e.event_id LIMIT 1)""",
    """UPDATE c_entitlements SET
        collected_at = (SELECT ts FROM events WHERE event_id = collected_event),
        collected_device = (SELECT device_id FROM events WHERE event_id = collected_event)
        WHERE collected_event IS NOT NULL""",
)

COUNTERS = (
    "DELETE FROM c_cells",
    """INSERT INTO c_cells SELECT round_id, device_id, MIN(province), MIN(regency), MIN(point),
        COUNT(*), SUM(amount), COUNT(collected_event),
        SUM(CASE WHEN collected_event IS NULL THEN 0 ELSE amount END), 0, 0
        FROM c_entitlements GROUP BY round_id, device_id""",
    f"""INSERT INTO c_cells (round_id, device_id, province, regency, point, paid, paid_amount)
        SELECT round_id, device_id, substr(MIN(regency), 1, 2), MIN(regency), '-', COUNT(*),
        SUM(COALESCE(amount, 0)) FROM events WHERE outcome IN ({_PAY})
        GROUP BY round_id, device_id
        ON CONFLICT (round_id, device_id) DO UPDATE SET paid = excluded.paid,
        paid_amount = excluded.paid_amount""",
    "DELETE FROM c_timeline",
    f"""INSERT INTO c_timeline SELECT round_id, 'r', regency, substr(regency, 1, 2),
        substr(ts, 1, 13), COUNT(*), SUM(COALESCE(amount, 0)) FROM events
        WHERE outcome IN ({_PAY}) GROUP BY round_id, regency, substr(ts, 1, 13)""",
    f"""INSERT INTO c_timeline SELECT round_id, 'd', device_id, substr(MIN(regency), 1, 2),
        substr(ts, 1, 13), COUNT(*), SUM(COALESCE(amount, 0)) FROM events
        WHERE outcome IN ({_PAY}) GROUP BY round_id, device_id, substr(ts, 1, 13)""",
    "DELETE FROM c_outcomes",
    """INSERT INTO c_outcomes SELECT device_id, outcome, substr(MIN(regency), 1, 2),
        MIN(regency), COUNT(*) FROM events WHERE outcome IS NOT NULL
        GROUP BY device_id, outcome""",
    "DELETE FROM c_flagged",
    f"""INSERT INTO c_flagged SELECT event_id, 'override', device_id, substr(regency, 1, 2),
        regency, ts FROM events WHERE outcome = '{OVERRIDE}'""",
    """INSERT INTO c_terminals (device_id, province, regency, last_event_at, last_event_seq,
        updated_at) SELECT device_id, substr(MIN(regency), 1, 2), MIN(regency),
        MAX(received_at), MAX(seq), MAX(received_at) FROM events WHERE seq >= 0
        GROUP BY device_id
        ON CONFLICT (device_id) DO UPDATE SET last_event_at = excluded.last_event_at,
        last_event_seq = excluded.last_event_seq""",
)


def rebuild_counters(sql, relink: bool = True) -> None:
    """Recount everything with ``sql(text, params)`` inside the caller's transaction.

    ``relink=False`` keeps the entitlements' ``collected_event`` as they are (the benchmark's
    bulk load sets them itself).
    """
    for statement in (RELINK if relink else ()) + COUNTERS:
        sql(statement, ())
    log.info("central counters rebuilt from the stored events")
