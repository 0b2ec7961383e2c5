"""The terminal as a service: who it is, where its state lives, what it logs and keeps."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge.config.base import ConfigPath, Section, default_state_dir


class DeviceConfig(Section):
    """This terminal and where it keeps its state."""

    id: str = Field(
        default="edge-demo-0001",
        pattern=r"^[a-z0-9][a-z0-9-]{2,62}$",
        description="Terminal id; MQTT topics, events and receipts carry it",
    )
    regency: str = Field(
        default="3171",
        pattern=r"^[0-9]{4}$",
        description="Four-digit BPS regency code (kabupaten/kota) of the distribution point",
    )
    point_name: str = Field(
        default="Titik Salur Demo", max_length=64, description="Distribution point, on receipts"
    )
    state_dir: ConfigPath = Field(
        default_factory=default_state_dir,
        description="Ledger, keys, bundles and pending receipts live here "
        "(default: $EDGE_STATE_DIR, else var)",
    )
    max_clock_skew_s: float = Field(
        default=300.0,
        gt=0,
        description="Refuse to sign events when the clock is further off than this from a trusted time",
    )


class RetentionConfig(Section):
    """How long personal data stays on the terminal (``edge prune``, daily by systemd timer).

    Nothing of the round of an installed bundle is pruned, nor any event central has not
    acknowledged, nor a payout whose receipt is not printed yet.
    """

    ledger_days: int = Field(
        default=90,
        ge=1,
        description="Events acknowledged by central and older than this lose their content "
        "(the chain keeps hash and signature); payouts of past rounds are deleted",
    )
    synced_days: int = Field(
        default=30,
        ge=1,
        description="Payouts reported by other terminals (claims sync) are kept this long",
    )
    debug_crops_days: int = Field(
        default=7, ge=1, description="Face crops of flow.store_debug_images are kept this long"
    )


class LoggingConfig(Section):
    """What the daemon logs."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged"
    )
