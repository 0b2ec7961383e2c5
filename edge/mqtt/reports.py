"""What a terminal says about itself on the broker: its retained status and its health report.

Both carry the ledger's signed head checkpoint (:func:`edge.events.sign_head`), which proves
a later cut or fork of the chain at central. The reporter publishes them; the app adds its
own part of the health report (model and bundle ids, faults, ...).
"""

from __future__ import annotations

from typing import Any

from edge import __version__
from edge.events import canonical
from edge.ops.health import cpu_temperature


def health_report(
    cfg: Any, ledger: Any, *, ts: str, uptime_s: float, registry_version: int | None
) -> dict:
    """The ``bansos.health/1`` report of this terminal, before the app's fields are added."""
    temperature = cpu_temperature()
    return {
        "schema": "bansos.health/1",
        "device_id": cfg.device.id,
        "regency": cfg.device.regency,
        "ts": ts,
        "boot_session": getattr(ledger, "boot_session", None),
        "uptime_s": round(uptime_s, 1),
        "outbox_depth": int(ledger.outbox_depth()),
        "last_seq": _last_seq(ledger),
        "model_id": None,
        "bundle_id": None,
        "temperature_c": None if temperature is None else round(temperature, 1),
        "faults": [],
        "head": _head(ledger),
        "registry_version": registry_version,
    }


def status_message(
    cfg: Any, ledger: Any, state: str, ts: str, reason: str | None = None, head: bool = True
) -> bytes:
    """The retained ``bansos.status/1`` message (``online``, or ``offline`` with a reason);
    ``head=False`` leaves out the signed head checkpoint (for the will, written in advance)."""
    body: dict[str, Any] = {
        "schema": "bansos.status/1",
        "device_id": cfg.device.id,
        "state": state,
        "ts": ts,
    }
    boot = getattr(ledger, "boot_session", None)
    if boot:
        body["boot_session"] = boot
    checkpoint = _head(ledger) if head else None
    if checkpoint is not None:
        body["head"] = checkpoint
    body["version"] = __version__  # the running release, retained for central
    if reason:
        body["reason"] = reason
    return canonical(body)


def _head(ledger: Any) -> dict | None:
    # The signed head checkpoint (edge.events.sign_head) that proves a later cut or fork.
    signed_head = getattr(ledger, "signed_head", None)
    return signed_head() if signed_head else None


def _last_seq(ledger: Any) -> int | None:
    stats = getattr(ledger, "stats", None)
    return int(stats()["events"]) if stats else None
