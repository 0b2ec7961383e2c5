"""The daemon's own command actions: what a verified command does on this terminal.

:class:`edge.mqtt.processor.CommandProcessor` checks a command and then calls the action
registered under its name with the command's args; the reporter adds ``health`` and
``resend``, the OTA agent ``update``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge.errors import CommandRefused
from edge.mqtt.remote_config import config_action
from edge.ports import Reprinter

Action = Callable[[dict], dict]


def bundle_action(bundle_store) -> Action:
    """The ``bundle`` action for an ``edge.enrolment.store.BundleStore``: install, or refuse and keep
    the last good bundle (a BundleError becomes a refusal on the result topic)."""
    from edge.errors import BundleError

    def install(args: dict) -> dict:
        try:
            bundle = bundle_store.install(args["blob"])
        except BundleError as exc:
            raise CommandRefused(f"bundle refused: {exc}") from exc
        return {
            "bundle_id": bundle.bundle_id,
            "round_id": bundle.round_id,
            "households": len(bundle.households),
        }

    return install


def terminal_actions(
    cfg: Any, bundle_store: Any, desk: Reprinter, ledger: Any = None
) -> dict[str, Action]:
    """The daemon's own command actions (the reporter adds ``health`` and ``resend``).

    ``bundle`` installs a bundle into ``bundle_store`` (see :func:`bundle_action`); ``config``
    applies bounded changes to the live ``cfg`` (:mod:`edge.mqtt.remote_config`: within the
    installed bundle's signed ``limits``, never laxer than ``cfg`` is now, at start-up) and,
    with a ``ledger``, records each applied change as a signed ``config`` event first (so it is
    reported like every event); ``reprint`` prints a copy of the receipt of ``event_id``,
    marked as a reprint, through ``desk`` (a ReceiptDesk).
    """

    def reprint(args: dict) -> dict:
        return {"printed": bool(desk.reprint(args["event_id"]))}

    return {
        "bundle": bundle_action(bundle_store),
        "config": config_action(cfg, bundle_store, ledger),
        "reprint": reprint,
    }
