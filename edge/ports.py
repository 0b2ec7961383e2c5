"""The seams between the payout flow, the daemon and the parts they drive, as typing Protocols.

Each protocol names only what its caller uses, so the real part needs no base class and a test
fake is a small class with the same fields and methods. Read-only fields are declared as
properties: a dataclass field, a plain attribute or a property all satisfy them.

Who uses what:

- ``edge.payout.flow.PayoutFlow``: ``Engine``, ``Liveness``, ``BundleProvider``,
  ``DecisionLedger`` and an optional ``CropSink``.
- ``edge.payout.receipts.ReceiptDesk``: ``Printer``, ``ReceiptLedger``, ``NameLookup``.
- ``edge.app.App``: all of them, plus ``Camera`` (read by ``CameraStream``) and ``Signals``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from edge.devices.camera import Frame
    from edge.devices.receipt import Receipt, Refusal
    from edge.enrolment.badges import OverridePolicy
    from edge.ledger.schema import ReceiptState


# -- face engine ------------------------------------------------------------------------------


class Quality(Protocol):
    """The quality gates' verdict on one face."""

    @property
    def reasons(self) -> Sequence[str]:
        """Why the face failed the gates (empty when it passed)."""
        ...


class FaceAnalysis(Protocol):
    """One frame's main face, as ``edge.vision.pipeline.FaceResult`` gives it."""

    @property
    def face(self) -> Any:
        """The detection (box and keypoints) liveness reads."""
        ...

    @property
    def quality(self) -> Quality: ...

    @property
    def aligned(self) -> np.ndarray:
        """The aligned 112x112 RGB crop the embedding was made from."""
        ...

    @property
    def embedding(self) -> np.ndarray | None:
        """L2-normalised template, or None when the quality gates failed."""
        ...

    @property
    def mesh(self) -> np.ndarray | None:
        """The face mesh when it ran (liveness reuses it), else None."""
        ...


class Engine(Protocol):
    """The face pipeline: analyse a frame, fuse a capture's templates."""

    @property
    def model_id(self) -> str: ...

    def analyse(self, rgb: np.ndarray) -> FaceAnalysis | None:
        """The main face of an RGB frame, or None when there is none."""
        ...

    def fuse(self, vectors: Sequence[np.ndarray]) -> np.ndarray:
        """One normalised template from several."""
        ...


# -- liveness ---------------------------------------------------------------------------------


class LivenessVerdict(Protocol):
    """The fused liveness score of a capture and what it was made of."""

    @property
    def score(self) -> float: ...

    @property
    def live(self) -> bool: ...

    @property
    def signals(self) -> Mapping[str, float]:
        """Each cue's value; ``insufficient`` when too few good frames were seen."""
        ...


class Liveness(Protocol):
    """Presentation-attack detection over the frames of one capture."""

    @property
    def frames(self) -> int:
        """Good frames seen since the last reset."""
        ...

    def reset(self) -> None: ...

    def update(self, rgb: np.ndarray, face: Any, mesh: np.ndarray | None = None) -> None: ...

    def result(self) -> LivenessVerdict: ...


# -- enrolment bundle -------------------------------------------------------------------------


class Member(Protocol):
    @property
    def member_id(self) -> str: ...

    @property
    def role(self) -> str:
        """``recipient`` or ``representative``."""
        ...


class Household(Protocol):
    @property
    def household_id(self) -> str: ...

    @property
    def masked_name(self) -> str: ...

    @property
    def amount(self) -> int: ...

    @property
    def members(self) -> Sequence[Member]: ...


class Bundle(Protocol):
    """The parts of an ``edge.enrolment.bundle.Bundle`` a payout reads."""

    @property
    def bundle_id(self) -> str: ...

    @property
    def round_id(self) -> str: ...

    @property
    def households(self) -> Mapping[str, Household]: ...

    @property
    def regency(self) -> str: ...

    @property
    def override_policy(self) -> OverridePolicy | None:
        """Central's limits on supervised overrides (None: overrides are off)."""
        ...

    def templates(self) -> tuple[list[str], np.ndarray]:
        """Gallery labels (``household/member``) and their template matrix."""
        ...

    def household_ref(self, household_id: str) -> str | None:
        """The household's pseudonymous reference in this bundle's round (None without a key)."""
        ...


