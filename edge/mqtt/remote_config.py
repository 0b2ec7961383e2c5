"""What a signed ``config`` command may change on a running terminal, and how far.

A stolen central key, or a mistake at central, must not be able to switch verification off
with one command: ``vision.match_threshold = -1`` lets every stranger match and
``liveness.threshold = 0`` lets every photo through. So:

- only the keys in ``BOUNDS`` may change, each inside a hard range written here;
- the three verification thresholds move only inside a range central signs into the
  installed enrolment bundle (``limits``, see :mod:`edge.enrolment.bundle_body`): no bundle
  range, no remote change;
- they never move the weak way past the calibrated value the terminal started with (the one
  in its config file, set by ``edge calibrate``): a remote command can make a terminal
  stricter, and back, but never laxer than its technician left it;
- ``liveness.enabled`` cannot be changed remotely at all.

Every refusal names the key and the rule, and changes nothing (all or nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edge.errors import CommandRefused


@dataclass(frozen=True)
class Bound:
    """Hard range of one remotely settable key, and which way makes verification stricter."""

    lo: float
    hi: float
    lo_open: bool = False  # lo itself is refused (a threshold of 0 checks nothing)
    stricter: int = 0  # +1: higher is stricter; -1: lower is stricter; 0: no security effect
    signed: bool = False  # needs a range signed into the installed bundle


BOUNDS: dict[str, Bound] = {
    "vision.match_threshold": Bound(0.0, 1.0, lo_open=True, stricter=+1, signed=True),
    # Lower flags more faces as belonging to another household: stricter.
    "vision.duplicate_threshold": Bound(0.0, 1.0, lo_open=True, stricter=-1, signed=True),
    "liveness.threshold": Bound(0.0, 1.0, lo_open=True, stricter=+1, signed=True),
    "flow.cooldown_s": Bound(0.0, 60.0),
    "flow.capture_timeout_s": Bound(0.5, 60.0),
    "mqtt.health_interval_s": Bound(5.0, 3600.0),
}
# Only thresholds and timings may change remotely; identity, keys and broker settings never do.
ALLOWED_CONFIG_KEYS = frozenset(BOUNDS)
NEVER_REMOTE = {"liveness.enabled": "liveness cannot be switched off remotely"}


def check_keys(keys: Any) -> None:
    """Raise CommandRefused unless every key may be set remotely at all."""
    for key in sorted(keys):
        if key in NEVER_REMOTE:
            raise CommandRefused(NEVER_REMOTE[key])
    bad = sorted(set(keys) - ALLOWED_CONFIG_KEYS)
    if bad:
        raise CommandRefused(f"config key not allowed: {', '.join(bad)}")


def floors_of(cfg: Any) -> dict[str, float]:
    """The values of the bounded keys in ``cfg`` now: take them at start-up, from the file."""
    return {key: _get(cfg, key) for key in BOUNDS}


def _get(cfg: Any, key: str) -> Any:
    section, field = key.split(".", 1)
    return getattr(getattr(cfg, section), field)


def check_change(
    key: str,
    value: Any,
    limits: dict[str, tuple[float, float]],
    floors: dict[str, float],
) -> None:
    """Raise CommandRefused when ``key = value`` may not be set remotely; say why."""
    if key in NEVER_REMOTE:
        raise CommandRefused(NEVER_REMOTE[key])
    bound = BOUNDS.get(key)
    if bound is None:
        raise CommandRefused(f"config key not allowed: {key}")
    if type(value) not in (int, float) or not math.isfinite(value):
        raise CommandRefused(f"bad value for {key}: must be a finite number")
    if bound.stricter > 0 and value <= 0:
        raise CommandRefused(f"{key} = {value:g} would switch verification off: refused")
    low_ok = value > bound.lo if bound.lo_open else value >= bound.lo
    if not low_ok or value > bound.hi:
        raise CommandRefused(f"{key} = {value:g} is outside {bound.lo:g}..{bound.hi:g}")
    if bound.signed:
        if key not in limits:
            raise CommandRefused(
                f"{key} has no range signed by central in the installed bundle: not changed"
            )
        lo, hi = limits[key]
        if not lo <= value <= hi:
            raise CommandRefused(
                f"{key} = {value:g} is outside the range central signed ({lo:g}..{hi:g})"
            )
    floor = floors.get(key)
    if floor is not None and bound.stricter * (value - floor) < 0:
        side = "below" if bound.stricter > 0 else "above"
        raise CommandRefused(
            f"{key} = {value:g} is {side} the calibrated {floor:g} in the config file: "
            "only a technician may loosen it"
        )


def apply_config_changes(
    cfg: Any,
    changes: dict[str, Any],
    *,
    limits: dict[str, tuple[float, float]] | None = None,
    floors: dict[str, float] | None = None,
    record: Any = None,
) -> dict:
    """Apply bounded ``section.key`` changes to a live Config, all or nothing.

    ``limits`` are the signed ranges of the installed bundle (none: thresholds stay put);
    ``floors`` the calibrated values (default: the live values, so nothing gets laxer).
    Every value is checked (:func:`check_change`), then validated on a copy (the config
    schema validates assignments and rules across sections), so a bad value leaves the live
    config untouched. ``record(changed)``, when given, is called before the live config
    changes (the ledger's signed ``config`` event); if it raises, nothing is applied.
    Returns ``{"changed": {key: [old, new]}}``.
    """
    floors = floors_of(cfg) if floors is None else floors
    check_keys(changes)
    for key in sorted(changes):
        check_change(key, changes[key], limits or {}, floors)
    trial = cfg.model_copy(deep=True)
    for key, value in changes.items():
        section, field = key.split(".", 1)
        try:
            setattr(getattr(trial, section), field, value)
        except ValueError as exc:
            raise CommandRefused(f"bad value for {key}: {str(exc).splitlines()[0]}") from exc
    from edge.config import revalidate
    from edge.errors import ConfigError

    try:
        # A key's own section is checked on assignment; rules across sections only here.
        revalidate(trial, "config command")
    except ConfigError as exc:
        raise CommandRefused(" ".join(str(exc).split())) from exc
    changed = {key: [_get(cfg, key), value] for key, value in changes.items()}
    if record is not None:
        record(changed)
    for key, value in changes.items():
        section, field = key.split(".", 1)
        setattr(getattr(cfg, section), field, value)
    return {"changed": changed}


def config_action(cfg: Any, bundle_store: Any, ledger: Any = None):
    """The daemon's ``config`` command action.

    Bounded changes to the live ``cfg``: within the installed bundle's signed ``limits``,
    never laxer than ``cfg`` is now (at start-up, from the config file). With a ``ledger``,
    each applied change is first recorded as a signed ``config`` event, reported like every
    event; when that fails nothing changes.
    """
    floors = floors_of(cfg)  # the calibrated values from the config file

    def configure(args: dict) -> dict:
        current = getattr(bundle_store, "current", None)
        bundle = current() if current else None
        record = None
        if ledger is not None:

            def record(changed: dict) -> None:
                ledger.record_config(
                    changed, command_id=args.get("command_id"), counter=args.get("counter")
                )

        return apply_config_changes(
            cfg,
            args["set"],
            limits=getattr(bundle, "limits", None) or {},
            floors=floors,
            record=record,
        )

    return configure
