"""The claim-to-payout state machine on the real ledger, real QR codes and a scripted face engine.

The face engine here is a small fake that maps a frame's first pixel to a known embedding, so
each test controls exactly who stands in front of the camera. The real engine runs in
test_app.py on real photos.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edge.config import Config
from edge.keys import DeviceIdentity
from edge.ledger.audit import verify_events
from edge.ledger.store import Ledger
from edge.payout.claim import render_claim_png
from edge.payout.flow import Outcome, PayoutFlow
from edge.vision.embedder import fuse

ROUND = "2026-12"
RNG = np.random.default_rng(7)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


# Three people: A and B are recipients of households H1 and H2; C is enrolled nowhere.
PEOPLE = {k: unit(RNG.normal(size=128)) for k in (10, 20, 30)}
POOR = 200  # a face is seen but fails the quality gates


class FakeEngine:
    """Who is in the frame is written in its first pixel; a little noise per frame."""

    model_id = "fake-embedder"

    def __init__(self) -> None:
        self.calls = 0

    def analyse(self, rgb: np.ndarray):
        self.calls += 1
        code = int(rgb[0, 0, 0])
        if code == POOR:
            return SimpleNamespace(
                face=None, quality=SimpleNamespace(ok=False, reasons=["blurred"]), embedding=None
            )
        if code not in PEOPLE:
            return None
        noisy = unit(PEOPLE[code] + RNG.normal(scale=0.02, size=128))
        return SimpleNamespace(
            face=object(), quality=SimpleNamespace(ok=True, reasons=[]), embedding=noisy
        )

    @staticmethod
    def fuse(vectors):
        return fuse(vectors)


class FakeLiveness:
    def __init__(self, live: bool = True) -> None:
        self.live = live
        self.frames = 0
        self.resets = 0

    def reset(self) -> None:
        self.frames = 0
        self.resets += 1

    def update(self, rgb, face, mesh=None) -> None:
        self.frames += 1

    def result(self):
        enough = self.frames >= 3
        return SimpleNamespace(
            score=0.9 if self.live and enough else 0.1,
            live=self.live and enough,
            frames=self.frames,
            signals={} if enough else {"insufficient": 1.0},
        )


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_bundle(round_id: str = ROUND):
    households = {
        hid: SimpleNamespace(
            household_id=hid,
            masked_name="S*** A***",
            regency="3171",
            amount=300_000,
            members=[SimpleNamespace(member_id="m1", role="recipient")],
        )
        for hid in ("3171000000000001", "3171000000000002")
    }
    labels = ["3171000000000001/m1", "3171000000000002/m1"]
    matrix = np.stack([PEOPLE[10], PEOPLE[20]])
    return SimpleNamespace(
        bundle_id="b-test",
        round_id=round_id,
        households=households,
        templates=lambda: (labels, matrix),
    )


H1, H2 = "3171000000000001", "3171000000000002"


def face_frame(code: int) -> np.ndarray:
    frame = np.zeros((16, 16, 3), np.uint8)
    frame[0, 0, 0] = code
    return frame


@pytest.fixture
def qr_frames(tmp_path: Path):
    def make(household_id: str, round_id: str = ROUND) -> np.ndarray:
        path = tmp_path / f"qr-{household_id}-{round_id}.png"
        render_claim_png(household_id, round_id, path)
        bgr = cv2.imread(str(path))
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    return make


@pytest.fixture
def rig(tmp_path: Path):
    identity = DeviceIdentity.load_or_create(tmp_path / "keys")
    ledger = Ledger(tmp_path / "ledger.sqlite", identity, "edge-test-0001", "3171")
    cfg = Config()
    cfg.flow.cooldown_s = 5.0
    cfg.flow.good_frames = 3
    cfg.liveness.min_frames = 3
    clock = Clock()
    liveness = FakeLiveness()
    bundle = make_bundle()
    flow = PayoutFlow(cfg, FakeEngine(), lambda: bundle, ledger, liveness, clock=clock)
    rig = SimpleNamespace(
        flow=flow, ledger=ledger, clock=clock, liveness=liveness, identity=identity, cfg=cfg
    )
    yield rig
    ledger.close()


def feed(rig, frames, step: float = 0.1):
    """Run frames through the flow, advancing the clock; return the decisions taken."""
    decisions = []
    for frame in frames:
        rig.clock.t += step
        d = rig.flow.on_frame(frame)
        if d is not None:
            decisions.append(d)
    return decisions


def test_accept_then_already_paid_and_one_payout_only(rig, qr_frames):
    first = feed(rig, [qr_frames(H1)] + [face_frame(10)] * 3)
    assert [d.outcome for d in first] == [Outcome.ACCEPTED]
    assert first[0].amount == 300_000 and first[0].event["amount"] == 300_000
    assert first[0].score > rig.cfg.vision.match_threshold
    rig.clock.t += 10  # past the cool-down
    second = feed(rig, [qr_frames(H1)])
    assert [d.outcome for d in second] == [Outcome.ALREADY_PAID]
    events = list(rig.ledger.events())
    assert [e["outcome"] for e in events] == ["accepted", "already_paid"]
    assert sum(e["outcome"] == "accepted" for e in events) == 1
    assert verify_events(events, rig.identity.device_public_pem()).ok


def test_same_qr_inside_cooldown_is_ignored(rig, qr_frames):
    qr = qr_frames(H1)
    feed(rig, [qr] + [face_frame(10)] * 3)
    again = feed(rig, [qr] * 5 + [face_frame(10)] * 3)
    assert again == []
    assert rig.ledger.outbox_depth() == 1


def test_someone_else_is_refused_no_match(rig, qr_frames):
    decisions = feed(rig, [qr_frames(H1)] + [face_frame(30)] * 3)
    assert [d.outcome for d in decisions] == [Outcome.NO_MATCH]
    assert decisions[0].score < rig.cfg.vision.match_threshold
    assert rig.ledger.is_paid(H1, ROUND) is None


def test_face_of_another_household_is_flagged(rig, qr_frames):
    decisions = feed(rig, [qr_frames(H1)] + [face_frame(20)] * 3)
    assert [d.outcome for d in decisions] == [Outcome.DUPLICATE_FACE]
    assert rig.ledger.is_paid(H1, ROUND) is None


def test_spoof_is_its_own_outcome(rig, qr_frames):
    rig.liveness.live = False
    decisions = feed(rig, [qr_frames(H1)] + [face_frame(10)] * 3)
    assert [d.outcome for d in decisions] == [Outcome.SPOOF]
    assert decisions[0].event["liveness"] == pytest.approx(0.1)
    assert rig.liveness.resets == 1


def test_claims_checked_before_any_face(rig, qr_frames):
    wrong_round = feed(rig, [qr_frames(H1, "2027-01")])
    stranger = feed(rig, [qr_frames("3171000000000099")])
    assert [d.outcome for d in wrong_round + stranger] == [
        Outcome.WRONG_ROUND,
        Outcome.NOT_ENTITLED,
    ]
    assert rig.flow.engine.calls == 0


def test_malformed_qr_is_refused_and_recorded(rig, tmp_path):
    import qrcode

    img = qrcode.make("https://example.invalid/not-a-claim")
    path = tmp_path / "foreign.png"
    img.save(path)
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    decisions = feed(rig, [rgb])
    assert [d.outcome for d in decisions] == [Outcome.BAD_QR]
    assert decisions[0].event["household_id"] is None


def test_timeout_without_face_and_with_poor_faces(rig, qr_frames):
    empty = feed(rig, [qr_frames(H1)] + [face_frame(0)] * 80)
    rig.clock.t += 10
    poor = feed(rig, [qr_frames(H2)] + [face_frame(POOR)] * 80)
    assert [d.outcome for d in empty] == [Outcome.NO_FACE]
    assert [d.outcome for d in poor] == [Outcome.POOR_QUALITY]
    assert "blurred" in poor[0].reason


def test_payout_at_another_terminal_during_capture(rig, qr_frames):
    feed(rig, [qr_frames(H1), face_frame(10)])
    other = DeviceIdentity.generate()
    with Ledger(rig.ledger.path.parent / "other.sqlite", other, "edge-test-0002", "3171") as remote:
        event = remote.record("accepted", household_id=H1, round_id=ROUND, amount=300_000)
    assert rig.ledger.record_remote_payout(event)
    decisions = feed(rig, [face_frame(10)] * 2)
    assert [d.outcome for d in decisions] == [Outcome.ALREADY_PAID]
    assert [e["outcome"] for e in rig.ledger.events()] == ["already_paid"]


def test_identify_mode_finds_the_household(rig):
    rig.cfg.flow.mode = "identify"
    decisions = feed(rig, [face_frame(20)] * 3)
    assert [d.outcome for d in decisions] == [Outcome.ACCEPTED]
    assert decisions[0].household_id == H2
    # The same face straight after is in cool-down; later it is already paid.
    assert feed(rig, [face_frame(20)] * 3) == []
    rig.clock.t += 10
    later = feed(rig, [face_frame(20)] * 3)
    assert [d.outcome for d in later] == [Outcome.ALREADY_PAID]
    stranger = feed(rig, [face_frame(30)] * 3)
    assert [d.outcome for d in stranger] == [Outcome.NO_MATCH]


def test_paused_terminal_takes_no_claims(rig, qr_frames):
    rig.flow.paused = "clock moved +900 s since it was last trusted"
    assert feed(rig, [qr_frames(H1)] + [face_frame(10)] * 3) == []
    assert rig.ledger.outbox_depth() == 0
    rig.flow.paused = None
    decisions = feed(rig, [qr_frames(H1)] + [face_frame(10)] * 3)
    assert [d.outcome for d in decisions] == [Outcome.ACCEPTED]


def test_every_invitation_code_is_read(tmp_path):
    """Sixty different letters, shown once each: none may need a second try."""
    from edge.demo import qr_frame
    from edge.payout.claim import encode_claim
    from edge.vision.qr import QrReader

    reader = QrReader()
    codes = [encode_claim(f"31710100000{i:05d}", "2026-12") for i in range(60)]
    assert [reader.read(qr_frame(code)) for code in codes] == codes
    assert reader.read(np.full((480, 640, 3), 96, np.uint8)) is None


def test_too_few_frames_for_liveness_is_poor_quality_not_spoof(rig, qr_frames):
    rig.cfg.liveness.min_frames = 50  # more good frames than the window can give
    frames = [qr_frames(H1)] + [face_frame(10)] * 2 + [face_frame(0)] * 80
    decisions = feed(rig, frames)
    assert [d.outcome for d in decisions] == [Outcome.POOR_QUALITY]
    assert "liveness" in decisions[0].reason
