"""Every error the terminal raises on purpose, under one base, :class:`EdgeError`.

Each start-up failure is one clear line for the technician; each refusal names its reason.
"""

from edge.privacy import mask_id


class EdgeError(Exception):
    """Base of every error the terminal reports to a person."""


class ConfigError(EdgeError):
    """The configuration file is missing, malformed or breaks the schema."""


class ModelError(EdgeError):
    """A model is missing, corrupt, or does not match its manifest."""


class BundleError(EdgeError):
    """An enrolment bundle is unsigned, tampered, expired, foreign or for another model."""


class LedgerError(EdgeError):
    """The ledger cannot be opened or fails verification."""


class DeviceError(EdgeError):
    """A piece of hardware is absent or stopped answering."""


class PayloadError(EdgeError, ValueError):
    """A payload is not JSON, or breaks its schema."""


class CommandRefused(EdgeError):
    """A command that must not run; the message goes to the result topic."""


class AlreadyPaid(LedgerError):
    """An accepted payout for this household and round exists (here or at another terminal)."""

    def __init__(self, paid: dict) -> None:
        self.paid = paid
        where = "here" if paid.get("where") == "local" else f"at {paid.get('device_id')}"
        super().__init__(
            f"household {mask_id(paid.get('household_id'))} already paid for round "
            f"{paid.get('round_id')} {where} ({paid.get('ts')})"
        )


class ClaimError(EdgeError):
    """A QR payload that is not a valid invitation of this programme."""


class EnrolmentError(EdgeError):
    """The enrolment CSV cannot be used at all (missing file or columns)."""


class GalleryError(EdgeError):
    """The gallery file is unreadable, tampered, or made by another model."""


class KeyFileError(EdgeError):
    """A key file is missing, unreadable or of the wrong kind."""


class RegistryError(EdgeError):
    """A device registry is unsigned, tampered, malformed or older than the one installed."""


class BadgeError(EdgeError):
    """A staff badge or reason card that must not be used: forged, expired, malformed."""


class ReleaseError(EdgeError):
    """A release artefact is unsigned, tampered, truncated, or cannot be installed here."""


class CentralError(EdgeError):
    """Central's dashboard side: a manifest, summary or user that cannot be used."""
