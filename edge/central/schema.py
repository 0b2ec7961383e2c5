"""Central's own tables beside the consumer's, and the triggers that keep its counters.

The consumer (``edge.mqtt.store.EventStore``) writes ``events`` and ``anomalies``; nothing in
it knows about the dashboard. The dashboard's aggregates are kept by an ``AFTER INSERT``
trigger on ``events``, so they change in the same transaction as the insert, whichever
process inserts (every ``edge consume`` of a shared subscription group), and a page never
recomputes them from the events. The trigger bodies are one list of statements over ``NEW``
that SQLite and PostgreSQL both accept; only the wrapping differs (SQLite triggers with a
``WHEN`` clause, one PL/pgSQL function).

Tables (all prefixed ``c_``):

- ``c_entitlements``: one row per household and round from the registered manifests, with
  the event that collected it (NULL: not yet collected, the home-visit list);
- ``c_cells``: counters per round and terminal (entitled, collected, paid, amounts), the unit
  every progress page sums (terminals -> points -> regencies -> provinces);
- ``c_timeline``: payouts per hour per regency (``level`` r) and per terminal (``level`` d);
- ``c_outcomes``: decisions per terminal and outcome (refusals by reason);
- ``c_flagged``: overrides, each linked to its event;
- ``c_terminals``: last event, and the latest health and status message of each terminal
  (with its running release and the update in hand);
- ``c_users``: dashboard logins (argon2 hashes, role, scope).
"""

from __future__ import annotations

# Outcomes that pay money out. ``accepted_override`` is an officer's override of a refusal.
PAYOUTS = ("accepted", "accepted_override")
OVERRIDE = "accepted_override"

