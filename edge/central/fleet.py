"""Releases across the fleet, as the dashboard shows a rollout: within the user's scope.

The health monitor (:mod:`edge.central.health`) keeps each terminal's running ``version`` and
the update in hand (``update_version``, ``update_state``, ``update_error``) in ``c_terminals``.
This module sums them: terminals per running version, and the terminals whose last update went
wrong. Like :mod:`edge.central.queries`, every query carries the user's scope in its SQL.
"""

from __future__ import annotations

from edge.central import queries as q
from edge.central.auth import User
from edge.central.store import CentralStore

# Update verdicts that need a look: the release did not install (``failed``), its health check
# failed and the terminal went back (``rolled_back``), or it could not go back either
# (``rollback_refused``: a technician is needed, docs/operations.md).
TROUBLE = ("failed", "rolled_back", "rollback_refused")
# The versions list of a national user is short (a few releases), the trouble list need not be.
TROUBLE_LIMIT = 200


def versions(store: CentralStore, user: User, f: q.Filters) -> dict:
    """Running versions in the place ``f`` names and the terminals with a troubled update.

    ``versions``: ``[{"version", "terminals"}]``, most terminals first (``None``: the terminal
    has not named its version yet); ``updating``: terminals with an update under way;
    ``trouble``: up to ``TROUBLE_LIMIT`` terminals whose update ended in one of ``TROUBLE``.
    """
    q.check(user, f)
    scope, sp = user.where()
    cond, params = q._place(f)
    rows = store.rows(
        f"SELECT version, COUNT(*) FROM c_terminals WHERE {scope} AND {cond} GROUP BY version",
        (*sp, *params),
    )
    counted = sorted(rows, key=lambda r: (-int(r[1]), r[0] is None, r[0] or ""))
    marks = ", ".join("?" for _ in TROUBLE)
    [(updating,)] = store.rows(
        f"SELECT COUNT(*) FROM c_terminals WHERE {scope} AND {cond} AND update_state IN "
        "('downloading', 'staged', 'requested')",
        (*sp, *params),
    )
    trouble = store.rows(
        "SELECT device_id, regency, version, update_version, update_state, update_error "
        f"FROM c_terminals WHERE {scope} AND {cond} AND update_state IN ({marks}) "
        "ORDER BY regency, device_id LIMIT ?",
        (*sp, *params, *TROUBLE, TROUBLE_LIMIT),
    )
    keys = ("device_id", "regency", "version", "update_version", "state", "error")
    return {
        "versions": [{"version": v, "terminals": int(n)} for v, n in counted],
        "updating": int(updating or 0),
        "trouble": [dict(zip(keys, r, strict=True)) for r in trouble],
    }
