"""Plain helpers the tests share; ``conftest.py`` turns the stateful ones into fixtures.

Import from here what a fixture cannot give: constants, the :class:`FakeClock` class when a test
needs a second clock, :func:`pay`, and :func:`unavailable` for things a machine may lack.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from edge.privacy import household_ref

ROOT = Path(__file__).resolve().parent.parent
# Data kept outside the repository (faces, a video, ONNX originals): tests skip without it.
SHARED = Path(os.environ.get("EDGE_SHARED_DIR", ROOT.parent / "shared"))
FACES_DIR = Path(os.environ.get("EDGE_FACES_DIR", SHARED / "faces"))
VIDEO = SHARED / "video" / "short_hamilton_clip.mp4"
MODELS_DIR = Path(os.environ.get("EDGE_MODELS_DIR", ROOT / "models" / "out"))

T0 = 1_796_000_000.0  # 2026-11-30T00:53:20Z: after the clock floor, inside the test rounds
DEVICE_ID = "edge-test-0001"
REGENCY = "3171"
HOUSEHOLD = "KPM-3171-0001-0001"
ROUND = "2026-12"
AMOUNT = 300_000
# The household reference key of the test regency and round (bundles carry the real one).
REF_KEY = bytes(range(32))

# The numbers a real 1:1 match leaves on an accepted event.
MATCH = {
    "score": 0.81234567,
    "threshold": 0.6,
    "liveness": 0.93,
    "model_id": "mobilefacenet-int8-abc",
    "bundle_id": "b-1",
}


class FakeClock:
    """A clock the test sets and moves, callable like ``time.time`` or ``time.monotonic``.

    ``step`` moves it on by that much after each reading (a clock that runs while the code
    works); ``sleep`` is a stand-in for ``time.sleep`` that moves the clock instead of waiting.
    Every reading is kept in ``readings`` so a test can see the clock was consulted.
    """

    def __init__(self, t: float = T0, step: float = 0.0) -> None:
        self.t = float(t)
        self.step = step
        self.readings: list[float] = []
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        now = self.t
        self.readings.append(now)
        self.t += self.step
        return now

    def set(self, t: float) -> None:
        """Jump to ``t`` (seconds since the epoch for a wall clock)."""
        self.t = float(t)

    def advance(self, seconds: float) -> None:
        """Move on (or back, when negative) by ``seconds``."""
        self.t += seconds

    def sleep(self, seconds: float) -> None:
        """``time.sleep`` without the wait: note it and move the clock on."""
        self.sleeps.append(seconds)
        self.t += seconds


def ref_of(household_id: str, round_id: str = ROUND) -> str:
    """The wire reference of a household as the test ledgers (:data:`REF_KEY`) compute it."""
    return household_ref(REF_KEY, round_id, household_id)


def pay(
    ledger,
    household_id: str = HOUSEHOLD,
    round_id: str = ROUND,
    amount: int = AMOUNT,
    **fields,
) -> dict:
    """Record an accepted payout through the real ledger and return its signed event.

    The match numbers default to :data:`MATCH`; pass any of them (or ``extra``) to change them.
    The household's reference is computed with :data:`REF_KEY` unless ``household_ref`` is given.
    """

    ref = fields.pop("household_ref", None) or household_ref(REF_KEY, round_id, household_id)
    return ledger.record(
        "accepted",
        household_id=household_id,
        household_ref=ref,
        round_id=round_id,
        amount=amount,
        **{**MATCH, **fields},
    )


def under_ci() -> bool:
    """True on CI, whose runner (.ci/run) installs every optional tool the tests use."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(what: str, hint: str) -> NoReturn:
    """Skip a test that needs ``what`` on a machine without it; fail on CI, which has it.

    Only for things genuinely outside this package (a Debian binary, an optional extra): a
    missing module or packaged file of this package is a broken install and must fail.
    """
    if under_ci():
        pytest.fail(f"{what}: missing on CI, whose .ci/run installs it ({hint})")
    pytest.skip(f"{what}: not installed ({hint})")


def require_module(name: str, hint: str) -> ModuleType:
    """Import an optional third-party module, or :func:`unavailable` when it is absent."""
    try:
        return importlib.import_module(name)
    except ImportError:
        unavailable(f"Python module {name}", hint)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value.

    For things that happen in another thread or process. ``timeout`` only stops a test that
    would otherwise hang: assert on the returned value, never on how long it took.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)