TABLES = (
    """CREATE TABLE IF NOT EXISTS c_entitlements (
        round_id TEXT NOT NULL,
        household_id TEXT NOT NULL,
        household_ref TEXT,
        province TEXT NOT NULL,
        regency TEXT NOT NULL,
        point TEXT NOT NULL,
        device_id TEXT NOT NULL,
        amount BIGINT NOT NULL,
        masked_name TEXT,
        bundle_id TEXT,
        collected_event TEXT,
        collected_at TEXT,
        collected_device TEXT,
        PRIMARY KEY (round_id, household_id))""",
    "CREATE UNIQUE INDEX IF NOT EXISTS c_ent_ref ON c_entitlements (round_id, household_ref)",
    "CREATE INDEX IF NOT EXISTS c_ent_point ON c_entitlements (round_id, regency, point)",
    "CREATE INDEX IF NOT EXISTS c_ent_device ON c_entitlements (round_id, device_id)",
    """CREATE TABLE IF NOT EXISTS c_cells (
        round_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        province TEXT NOT NULL,
        regency TEXT NOT NULL,
        point TEXT NOT NULL,
        entitled BIGINT NOT NULL DEFAULT 0,
        entitled_amount BIGINT NOT NULL DEFAULT 0,
        collected BIGINT NOT NULL DEFAULT 0,
        collected_amount BIGINT NOT NULL DEFAULT 0,
        paid BIGINT NOT NULL DEFAULT 0,
        paid_amount BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (round_id, device_id))""",
    "CREATE INDEX IF NOT EXISTS c_cells_regency ON c_cells (round_id, regency)",
    "CREATE INDEX IF NOT EXISTS c_cells_province ON c_cells (round_id, province)",
    """CREATE TABLE IF NOT EXISTS c_timeline (
        round_id TEXT NOT NULL,
        level TEXT NOT NULL,
        key TEXT NOT NULL,
        province TEXT NOT NULL,
        hour TEXT NOT NULL,
        paid BIGINT NOT NULL DEFAULT 0,
        amount BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (round_id, level, key, hour))""",
    """CREATE TABLE IF NOT EXISTS c_outcomes (
        device_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        province TEXT NOT NULL,
        regency TEXT NOT NULL,
        n BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (device_id, outcome))""",
    "CREATE INDEX IF NOT EXISTS c_outcomes_regency ON c_outcomes (regency)",
    """CREATE TABLE IF NOT EXISTS c_flagged (
        event_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        device_id TEXT NOT NULL,
        province TEXT NOT NULL,
        regency TEXT NOT NULL,
        ts TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS c_flagged_regency ON c_flagged (regency, ts)",
    """CREATE TABLE IF NOT EXISTS c_terminals (
        device_id TEXT PRIMARY KEY,
        province TEXT NOT NULL,
        regency TEXT NOT NULL,
        last_event_at DOUBLE PRECISION,
        last_event_seq BIGINT,
        status TEXT,
        status_at DOUBLE PRECISION,
        health_at DOUBLE PRECISION,
        outbox_depth BIGINT,
        reported_seq BIGINT,
        clock_trusted INTEGER,
        faults TEXT,
        updated_at DOUBLE PRECISION NOT NULL DEFAULT 0,
        version TEXT,
        update_version TEXT,
        update_state TEXT,
        update_error TEXT)""",
    "CREATE INDEX IF NOT EXISTS c_terminals_regency ON c_terminals (regency)",
    "CREATE INDEX IF NOT EXISTS c_anomalies_at ON anomalies (at)",
    """CREATE TABLE IF NOT EXISTS c_users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        scope TEXT,
        show_ids INTEGER NOT NULL DEFAULT 0)""",
)

# Columns added to a table after it first shipped, in order: ``CREATE TABLE IF NOT EXISTS``
# leaves an existing table as it was, so a store created by an older release gets them here.
# Append only; never rename or drop (a dashboard of the older release may share the database).
ADDED_COLUMNS = (
    ("c_terminals", "version", "TEXT"),
    ("c_terminals", "update_version", "TEXT"),
    ("c_terminals", "update_state", "TEXT"),
    ("c_terminals", "update_error", "TEXT"),
)


def added_columns(existing: dict[str, set[str]], pg: bool) -> list[str]:
    """The ``ALTER TABLE`` statements that bring older tables forward.

    ``existing`` maps each table to the columns it has now (SQLite has no ``ADD COLUMN IF NOT
    EXISTS``, so the store looks them up); PostgreSQL gets the ``IF NOT EXISTS`` form anyway,
    which is safe when two dashboards start at once.
    """
    out = []
    for table, column, kind in ADDED_COLUMNS:
        if pg:
            out.append(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
        elif column not in existing.get(table, set()):
            out.append(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    return out


_PAYOUT_LIST = ", ".join(f"'{o}'" for o in PAYOUTS)
_MATCH = (
    "round_id = NEW.round_id AND (household_ref = NEW.household_ref "
    "OR household_id = NEW.household_ref)"
)

# Statements run for every stored payout. The first claims the entitlement (only the first
# payout of a household counts as "collected"); the second counts it on the cell of the terminal
# the household was entitled at, and only when the first just claimed it for this event.
PAYOUT_STATEMENTS = (
    f"""UPDATE c_entitlements SET collected_event = NEW.event_id, collected_at = NEW.ts,
        collected_device = NEW.device_id WHERE {_MATCH} AND collected_event IS NULL""",
    f"""UPDATE c_cells SET collected = collected + 1,
        collected_amount = collected_amount + (SELECT amount FROM c_entitlements
        WHERE {_MATCH} AND collected_event = NEW.event_id)
        WHERE round_id = NEW.round_id AND device_id = (SELECT device_id FROM c_entitlements
        WHERE {_MATCH} AND collected_event = NEW.event_id)""",
    """INSERT INTO c_cells (round_id, device_id, province, regency, point, paid, paid_amount)
        VALUES (NEW.round_id, NEW.device_id, substr(NEW.regency, 1, 2), NEW.regency, '-', 1,
        COALESCE(NEW.amount, 0))
        ON CONFLICT (round_id, device_id) DO UPDATE SET paid = c_cells.paid + 1,
        paid_amount = c_cells.paid_amount + excluded.paid_amount""",
    """INSERT INTO c_timeline VALUES (NEW.round_id, 'r', NEW.regency, substr(NEW.regency, 1, 2),
        substr(NEW.ts, 1, 13), 1, COALESCE(NEW.amount, 0))
        ON CONFLICT (round_id, level, key, hour) DO UPDATE SET paid = c_timeline.paid + 1,
        amount = c_timeline.amount + excluded.amount""",
    """INSERT INTO c_timeline VALUES (NEW.round_id, 'd', NEW.device_id,
        substr(NEW.regency, 1, 2), substr(NEW.ts, 1, 13), 1, COALESCE(NEW.amount, 0))
        ON CONFLICT (round_id, level, key, hour) DO UPDATE SET paid = c_timeline.paid + 1,
        amount = c_timeline.amount + excluded.amount""",
)

OVERRIDE_STATEMENTS = (
    """INSERT INTO c_flagged VALUES (NEW.event_id, 'override', NEW.device_id,
        substr(NEW.regency, 1, 2), NEW.regency, NEW.ts) ON CONFLICT (event_id) DO NOTHING""",
)

DECISION_STATEMENTS = (
    """INSERT INTO c_outcomes VALUES (NEW.device_id, NEW.outcome, substr(NEW.regency, 1, 2),
        NEW.regency, 1)
        ON CONFLICT (device_id, outcome) DO UPDATE SET n = c_outcomes.n + 1""",
)

EVERY_EVENT_STATEMENTS = (
    """INSERT INTO c_terminals (device_id, province, regency, last_event_at, last_event_seq,
        updated_at) VALUES (NEW.device_id, substr(NEW.regency, 1, 2), NEW.regency,
        NEW.received_at, NEW.seq, NEW.received_at)
        ON CONFLICT (device_id) DO UPDATE SET last_event_at = excluded.last_event_at,
        updated_at = excluded.updated_at,
        last_event_seq = CASE WHEN c_terminals.last_event_seq IS NULL
            OR excluded.last_event_seq > c_terminals.last_event_seq
            THEN excluded.last_event_seq ELSE c_terminals.last_event_seq END""",
)


def sqlite_triggers() -> list[str]:
    """The triggers for SQLite: one per group, each with its ``WHEN``."""
    groups = {
        "c_on_payout": (f"NEW.outcome IN ({_PAYOUT_LIST})", PAYOUT_STATEMENTS),
        "c_on_override": (f"NEW.outcome = '{OVERRIDE}'", OVERRIDE_STATEMENTS),
        "c_on_decision": ("NEW.outcome IS NOT NULL", DECISION_STATEMENTS),
        "c_on_event": ("1", EVERY_EVENT_STATEMENTS),
    }
    out = []
    for name, (when, statements) in groups.items():
        body = ";\n".join(statements)
        out.append(f"DROP TRIGGER IF EXISTS {name}")
        out.append(
            f"CREATE TRIGGER {name} AFTER INSERT ON events FOR EACH ROW WHEN {when}\n"
            f"BEGIN\n{body};\nEND"
        )
    return out


def pg_triggers() -> list[str]:
    """The trigger for PostgreSQL: one PL/pgSQL function, and a change counter.

    ``c_changes`` is a sequence, not a row: sequences are not transactional, so concurrent
    consumers never wait on it, and the dashboard's live feed polls its ``last_value``.
    """

    def block(statements) -> str:
        return ";\n".join(statements) + ";"

    function = f"""CREATE OR REPLACE FUNCTION c_on_event() RETURNS trigger
LANGUAGE plpgsql AS $body$
BEGIN
  IF NEW.outcome IN ({_PAYOUT_LIST}) THEN
{block(PAYOUT_STATEMENTS)}
  END IF;
  IF NEW.outcome = '{OVERRIDE}' THEN
{block(OVERRIDE_STATEMENTS)}
  END IF;
  IF NEW.outcome IS NOT NULL THEN
{block(DECISION_STATEMENTS)}
  END IF;
{block(EVERY_EVENT_STATEMENTS)}
  PERFORM nextval('c_changes');
  RETURN NULL;
END
$body$"""
    return [
        "CREATE SEQUENCE IF NOT EXISTS c_changes",
        function,
        "CREATE OR REPLACE TRIGGER c_on_event AFTER INSERT ON events "
        "FOR EACH ROW EXECUTE FUNCTION c_on_event()",
    ]
