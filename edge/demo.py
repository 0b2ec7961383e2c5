"""`make run`: the terminal on its embedded defaults, with a scripted camera feed.

Sets up a pilot in ``var/demo``: a central key, a device identity, an enrolment bundle signed and
encrypted for this device, and a folder of camera frames (invitation QR codes, faces, empty
frames). Then it runs the real daemon (`edge.app.App`) over that folder with mock GPIO and a
printer writing ESC/POS bytes to a file, and prints each decision, its LED pattern and receipt.

The demo face is NASA's public-domain astronaut portrait inside scikit-image. With the team's
material beside the checkout (../shared), a second part runs a real video of a live face with
liveness on, and a still photo held up in front of the camera, which liveness must refuse.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np

from edge.app import App
from edge.config import Config
from edge.config.base import PROJECT_ROOT
from edge.devices.receipt import render_text
from edge.enrolment.badges import OverridePolicy, issue_badge, reason_text
from edge.enrolment.bundle import BundleSpec, Household, Member, build_bundle
from edge.enrolment.refkeys import ref_key_for
from edge.enrolment.store import BundleStore
from edge.events import is_payout
from edge.keys import DeviceIdentity, generate_central_key, load_central_private_key
from edge.ledger.verify import verify_events
from edge.payout.claim import encode_claim
from edge.payout.decision import Decision
from edge.privacy import mask_id, mask_name
from edge.vision.pipeline import FaceEngine

log = logging.getLogger("edge.demo")

ROUND = "2026-12"
AMOUNT = 300_000
FPS = 10.0
STILL_PHOTO = "facerec__kit_harington/john1.jpeg"
SHARED = Path(os.environ.get("EDGE_SHARED_DIR", PROJECT_ROOT.parent / "shared"))
ASTRONAUT_HH, SECOND_HH, VIDEO_HH, STILL_HH, ELDER_HH = (
    "3171010000000001",
    "3171010000000002",
    "3171010000000003",
    "3171010000000004",
    "3171010000000005",
)
# Central's limits on supervised overrides at the demo terminal (signed into the bundle).
DEMO_POLICY = OverridePolicy(
    roles=("officer", "supervisor"),
    max_per_staff_per_day=5,
    max_per_terminal_per_round=10,
    max_share=0.1,
)


def letterbox(rgb: np.ndarray, size=(640, 480)) -> np.ndarray:
    """Place an image on a grey 640x480 canvas, as a camera would see it."""
    w, h = size
    scale = min(w / rgb.shape[1], h / rgb.shape[0], 1.0)
    img = cv2.resize(rgb, (int(rgb.shape[1] * scale), int(rgb.shape[0] * scale)))
    canvas = np.full((h, w, 3), 96, np.uint8)
    y, x = (h - img.shape[0]) // 2, (w - img.shape[1]) // 2
    canvas[y : y + img.shape[0], x : x + img.shape[1]] = img
    return canvas


def qr_frame(text: str) -> np.ndarray:
    """An invitation letter with its QR code held up to the camera."""
    import qrcode

    qr = qrcode.QRCode(border=4, box_size=8)
    qr.add_data(text)
    img = np.asarray(qr.make_image().convert("RGB"), dtype=np.uint8)
    return letterbox(img)


class FrameScript:
    """Writes the camera feed: each shot is one image file hard-linked for every frame."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.n = 0
        folder.mkdir(parents=True)

    def shot(self, rgb: np.ndarray, frames: int) -> None:
        first = self.folder / f"{self.n:05d}.jpg"
        cv2.imwrite(
            str(first), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
        )
        self.n += 1
        for _ in range(frames - 1):
            os.link(first, self.folder / f"{self.n:05d}.jpg")
            self.n += 1

    def pause(self, seconds: float) -> None:
        self.shot(np.full((480, 640, 3), 96, np.uint8), int(seconds * FPS))


def astronaut() -> np.ndarray:
    from skimage import data

    return letterbox(data.astronaut())


