"""Sub-commands (filled in by the capability that owns them)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to the ``edge`` parser."""
