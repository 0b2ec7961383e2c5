"""The claim-to-payout state machine on the real ledger, real QR codes and a scripted face engine.

The face engine here is a small fake that maps a frame's first pixel to a known embedding, so
each test controls exactly who stands in front of the camera. The real engine runs in
test_app.py on real photos.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from support import REF_KEY, pay

from edge.config import Config
from edge.enrolment.bundle import Bundle, Household, Member
from edge.ledger.verify import verify_events
from edge.ops.health import ClockPause, ClockReading
from edge.payout.claim import render_claim_png
from edge.payout.decision import Outcome
from edge.payout.flow import PayoutFlow
from edge.vision.embedder import fuse
from edge.vision.liveness import LivenessResult
from edge.vision.pipeline import FaceResult
from edge.vision.quality import QualityReport

ROUND = "2026-12"
RNG = np.random.default_rng(7)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


H1, H2 = "3171000000000001", "3171000000000002"
# Three people: A and B are recipients of households H1 and H2; C is enrolled nowhere.
PEOPLE = {k: unit(RNG.normal(size=128)) for k in (10, 20, 30)}
POOR = 200  # a face is seen but fails the quality gates


def face_result(embedding: np.ndarray | None, reasons: tuple[str, ...] = ()) -> FaceResult:
    """What the real engine returns, with placeholder geometry (the flow never reads it)."""
    return FaceResult(
        face=None,
        quality=QualityReport(ok=embedding is not None, reasons=list(reasons)),
        aligned=np.zeros((112, 112, 3), np.uint8),
        embedding=embedding,
        points=np.zeros((5, 2), np.float32),
        mesh=None if embedding is None else np.zeros((468, 3), np.float32),
    )


class FakeEngine:
    """Who is in the frame is written in its first pixel; a little noise per frame."""

    model_id = "fake-embedder"

    def __init__(self) -> None:
        self.calls = 0

    def analyse(self, rgb: np.ndarray) -> FaceResult | None:
        self.calls += 1
        code = int(rgb[0, 0, 0])
        if code == POOR:
            return face_result(None, ("blurred",))
        if code not in PEOPLE:
            return None
        return face_result(unit(PEOPLE[code] + RNG.normal(scale=0.02, size=128)))

    @staticmethod
    def fuse(vectors):
        return fuse(vectors)


class FakeLiveness:
    def __init__(self, live: bool = True) -> None:
        self.live = live
        self.frames = 0
        self.resets = 0
        self.meshes = 0  # frames that came with the engine's face mesh

    def reset(self) -> None:
        self.frames = 0
        self.resets += 1

    def update(self, rgb, face, mesh=None) -> None:
        self.frames += 1
        self.meshes += mesh is not None

    def result(self) -> LivenessResult:
        enough = self.frames >= 3
        return LivenessResult(
            score=0.9 if self.live and enough else 0.1,
            live=self.live and enough,
            signals={} if enough else {"insufficient": 1.0},
            frames=self.frames,
        )


def make_bundle(
    round_id: str = ROUND, bundle_id: str = "b-test", households: tuple[str, ...] = (H1, H2)
) -> Bundle:
    """A verified bundle as the store hands it out (signing is tested in test_bundle.py)."""
    faces = {H1: PEOPLE[10], H2: PEOPLE[20]}
    now = datetime.now(UTC)
    return Bundle(
        bundle_id=bundle_id,
        round_id=round_id,
        point_name="Kantor Pos Uji",
        regency="3171",
        issued_at=now,
        valid_from=now - timedelta(days=1),
        valid_until=now + timedelta(days=1),
        model_id=FakeEngine.model_id,
        model_sha256="0" * 64,
        device_id="edge-test-0001",
        households={
            hid: Household(hid, "S*** A***", "3171", 300_000, [Member("m1", "recipient")])
            for hid in households
        },
        _labels=[f"{hid}/m1" for hid in households],
        _matrix=np.stack([faces[hid] for hid in households]),
        ref_key=REF_KEY,
    )


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
def rig(identity, ledger, clock):
    cfg = Config()
    cfg.flow.cooldown_s = 5.0
    cfg.flow.good_frames = 3
    cfg.liveness.min_frames = 3
    # One fake clock for the flow's cool-down and the ledger's event times: time passes for both.
    liveness = FakeLiveness()
    bundles = SimpleNamespace(current=make_bundle())
    flow = PayoutFlow(cfg, FakeEngine(), lambda: bundles.current, ledger, liveness, clock=clock)
    return SimpleNamespace(
        flow=flow,
        ledger=ledger,
        clock=clock,
        liveness=liveness,
        identity=identity,
        cfg=cfg,
        bundles=bundles,
    )


def feed(rig, frames, step: float = 0.1):
    """Run frames through the flow, advancing the clock; return the decisions taken."""
    decisions = []
    for frame in frames:
        rig.clock.advance(step)
        d = rig.flow.on_frame(frame)
        if d is not None:
            decisions.append(d)
    return decisions


def test_accept_then_already_paid_and_one_payout_only(rig, qr_frames):
    first = feed(rig, [qr_frames(H1)] + [face_frame(10)] * 3)
    assert [d.outcome for d in first] == [Outcome.ACCEPTED]
    assert first[0].amount == 300_000 and first[0].event["amount"] == 300_000
    assert first[0].score > rig.cfg.vision.match_threshold
    rig.clock.advance(10)  # past the cool-down
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
    assert rig.liveness.meshes == 3  # the engine's mesh is reused, not recomputed


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
    assert decisions[0].event["household_ref"] is None


def test_timeout_without_face_and_with_poor_faces(rig, qr_frames):
    empty = feed(rig, [qr_frames(H1)] + [face_frame(0)] * 80)
    rig.clock.advance(10)
    poor = feed(rig, [qr_frames(H2)] + [face_frame(POOR)] * 80)
    assert [d.outcome for d in empty] == [Outcome.NO_FACE]
    assert [d.outcome for d in poor] == [Outcome.POOR_QUALITY]
    assert "blurred" in poor[0].reason


def test_payout_at_another_terminal_during_capture(rig, qr_frames, make_identity, make_ledger):
    feed(rig, [qr_frames(H1), face_frame(10)])
    other = make_identity()
    remote = make_ledger(rig.ledger.path.parent / "other.sqlite", other, "edge-test-0002")
    event = pay(remote, H1, ROUND, 300_000)
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
    rig.clock.advance(10)
    later = feed(rig, [face_frame(20)] * 3)
    assert [d.outcome for d in later] == [Outcome.ALREADY_PAID]
    stranger = feed(rig, [face_frame(30)] * 3)
    assert [d.outcome for d in stranger] == [Outcome.NO_MATCH]


def test_paused_terminal_takes_no_claims(rig, qr_frames):
    rig.flow.pause("clock moved +900 s since it was last trusted")
    assert feed(rig, [qr_frames(H1)] + [face_frame(10)] * 3) == []
    assert rig.ledger.outbox_depth() == 0
    rig.flow.pause(None)
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


def test_bundle_replaced_during_a_capture(rig, qr_frames):
    """The capture keeps the bundle its claim was checked against; the next claim sees the new
    one. (It used to re-read the bundle mid-capture and raise KeyError out of on_frame.)"""
    feed(rig, [qr_frames(H1), face_frame(10)])
    assert rig.flow.busy
    rig.bundles.current = make_bundle(bundle_id="b-next", households=(H2,))
    decisions = feed(rig, [face_frame(10)] * 2)
    assert [d.outcome for d in decisions] == [Outcome.ACCEPTED]
    assert decisions[0].event["bundle_id"] == "b-test"
    rig.clock.advance(10)
    later = feed(rig, [qr_frames(H1)])
    assert [d.outcome for d in later] == [Outcome.NOT_ENTITLED]
    assert later[0].event["bundle_id"] == "b-next"


def test_identify_capture_keeps_its_bundle(rig):
    rig.cfg.flow.mode = "identify"
    feed(rig, [face_frame(20)])
    assert rig.flow.busy
    rig.bundles.current = make_bundle(bundle_id="b-next", households=(H1,))
    decisions = feed(rig, [face_frame(20)] * 2)
    assert [d.outcome for d in decisions] == [Outcome.ACCEPTED]
    assert decisions[0].household_id == H2 and decisions[0].event["bundle_id"] == "b-test"


class CropBox:
    """A CropSink that keeps what it was handed."""

    def __init__(self) -> None:
        self.kept: list[tuple[str, np.ndarray]] = []

    def keep(self, event_id: str, crop: np.ndarray) -> None:
        self.kept.append((event_id, crop))


def test_the_crop_of_a_decided_capture_goes_to_the_sink(rig, qr_frames):
    box = CropBox()
    rig.flow.crops = box
    decisions = feed(rig, [qr_frames(H1)] + [face_frame(10)] * 3)
    rig.clock.advance(10)
    decisions += feed(rig, [qr_frames("3171000000000099")])  # refused before any face
    assert [d.outcome for d in decisions] == [Outcome.ACCEPTED, Outcome.NOT_ENTITLED]
    assert [eid for eid, _ in box.kept] == [decisions[0].event["event_id"]]
    assert box.kept[0][1].shape == (112, 112, 3)


def test_no_crop_is_kept_without_a_sink(rig, qr_frames):
    feed(rig, [qr_frames(H1), face_frame(10)])
    assert rig.flow._capture.crop is None


def test_debug_crops_are_private_files_and_failures_do_not_raise(tmp_path, caplog):
    from edge.payout.debug_crops import DebugCrops

    crops = DebugCrops(tmp_path / "debug")
    crops.keep("e-1", np.full((112, 112, 3), 200, np.uint8))
    path = tmp_path / "debug" / "e-1.png"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "debug").stat().st_mode & 0o777 == 0o700
    assert cv2.imread(str(path)).shape == (112, 112, 3)
    (tmp_path / "blocked").write_text("a file where the folder should be")
    DebugCrops(tmp_path / "blocked").keep("e-2", np.zeros((112, 112, 3), np.uint8))
    assert "not kept" in caplog.text


class FakeGuard:
    """A ClockGuard whose verdict the test sets."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.checks = 0

    def check(self) -> ClockReading:
        self.checks += 1
        ok = self.reason is None
        return ClockReading(ok, 1.8e9, self.reason or "ok", False, None)


def test_clock_pause_pauses_between_captures_only(rig, qr_frames):
    guard = FakeGuard()
    pause = ClockPause(guard, rig.flow)
    guard.reason = "clock moved +900 s since it was last trusted"
    feed(rig, [qr_frames(H1), face_frame(10)])
    assert pause.check() is None and guard.checks == 0  # a capture is running
    assert [d.outcome for d in feed(rig, [face_frame(10)] * 2)] == [Outcome.ACCEPTED]
    assert not pause.check().ok
    assert rig.flow.paused == guard.reason and pause.reason == guard.reason
    rig.clock.advance(10)
    assert feed(rig, [qr_frames(H2)] + [face_frame(20)] * 3) == []
    guard.reason = None
    assert pause.check().ok and rig.flow.paused is None
    assert [d.outcome for d in feed(rig, [qr_frames(H2)] + [face_frame(20)] * 3)] == [
        Outcome.ACCEPTED
    ]
