"""bansos-edge: the face-verification terminal for bansos cash-aid payouts."""

__version__ = "0.1.0"
