"""Error hierarchy: each start-up failure is one clear line for the technician."""


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
