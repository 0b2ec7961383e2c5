"""What the dashboard shows, read from central's counters, always within the user's scope.

Every function takes the logged-in :class:`edge.central.auth.User` and adds its condition to
the SQL, so a regency user's request for another regency returns nothing (or raises
:class:`Forbidden` where a page names one thing). Progress and the timeline read only the
counter tables the triggers keep (:mod:`edge.central.schema`); lists of events read the events
of one terminal through the ``(device_id, seq)`` index.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from edge.central.auth import User
from edge.central.schema import PAYOUTS
from edge.central.store import CentralStore
from edge.errors import CentralError

# BPS codes of the places the demo and tests use; any other code is shown as the code.
NAMES = {
    "31": "DKI Jakarta",
    "3171": "Jakarta Selatan",
    "3172": "Jakarta Timur",
    "3173": "Jakarta Pusat",
    "32": "Jawa Barat",
    "3273": "Kota Bandung",
    "35": "Jawa Timur",
    "3578": "Kota Surabaya",
}
# A terminal reports health every few minutes; silent for this long means offline.
OFFLINE_AFTER_S = 900.0
LEVELS = ("province", "regency", "point", "device_id")


class Forbidden(CentralError):
    """The user asked for a place outside their scope."""


@dataclass(frozen=True)
class Filters:
    """Where in the country a page looks: each narrower field needs the wider one."""

    round_id: str = ""
    province: str = ""
    regency: str = ""
    point: str = ""
    device_id: str = ""

    def group_level(self) -> str:
        """The level the page lists: the one below the narrowest filter."""
        if self.point:
            return "device_id"
        if self.regency:
            return "point"
        if self.province:
            return "regency"
        return "province"

    def sql(self) -> tuple[str, tuple]:
        conds, params = [], []
        for col in LEVELS:
            value = getattr(self, col)
            if value:
                conds.append(f"{col} = ?")
                params.append(value)
        return " AND ".join(conds) or "1 = 1", tuple(params)


def check(user: User, f: Filters) -> None:
    """Raise Forbidden when the filters name a place outside the user's scope."""
    if f.regency and not user.sees_regency(f.regency):
        raise Forbidden("that regency is outside your scope")
    if f.province and user.role != "national" and user.scope and f.province != user.scope[:2]:
        raise Forbidden("that province is outside your scope")


def name(code: str) -> str:
    """``3171 Jakarta Selatan`` for a known BPS code, else the code itself."""
    return f"{code} {NAMES[code]}" if code in NAMES else code


def rounds(store: CentralStore, user: User) -> list[str]:
    """Rounds with registered entitlements or payouts in the user's scope, newest first."""
    cond, params = user.where()
    rows = store.rows(f"SELECT DISTINCT round_id FROM c_cells WHERE {cond}", params)
    return sorted((r[0] for r in rows), reverse=True)


def _share(collected: int, entitled: int) -> float | None:
    return round(100.0 * collected / entitled, 1) if entitled else None


def progress(store: CentralStore, user: User, f: Filters) -> dict:
    """Entitled, collected, share and amounts of a round, grouped one level below ``f``."""
    check(user, f)
    level = f.group_level()
    scope, sp = user.where()
    cond, fp = f.sql()
    rows = store.rows(
        f"SELECT {level}, SUM(entitled), SUM(collected), SUM(paid), SUM(paid_amount), "
        f"SUM(entitled_amount), COUNT(*) FROM c_cells WHERE round_id = ? AND {scope} "
        f"AND {cond} GROUP BY {level} ORDER BY {level}",
        (f.round_id, *sp, *fp),
    )
    out = []
    for key, entitled, collected, paid, amount, due, cells in rows:
        entitled, collected = int(entitled or 0), int(collected or 0)
        out.append(
            {
                "key": key,
                "entitled": entitled,
                "collected": collected,
                "share": _share(collected, entitled),
                "paid": int(paid or 0),
                "amount": int(amount or 0),
                "due": int(due or 0),
                "terminals": int(cells),
            }
        )
    total = {k: sum(r[k] for r in out) for k in ("entitled", "collected", "paid", "amount", "due")}
    total["share"] = _share(total["collected"], total["entitled"])
    return {"level": level, "rows": out, "total": total}


def timeline(store: CentralStore, user: User, f: Filters) -> list[dict]:
    """Payouts and amount per hour (UTC) for the place ``f`` names."""
    check(user, f)
    if f.device_id and not user.sees_regency(device_regency(store, f.device_id)):
        raise Forbidden("that terminal is outside your scope")
    if f.device_id or f.point:
        devices = [f.device_id] if f.device_id else _point_devices(store, user, f)
        if not devices:
            return []
        marks = ", ".join("?" for _ in devices)
        sql = f"level = 'd' AND key IN ({marks})"
        params: tuple = tuple(devices)
    else:
        scope, sp = user.where()
        sql, params = f"level = 'r' AND {scope.replace('regency', 'key')}", sp
        if f.regency:
            sql, params = sql + " AND key = ?", (*params, f.regency)
        elif f.province:
            sql, params = sql + " AND province = ?", (*params, f.province)
    rows = store.rows(
        f"SELECT hour, SUM(paid), SUM(amount) FROM c_timeline WHERE round_id = ? AND {sql} "
        "GROUP BY hour ORDER BY hour",
        (f.round_id, *params),
    )
    return [{"hour": h, "paid": int(p), "amount": int(a)} for h, p, a in rows]