def shared_photo(rel: str) -> np.ndarray | None:
    path = SHARED / "faces" / rel
    bgr = cv2.imread(str(path)) if path.is_file() else None
    return None if bgr is None else letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def video_frames(first: int, last: int, step: int = 1) -> list[np.ndarray]:
    """Frames ``first``..``last`` of the real clip (in frames 90-210 the face is frontal)."""
    path = SHARED / "video" / "short_hamilton_clip.mp4"
    cap = cv2.VideoCapture(str(path))
    frames = []
    index = 0
    while index <= last:
        ok, bgr = cap.read()
        if not ok:
            break
        if index >= first and (index - first) % step == 0:
            frames.append(letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        index += 1
    cap.release()
    return frames


def template(engine: FaceEngine, images: list[np.ndarray]) -> np.ndarray:
    vectors = [v for v in (engine.embed(img) for img in images) if v is not None]
    if not vectors:
        raise SystemExit("demo: no usable face in the enrolment photos")
    return engine.fuse(vectors)


class StaffView:
    """Listens to the daemon's decisions and prints what staff would see and hear."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.decisions: list[Decision] = []
        app.on_decision(self)

    def __call__(self, decision: Decision) -> None:
        self.decisions.append(decision)
        hid = mask_id(decision.household_id) if decision.household_id else "-"
        figures = f"score {decision.score}" if decision.score is not None else ""
        if decision.liveness is not None:
            figures += f"  liveness {decision.liveness}"
        print(f"\n  >> {decision.outcome.upper():<15} household {hid}  {figures}")
        pattern = self.app.signals.current
        print(f"     reason: {decision.reason};  LED/buzzer pattern: {pattern}")
        receipt = self.app.desk.last_receipt
        block = decision.event.get("override") or {}
        if block:
            staff = " + ".join(s["staff_id"] for s in block.get("staff", [])) or "-"
            print(f"     override: staff {staff}, reason {block.get('reason')}, overrides the")
            print(f"     {block.get('refusal')} event {block.get('overrides')}")
            if block.get("refused"):
                print(f"     refused: {block['refused']}")
        if is_payout(decision.outcome) and receipt is not None:
            print("     receipt:")
            for line in render_text(receipt).splitlines():
                print("       | " + line)


def build_pilot(root: Path, engine: FaceEngine, with_shared: bool) -> tuple[Path, dict]:
    """Central key, device identity and an installed bundle; returns (state dir, photos)."""
    state = root / "state"
    central_pub = generate_central_key(root / "central" / "central_private.pem")
    (state / "keys").mkdir(parents=True)
    (state / "keys" / "central_public.pem").write_bytes(central_pub)
    identity = DeviceIdentity.load_or_create(state / "keys")
    photos = {ASTRONAUT_HH: astronaut()}
    # Without ../shared the second household has no usable enrolment photo (its recipient would
    # have to re-enrol): a claim on its letter can match nobody in it.
    people: dict[str, list[np.ndarray | None]] = {
        ASTRONAUT_HH: [photos[ASTRONAUT_HH]],
        SECOND_HH: [],
        # Enrolled long ago: the camera can no longer use the face (the override's case).
        ELDER_HH: [],
    }
    if with_shared:
        people[SECOND_HH] = [shared_photo("facerec__obama/obama.jpg")]
        # The live recipient is enrolled from a portrait plus two early frames of the clip; the
        # demo then verifies on later frames of the same clip.
        people[VIDEO_HH] = [shared_photo("facerec__lin_manuel_miranda/lin-manuel-miranda.png")]
        people[VIDEO_HH] += video_frames(90, 100, 10)
        people[STILL_HH] = [shared_photo(STILL_PHOTO)]
    households, labels, vectors = [], [], []
    for i, (hid, found) in enumerate(people.items()):
        images = [p for p in found if p is not None]
        households.append(
            Household(
                household_id=hid,
                masked_name=mask_name(f"WARGA DEMO {chr(65 + i)}"),
                regency="3171",
                amount=AMOUNT,
                members=[Member(member_id="m1", role="recipient")],
            )
        )
        if images:
            labels.append(f"{hid}/m1")
            vectors.append(template(engine, images))
    now = datetime.now(UTC)
    spec = BundleSpec(
        device_id=Config().device.id,
        round_id=ROUND,
        point_name="Kantor Pos Demo",
        regency="3171",
        model_id=engine.model_id,
        model_sha256=engine.model_sha256,
        valid_from=now - timedelta(days=1),
        valid_until=now + timedelta(days=30),
        ref_key=ref_key_for(root / "central" / "ref_keys", "3171", ROUND),
    )
    blob = build_bundle(
        spec,
        households,
        labels,
        np.stack(vectors),
        central_key=load_central_private_key(root / "central" / "central_private.pem"),
        device_bundle_public=identity.bundle_public_bytes(),
        override_policy=DEMO_POLICY,
    )
    store = BundleStore(state, central_pub, identity, engine.model_id, engine.model_sha256)
    store.install(blob)
    # Central keeps what it sent: the dashboard registers the bundle's entitlements from it.
    (root / "central" / "bundle.json").write_bytes(blob)
    return state, photos


def staff_badges(root: Path) -> list[str]:
    """Two staff badges central signed for the demo regency (an officer and a supervisor)."""
    key = load_central_private_key(root / "central" / "central_private.pem")
    return [
        issue_badge(key, "PTG-0101", "officer", "3171"),
        issue_badge(key, "PTG-0202", "supervisor", "3171"),
    ]


def override_script(s: FrameScript, badges: list[str]) -> None:
    """A recipient whose face the camera cannot use, then two staff badges and a reason card."""
    s.shot(qr_frame(encode_claim(ELDER_HH, ROUND)), 4)
    s.pause(7)  # no usable face in the capture window: no_face
    for card in [*badges, reason_text("elderly")]:
        s.shot(qr_frame(card), 6)  # each card is held up for a moment, then put away
        s.pause(2)


def photo_script(folder: Path, photos: dict, badges: list[str] | None = None) -> None:
    face = photos[ASTRONAUT_HH]
    s = FrameScript(folder)
    s.pause(1)
    s.shot(qr_frame(encode_claim(ASTRONAUT_HH, ROUND)), 4)  # claim: household A
    s.shot(face, 25)  # the recipient
    s.pause(3)
    s.shot(qr_frame(encode_claim(ASTRONAUT_HH, ROUND)), 4)  # the same letter again
    s.pause(3)
    s.shot(qr_frame(encode_claim(SECOND_HH, ROUND)), 4)  # someone else's letter
    s.shot(face, 25)
    s.pause(3)
    s.shot(qr_frame("https://example.invalid/promo"), 4)  # not an invitation
    s.pause(3)
    s.shot(qr_frame(encode_claim(ASTRONAUT_HH, "2026-11")), 4)  # last month's letter
    s.pause(2)
    if badges:
        override_script(s, badges)


def video_script(folder: Path) -> None:
    s = FrameScript(folder)
    s.pause(1)
    s.shot(qr_frame(encode_claim(VIDEO_HH, ROUND)), 4)
    for frame in video_frames(110, 210):
        s.shot(frame, 1)
    s.pause(3)
    s.shot(qr_frame(encode_claim(STILL_HH, ROUND)), 4)
    still = shared_photo(STILL_PHOTO)
    if still is not None:
        s.shot(still, 40)  # a printed photo held still in front of the camera
    s.pause(2)


def demo_config(
    state: Path, frames: Path, *, liveness: bool, models_dir: str | Path | None = None
) -> Config:
    """The embedded defaults, pointed at a pilot's state and a scripted camera folder."""
    cfg = Config()
    if models_dir:
        cfg.models.dir = Path(models_dir)
    cfg.device.state_dir = state
    cfg.bundle.central_public_key = state / "keys" / "central_public.pem"
    cfg.camera.kind, cfg.camera.source, cfg.camera.fps = "folder", str(frames), FPS
    # A scripted feed must not lose its few QR frames to a slow first inference.
    cfg.camera.queue_size = 16
    cfg.flow.cooldown_s = 2.0
    cfg.liveness.enabled = liveness
    return cfg


def run_part(
    title: str, state: Path, frames: Path, liveness: bool, dashboard=None
) -> list[Decision]:
    print(f"\n=== {title} ===")
    app = App(demo_config(state, frames, liveness=liveness))
    view = StaffView(app)
    if dashboard is not None:
        # In place of the broker (mqtt is off in the demo): each decision's event goes to
        # central as soon as it is in the ledger, and the open dashboard shows it.
        app.on_decision(lambda _decision: dashboard.follow(state / "ledger.sqlite"))
    app.run()
    return view.decisions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.demo", description=__doc__)
    parser.add_argument("--dir", default="var/demo", help="where the demo pilot lives (wiped)")
    parser.add_argument("--no-shared", action="store_true", help="ignore ../shared")
    parser.add_argument("--no-dashboard", action="store_true", help="do not serve the dashboard")
    parser.add_argument("--port", type=int, default=8080, help="dashboard port (default 8080)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    with_shared = not args.no_shared and (SHARED / "video" / "short_hamilton_clip.mp4").is_file()
    engine = FaceEngine.from_config(Config())
    state, photos = build_pilot(root, engine, with_shared)
    dashboard = None
    if not args.no_dashboard:
        from edge.central.demo import start_demo_dashboard

        device_pem = DeviceIdentity.load_or_create(state / "keys").device_public_pem()
        dashboard = start_demo_dashboard(root, Config().device.id, device_pem, args.port)
    photo_script(root / "frames-photo", photos, staff_badges(root))
    decisions = run_part(
        "Part 1: a photo as the face (liveness OFF, since a still photo must fail it)",
        state,
        root / "frames-photo",
        liveness=False,
        dashboard=dashboard,
    )
    if with_shared:
        video_script(root / "frames-video")
        decisions += run_part(
            "Part 2: a real video of a live face, then a still photo (liveness ON)",
            state,
            root / "frames-video",
            liveness=True,
            dashboard=dashboard,
        )
    else:
        print("\n(../shared not found: the liveness part with a real video is skipped)")
    identity = DeviceIdentity.load_or_create(state / "keys")
    from edge.ledger.store import Ledger

    with Ledger(state / "ledger.sqlite", identity, Config().device.id, "3171") as ledger:
        events = list(ledger.events())
        depth = ledger.outbox_depth()
    report = verify_events(events, identity.device_public_pem())
    print("\n=== Summary ===")
    print(f"decisions: {', '.join(str(d.outcome) for d in decisions)}")
    print(f"ledger: {len(events)} signed events, chain {'verifies' if report.ok else 'BROKEN'}")
    print(f"outbox: {depth} event(s) waiting for the broker (mqtt.enabled = false in the demo)")
    print(f"receipts (ESC/POS bytes): {state / 'receipts.bin'}")
    print(f"check it yourself: .venv/bin/edge audit {state / 'ledger.sqlite'}")
    if dashboard is not None:
        if sys.stdin.isatty():
            print(f"\ndashboard: {dashboard.url} (still serving)")
            try:
                input("press Enter (or Ctrl-C) to stop the dashboard\n")
            except (EOFError, KeyboardInterrupt):
                pass
        dashboard.stop()
        print("dashboard stopped; `make dashboard` serves it again")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