# The bundle to use now (None when none is installed or it expired); e.g. BundleStore.current.
BundleProvider = Callable[[], Bundle | None]

# The masked display name of a household in the active bundle, or None.
NameLookup = Callable[[str], str | None]


# -- ledger -----------------------------------------------------------------------------------


class RecordingLedger(Protocol):
    """Writing a signed decision event: what the payout flow and the override both ask."""

    def record(
        self,
        outcome: str,
        *,
        household_id: str | None = None,
        round_id: str | None = None,
        amount: int | None = None,
        score: float | None = None,
        threshold: float | None = None,
        liveness: float | None = None,
        model_id: str | None = None,
        bundle_id: str | None = None,
        household_ref: str | None = None,
        extra: dict | None = None,
        override: dict | None = None,
    ) -> dict[str, Any]:
        """Write one signed decision event durably and return it (``AlreadyPaid`` on a double)."""
        ...


class DecisionLedger(RecordingLedger, Protocol):
    """What the payout flow asks of the ledger."""

    def is_paid(self, household_id: str, round_id: str, household_ref: str | None = None) -> Any:
        """The payout of this household and round (truthy), or None."""
        ...

    def count_outcomes(
        self, household_id: str, round_id: str, outcomes: tuple[str, ...], since: str | None
    ) -> int:
        """How many recorded decisions of this household and round had one of ``outcomes``."""
        ...


class ReceiptLedger(Protocol):
    """What printing receipts asks of the ledger."""

    def set_receipt(self, event_id: str, status: str) -> None: ...

    def receipt_state(self, event_id: str) -> ReceiptState | None: ...

    def note_interrupted(self, event_id: str) -> ReceiptState: ...

    def receipts_to_print(self) -> list[tuple[dict[str, Any], ReceiptState]]: ...

    def pending_receipts(self) -> list[dict[str, Any]]: ...

    def event(self, event_id: str) -> dict[str, Any] | None: ...

    def household_of(self, event_id: str) -> str | None:
        """The full household id the terminal noted for an event (never in the event)."""
        ...


class Ledger(DecisionLedger, ReceiptLedger, Protocol):
    """The daemon's ledger: decisions, receipts and the outbox depth it reports."""

    def outbox_depth(self) -> int: ...

    def close(self) -> None: ...


# -- devices ----------------------------------------------------------------------------------


class Camera(Protocol):
    """A frame source, read by ``edge.devices.camera_stream.CameraStream`` on its own thread."""

    name: str
    finished: bool

    def open(self) -> None: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...


class Printer(Protocol):
    """A receipt printer (``edge.devices.printer.Printer``)."""

    @property
    def enabled(self) -> bool:
        """False when no printer is configured: receipts stay pending."""
        ...

    def print_receipt(self, r: Receipt, *, reprint: bool = False) -> None: ...

    def print_refusal(self, r: Refusal) -> None: ...

    def close(self) -> None: ...


class Signals(Protocol):
    """LED and buzzer (``edge.devices.signals``)."""

    @property
    def current(self) -> str | None:
        """The pattern shown now."""
        ...

    def show(self, pattern: str) -> None: ...

    def close(self) -> None: ...


# -- what the flow hands on -------------------------------------------------------------------


class CropSink(Protocol):
    """Takes the aligned face crop of a decided capture (only with flow.store_debug_images)."""

    def keep(self, event_id: str, crop: np.ndarray) -> None:
        """Store ``crop`` under the event it belongs to; must not raise."""
        ...


class Reprinter(Protocol):
    """Prints a marked copy of one payout receipt, by event id (the MQTT ``reprint`` command)."""

    def reprint(self, event_id: str) -> bool: ...