def _point_devices(store: CentralStore, user: User, f: Filters) -> list[str]:
    scope, sp = user.where()
    rows = store.rows(
        f"SELECT device_id FROM c_cells WHERE round_id = ? AND regency = ? AND point = ? "
        f"AND {scope}",
        (f.round_id, f.regency, f.point, *sp),
    )
    return [r[0] for r in rows]


def _place(f: Filters, alias: str = "") -> tuple[str, tuple]:
    """The narrowest of terminal, regency, province in ``f`` as SQL (tables without points)."""
    for col in ("device_id", "regency", "province"):
        if getattr(f, col):
            return f"{alias + '.' if alias else ''}{col} = ?", (getattr(f, col),)
    return "1 = 1", ()


def refusals(store: CentralStore, user: User, f: Filters) -> dict:
    """Decisions by outcome in the place ``f`` names; per terminal too within one regency.

    Above a regency the per-terminal list would run to thousands of rows: totals only there.
    """
    check(user, f)
    scope, sp = user.where()
    cond, params = _place(f)
    rows = store.rows(
        f"SELECT outcome, SUM(n) FROM c_outcomes WHERE {scope} AND {cond} GROUP BY outcome",
        (*sp, *params),
    )
    totals = {outcome: int(n) for outcome, n in rows}
    per_device: dict[str, dict] = {}
    if f.regency or f.device_id or user.role == "regency":
        for device_id, regency, outcome, n in store.rows(
            f"SELECT device_id, regency, outcome, n FROM c_outcomes WHERE {scope} AND {cond} "
            "ORDER BY device_id, outcome",
            (*sp, *params),
        ):
            per_device.setdefault(device_id, {"regency": regency, "outcomes": {}})
            per_device[device_id]["outcomes"][outcome] = int(n)
    refused = {k: v for k, v in totals.items() if k not in PAYOUTS}
    return {"totals": totals, "refused": refused, "devices": per_device}


def overrides(store: CentralStore, user: User, limit: int = 100) -> list[dict]:
    """The newest payouts made by an officer's override, each with its event id."""
    scope, sp = user.where()
    rows = store.rows(
        f"SELECT event_id, device_id, regency, ts FROM c_flagged WHERE {scope} "
        "ORDER BY ts DESC LIMIT ?",
        (*sp, limit),
    )
    return [dict(zip(("event_id", "device_id", "regency", "ts"), r, strict=True)) for r in rows]


def anomalies(store: CentralStore, user: User, limit: int = 100) -> list[dict]:
    """Double payouts, chain breaks, sequence and id conflicts, newest first."""
    scope, sp = user.where("t")
    rows = store.rows(
        "SELECT a.kind, a.event_id, a.device_id, a.detail, a.at, t.regency FROM anomalies a "
        f"JOIN c_terminals t ON t.device_id = a.device_id WHERE {scope} "
        "ORDER BY a.at DESC LIMIT ?",
        (*sp, limit),
    )
    keys = ("kind", "event_id", "device_id", "detail", "at", "regency")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def terminals(
    store: CentralStore, user: User, f: Filters, now: float | None = None, limit: int = 1000
) -> list[dict]:
    """Terminals in scope (the first ``limit`` by regency and id) with their last contact,
    latest health report, running release and the update in hand."""
    check(user, f)
    now = time.time() if now is None else now
    scope, sp = user.where()
    cond, params = _place(f)
    rows = store.rows(
        "SELECT device_id, regency, last_event_at, last_event_seq, status, status_at, "
        "health_at, outbox_depth, reported_seq, clock_trusted, faults, version, update_version, "
        "update_state, update_error FROM c_terminals "
        f"WHERE {scope} AND {cond} ORDER BY regency, device_id LIMIT ?",
        (*sp, *params, limit),
    )
    out = []
    for r in rows:
        (
            device_id,
            regency,
            ev_at,
            seq,
            status,
            status_at,
            health_at,
            depth,
            rseq,
            clock,
            faults,
            version,
            *update,
        ) = r
        seen = max((t for t in (ev_at, status_at, health_at) if t is not None), default=None)
        silent = seen is None or now - seen > OFFLINE_AFTER_S
        online = status != "offline" and not silent
        out.append(
            {
                "device_id": device_id,
                "regency": regency,
                "last_seen": seen,
                "online": online,
                "status": status or "-",
                "outbox_depth": depth,
                "last_seq": seq,
                "reported_seq": rseq,
                # Nothing stored yet from a terminal that reports events: all of them missing.
                "behind": (rseq - (seq or 0)) if rseq is not None else None,
                "clock_trusted": None if clock is None else bool(clock),
                "faults": json.loads(faults) if faults else [],
                "version": version,
                # The health report's ``update`` (version, state, error; None: nothing in hand),
                # named otherwise because a template's ``t.update`` would find dict.update.
                "ota": dict(zip(("version", "state", "error"), update, strict=True))
                if update[1]
                else None,
            }
        )
    return out


def summary_counts(store: CentralStore, user: User, f: Filters, now: float | None = None) -> dict:
    """Counts for the progress page's cards: alerts, terminals, offline and faulty ones."""
    check(user, f)
    now = time.time() if now is None else now
    scope, sp = user.where()
    cond, params = _place(f)
    silent = now - OFFLINE_AFTER_S
    [(total, offline, faulty)] = store.rows(
        "SELECT COUNT(*), SUM(CASE WHEN status = 'offline' OR COALESCE(last_event_at, 0) < ? "
        "AND COALESCE(status_at, 0) < ? AND COALESCE(health_at, 0) < ? THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN faults IS NOT NULL AND faults <> '[]' THEN 1 ELSE 0 END) "
        f"FROM c_terminals WHERE {scope} AND {cond}",
        (silent, silent, silent, *sp, *params),
    )
    tscope, tsp = user.where("t")
    tcond, tparams = _place(f, "t")
    [(alerts,)] = store.rows(
        "SELECT COUNT(*) FROM anomalies a JOIN c_terminals t ON t.device_id = a.device_id "
        f"WHERE {tscope} AND {tcond}",
        (*tsp, *tparams),
    )
    return {
        "terminals": int(total or 0),
        "offline": int(offline or 0),
        "faulty": int(faulty or 0),
        "alerts": int(alerts or 0),
    }


def device_regency(store: CentralStore, device_id: str) -> str | None:
    """The regency a terminal reports from (None when central never heard of it)."""
    rows = store.rows("SELECT regency FROM c_terminals WHERE device_id = ?", (device_id,))
    return rows[0][0] if rows else None


def device_events(
    store: CentralStore, user: User, device_id: str, outcome: str = "", limit: int = 100
) -> list[dict]:
    """A terminal's newest events, optionally of one outcome."""
    if not user.sees_regency(device_regency(store, device_id)):
        raise Forbidden("that terminal is outside your scope")
    cond, params = ("AND outcome = ?", (outcome,)) if outcome else ("", ())
    rows = store.rows(
        # Events name households by reference; central's entitlements map it back.
        "SELECT e.event_id, e.seq, e.ts, e.outcome, COALESCE(c.household_id, e.household_ref), "
        "e.round_id, e.amount FROM events e LEFT JOIN c_entitlements c "
        "ON c.round_id = e.round_id AND c.household_ref = e.household_ref "
        f"WHERE e.device_id = ? {cond.replace('outcome', 'e.outcome')} ORDER BY e.seq DESC LIMIT ?",
        (device_id, *params, limit),
    )
    keys = ("event_id", "seq", "ts", "outcome", "household", "round_id", "amount")
    out = [dict(zip(keys, r, strict=True)) for r in rows]
    for e in out:
        e["household"] = user.household(e["household"])
    return out


def event_detail(store: CentralStore, user: User, event_id: str) -> dict:
    """One stored event (household masked for the user) and the anomalies that name it."""
    rows = store.rows("SELECT regency, body FROM events WHERE event_id = ?", (event_id,))
    if not rows or not user.sees_regency(rows[0][0]):
        # The same answer for "absent" and "not yours": ids of other regencies are not probed.
        raise Forbidden("no such event in your scope")
    body = json.loads(rows[0][1])
    # Events name households by reference; the registered entitlement maps it back.
    found = store.rows(
        "SELECT household_id FROM c_entitlements WHERE round_id = ? AND household_ref = ?",
        (body.get("round_id"), body.get("household_ref")),
    )
    if found:
        body["household"] = user.household(found[0][0])
    flags = store.rows(
        "SELECT kind, detail FROM anomalies WHERE event_id = ? ORDER BY at", (event_id,)
    )
    return {"event": body, "anomalies": [{"kind": k, "detail": d} for k, d in flags]}


def home_visits(store: CentralStore, user: User, f: Filters) -> list[dict]:
    """Households of a regency not yet collected in the round, by distribution point."""
    if not f.regency:
        raise CentralError("the home-visit list is made per regency")
    check(user, f)
    cond, params = ("AND point = ?", (f.point,)) if f.point else ("", ())
    rows = store.rows(
        "SELECT point, household_id, masked_name, amount, device_id FROM c_entitlements "
        f"WHERE round_id = ? AND regency = ? AND collected_event IS NULL {cond} "
        "ORDER BY point, household_id",
        (f.round_id, f.regency, *params),
    )
    return [
        {
            "point": point,
            "household": user.household(hid),
            "name": (masked or "-") if user.show_ids else "",
            "amount": int(amount),
            "device_id": device_id,
        }
        for point, hid, masked, amount, device_id in rows
    ]
