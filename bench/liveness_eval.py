"""Liveness evaluation on simulated attacks and real footage: APCER per attack type, BPCER.

``python -m bench.liveness_eval [--models DIR] [--faces DIR] [--video MP4] [--quick] [--json OUT]``

Attack presentations are made from the photos in ../shared/faces; bona fide presentations are
windows of the real clip ../shared/video/short_hamilton_clip.mp4. Terms follow ISO/IEC 30107-3:
APCER is the share of attack presentations of one type accepted as live, BPCER the share of bona
fide presentations refused. Every number here comes from simulation: see docs/liveness.md for
what it cannot show.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from edge.config.vision import LivenessConfig
from edge.vision.detector import Detector
from edge.vision.liveness import LivenessChecker
from edge.vision.pad import PadModel

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGE_SHARED_DIR", ROOT.parent / "shared"))
FRAME_W, FRAME_H = 640, 480
SEQ_LEN = LivenessConfig().min_frames  # the flow decides as soon as this many frames are in
MAX_LEN = 3 * SEQ_LEN  # frames on offer: a face may be lost for a while, as in the flow
VIDEO_STEP = 2  # the 30 fps clip subsampled to the terminal's ~15 fps
FILES = {
    "detector": "face_detection_short_range.tflite",
    "landmarks": "face_landmark.tflite",
    "pad_v2": "minifasnet_v2.tflite",
    "pad_v1se": "minifasnet_v1se.tflite",
}


def load_models(models_dir: Path) -> dict[str, bytes]:
    """Model bytes by manifest name (from manifest.json when there is one)."""
    manifest = models_dir / "manifest.json"
    files = dict(FILES)
    if manifest.is_file():
        entries = json.loads(manifest.read_text())["models"]
        files.update({k: v["file"] for k, v in entries.items() if k in FILES})
    return {
        k: (models_dir / f).read_bytes() for k, f in files.items() if (models_dir / f).is_file()
    }


# ----------------------------------------------------------------------------- presentation


def place(photo: np.ndarray, face_box: np.ndarray | None, bg: int = 95, face_w: float = 150.0):
    """The photo on a 640x480 frame with its face about ``face_w`` pixels wide and centred, as a
    picture held up to the terminal's camera would be (the whole photo when no face was found)."""
    h, w = photo.shape[:2]
    if face_box is None:
        s = min(FRAME_W * 0.9 / w, FRAME_H * 0.95 / h)
        cx, cy = w / 2, h / 2
    else:
        s = face_w / max(float(face_box[2] - face_box[0]), 1.0)
        cx, cy = (face_box[0] + face_box[2]) / 2, (face_box[1] + face_box[3]) / 2
    m = np.array([[s, 0, FRAME_W / 2 - s * cx], [0, s, FRAME_H / 2 - s * cy]], np.float64)
    border = (bg, bg, bg)
    return cv2.warpAffine(photo, m, (FRAME_W, FRAME_H), flags=cv2.INTER_CUBIC, borderValue=border)


def sensor(img: np.ndarray, rng: np.random.Generator, sigma: float = 2.0) -> np.ndarray:
    """Camera noise: a real sensor never gives two identical frames."""
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def handheld(
    base: np.ndarray, n: int, rng: np.random.Generator, amp: float = 1.0, tilt: float = 0.0,
    bend: float = 0.0,
) -> Iterator[np.ndarray]:  # fmt: skip
    """A flat picture held in a hand: smooth random rotation, scale, shift, tilt and bend."""
    h, w = base.shape[:2]
    # Low-pass random walks: a hand drifts and trembles, it does not jump each frame.
    steps = rng.normal(0, 1, (n, 6)).cumsum(axis=0) * 0.35
    steps -= steps.mean(axis=0)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for k in range(n):
        ang, sc, tx, ty, px, py = steps[k]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 1.5 * amp * ang, 1 + 0.015 * amp * sc)
        m = np.vstack([m, [0, 0, 1]])
        m[0, 2] += 4 * amp * tx
        m[1, 2] += 4 * amp * ty
        m[2, :2] = np.array([px, py]) * tilt
        img = cv2.warpPerspective(base, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
        if bend:
            # The sheet curls about a vertical axis and the curl changes: a non-planar surface.
            curl = bend * (1 + 0.5 * math.sin(k / 3.0))
            u = (xs - w / 2) / (w / 2)
            img = cv2.remap(img, xs + curl * w * 0.02 * u**3, ys, cv2.INTER_LINEAR)
        yield sensor(img, rng)


def print_look(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A photo printed on paper and seen by a camera: ink gamut, halftone, paper, blur, JPEG."""
    img = photo.astype(np.float32) / 255
    # Ink: compressed contrast and saturation, warm paper-white cast.
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * 0.7
    img = 0.08 + img * 0.82
    img *= np.array([1.0, 0.97, 0.9], np.float32)
    # Halftone: a rotated dot screen thresholds each channel.
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    period = 3.2
    a = math.radians(15)
    u, v = xs * math.cos(a) + ys * math.sin(a), -xs * math.sin(a) + ys * math.cos(a)
    dots = (np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period) + 1) / 2
    img = 0.75 * img + 0.25 * (img > dots[..., None]).astype(np.float32) * img.max()
    # Paper: slow brightness variation and fine fibre grain.
    low = cv2.resize(rng.normal(1, 0.04, (6, 8)).astype(np.float32), (w, h))
    img = img * low[..., None] + rng.normal(0, 0.015, (h, w, 1)).astype(np.float32)
    img = cv2.GaussianBlur(np.clip(img, 0, 1), (0, 0), 1.1)
    out = (img * 255).astype(np.uint8)
    ok, enc = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 70])
    decoded = cv2.imdecode(enc, cv2.IMREAD_COLOR) if ok else None
    return decoded[..., ::-1].copy() if decoded is not None else out


def screen_look(frame: np.ndarray, rng: np.random.Generator, phase: float = 0.0) -> np.ndarray:
    """A picture on a phone screen recaptured by a camera: subpixel grid aliasing into moire,
    a bluish gamma, a backlit black level and a glare patch."""
    h, w = frame.shape[:2]
    k = 3  # render at 3x so the RGB stripe grid exists before the camera samples it
    big = cv2.resize(frame, (w * k, h * k), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    xs = np.arange(w * k)
    stripe = np.stack([(xs % 3 == c) for c in range(3)], axis=-1).astype(np.float32)[None]
    rows = ((np.arange(h * k) % 3) != 2).astype(np.float32)[:, None, None]
    big = big * (0.7 + 0.3 * stripe) * (0.85 + 0.15 * rows)
    # The camera sees the grid slightly rotated and scaled: aliasing makes the moire beat.
    m = cv2.getRotationMatrix2D((w * k / 2, h * k / 2), 2.0 + phase, 1.03 / k)
    m[:, 2] += (w / 2 - w * k / 2, h / 2 - h * k / 2)
    img = cv2.warpAffine(big, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    img = img / max(img.max(), 1) * 255
    img = 255 * (img / 255) ** 0.85 * np.array([0.92, 0.97, 1.08], np.float32) + 18
    # Glare: a soft bright patch from a lamp reflected in the glass.
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    yy, xx = np.mgrid[0:h, 0:w]
    img += 120 * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.07 * w) ** 2)))[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- data sets


def pick_photos(faces_dir: Path, quick: bool) -> list[tuple[str, np.ndarray]]:
    """A spread of photos over the sources of ../shared/faces: (source, RGB image)."""
    per_source = {"facerec": 12, "celeb5": 5, "faceapijs": 8, "yale": 8, "orl": 8}
    if quick:
        per_source = {k: 2 for k in per_source}
    seen: dict[str, set[str]] = {}
    out = []
    with (faces_dir / "manifest.csv").open() as f:
        for row in csv.DictReader(f):
            src, ident = row["source"], row["identity"]
            ids = seen.setdefault(src, set())
            if src not in per_source or ident in ids or len(ids) >= per_source[src]:
                continue
            bgr = cv2.imread(str(faces_dir / row["path"]), cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            ids.add(ident)
            out.append((src, bgr[..., ::-1].copy()))
    return out


def read_video(path: Path) -> list[np.ndarray]:
    """All frames of a video as RGB arrays."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr[..., ::-1].copy())
    cap.release()
    return frames


# The clip's first shot with the performer's face runs from frame ~82 to 210; at 211 it cuts to
# another person. A window must not cross the cut (it would look like a huge head motion).
SHOT = (85, 211)


def video_windows(frames: list[np.ndarray], step: int = VIDEO_STEP, hop: int = 5):
    """Windows of the performer's shot at 30/step fps, each with enough frames for one decision."""
    start, stop = SHOT
    span = SEQ_LEN * step
    for s in range(start, stop - span + 1, hop):
        yield frames[s:stop:step][:MAX_LEN]


def to_frame(rgb: np.ndarray, zoom: float = 1.5) -> np.ndarray:
    """A video frame as shown on a phone held close to the camera: scaled about its centre onto
    the 640x480 frame (black where the picture ends: the screen's border)."""
    h, w = rgb.shape[:2]
    s = min(FRAME_W / w, FRAME_H / h) * zoom
    m = np.array([[s, 0, FRAME_W / 2 - s * w / 2], [0, s, FRAME_H / 2 - s * h / 2]], np.float64)
    return cv2.warpAffine(rgb, m, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR)


Placer = Callable[[int], np.ndarray]  # background grey level -> the photo placed on a frame

ATTACKS: dict[str, Callable[[Placer, np.random.Generator], Iterator[np.ndarray]]] = {
    "still_replay": lambda p, rng: iter([p(95)] * MAX_LEN),
    "still_camera": lambda p, rng: (sensor(f, rng) for f in [p(95)] * MAX_LEN),
    "handheld": lambda p, rng: handheld(p(95), MAX_LEN, rng),
    "handheld_tilt_bend": lambda p, rng: handheld(p(95), MAX_LEN, rng, 1.3, 2e-4, 1.0),
    "print": lambda p, rng: handheld(print_look(p(235), rng), MAX_LEN, rng, 1.0, 1e-4),
    "screen_photo": lambda p, rng: (
        screen_look(f, rng, 0.05 * k) for k, f in enumerate(handheld(p(20), MAX_LEN, rng, 0.6))
    ),
}


# ----------------------------------------------------------------------------- evaluation


class Runner:
    """Detector + liveness checker + MiniFASNet alone, over one presentation at a time."""

    def __init__(self, models: dict[str, bytes], cfg: LivenessConfig) -> None:
        self.det = Detector(models["detector"])
        self.checker = LivenessChecker(models, cfg)
        self.pad = PadModel(models) if "pad_v2" in models and "pad_v1se" in models else None
        self.cfg = cfg

    def face_in_photo(self, photo: np.ndarray) -> np.ndarray | None:
        """The largest face box of a photo (small photos are enlarged first), or None."""
        s = max(1.0, 256.0 / max(photo.shape[:2]))
        big = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC) if s > 1 else photo
        faces = self.det.detect(big)
        return faces[0].box / s if faces else None

    def run(self, frames) -> dict:
        self.checker.reset()
        pads = []
        for k, rgb in enumerate(frames):
            faces = self.det.detect(rgb)
            if not faces or faces[0].width < 40:
                continue
            face = faces[0]
            self.checker.update(rgb, face)
            if self.pad is not None and k % 3 == 0:
                pads.append(self.pad.score(rgb, face.box).real)
            if self.checker.frames >= self.cfg.min_frames:
                break  # as the flow does: decide as soon as there are enough frames
        res = self.checker.result()
        return {
            "score": res.score,
            "live": res.live,
            "frames": res.frames,
            "pad_alone": float(np.median(pads)) if pads else float("nan"),
            "signals": res.signals,
        }


def summarise(rows: list[dict], threshold: float) -> dict:
    """Per presentation type: count, error rate of the fused decision and of MiniFASNet alone."""
    out = {}
    for kind in dict.fromkeys(r["type"] for r in rows):
        rs = [r for r in rows if r["type"] == kind]
        bona = kind.startswith("bona_fide")
        live = np.array([r["live"] for r in rs])
        pad_live = np.array([r["pad_alone"] >= 0.5 for r in rs])
        sig = {
            k: float(np.nanmedian([r["signals"].get(k, np.nan) for r in rs]))
            for k in ("parallax", "blinks", "pad", "moire", "chroma", "glare", "temporal", "cues")
            if any(k in r["signals"] for r in rs)
        }
        out[kind] = {
            "n": len(rs),
            "too_few_frames": int(sum(r["signals"].get("insufficient", 0) > 0 for r in rs)),
            "rate": float((~live).mean() if bona else live.mean()),
            "metric": "BPCER" if bona else "APCER",
            "pad_alone_rate": float((~pad_live).mean() if bona else pad_live.mean()),
            "median_score": float(np.median([r["score"] for r in rs])),
            "median_signals": sig,
        }
    return out


def per_source(rows: list[dict]) -> dict[str, dict[str, float]]:
    """APCER of the fused decision by attack type and photo source."""
    out: dict[str, dict[str, list[bool]]] = {}
    for r in rows:
        if "source" in r:
            out.setdefault(r["type"], {}).setdefault(r["source"], []).append(r["live"])
    return {k: {s: float(np.mean(v)) for s, v in d.items()} for k, d in out.items()}


def render(summary: dict, threshold: float) -> str:
    """A Markdown table of the summary."""
    lines = [
        f"threshold {threshold:.2f}",
        "",
        "| presentations | n | metric | fused | of which too few frames | MiniFASNet alone "
        "| median score | parallax | pad | moire | chroma |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, s in summary.items():
        m = s["median_signals"]

        def f(k: str, fmt: str = ".3f", m: dict = m) -> str:
            v = m.get(k, float("nan"))
            return "-" if math.isnan(v) else format(v, fmt)

        lines.append(
            f"| {kind} | {s['n']} | {s['metric']} | {s['rate']:.1%} | {s['too_few_frames']} "
            f"| {s['pad_alone_rate']:.1%} | "
            f"{s['median_score']:.3f} | {f('parallax', '.4f')} | {f('pad')} | {f('moire', '.1f')} "
            f"| {f('chroma', '.1f')} |"
        )
    return "\n".join(lines)


def evaluate(models_dir: Path, faces_dir: Path, video: Path, quick: bool, cfg: LivenessConfig):
    """Run every presentation; returns (rows, summary)."""
    runner = Runner(load_models(models_dir), cfg)
    rng = np.random.default_rng(20261123)
    rows = []
    clip = read_video(video)
    windows = list(video_windows(clip))
    slow = list(video_windows(clip, step=3))
    fast = list(video_windows(clip, step=1, hop=10))
    if quick:
        windows, slow, fast = windows[::4], slow[::4], fast[::4]
    for i, win in enumerate(slow):
        rows.append({"type": "bona_fide_clip_10fps", "id": i, **runner.run(win)})
    # At 30 fps the same 20 frames span only 0.7 s: less time for the head to move.
    for i, win in enumerate(fast):
        rows.append({"type": "bona_fide_clip_30fps", "id": i, **runner.run(win)})
    for i, win in enumerate(windows):
        rows.append({"type": "bona_fide_clip", "id": i, **runner.run(win)})
        phase = rng.uniform(0, 1)
        screen = (screen_look(to_frame(f), rng, phase + 0.05 * k) for k, f in enumerate(win))
        rows.append({"type": "screen_video", "id": i, **runner.run(screen)})
    photos = pick_photos(faces_dir, quick)
    boxes = [runner.face_in_photo(photo) for _, photo in photos]
    for kind, make in ATTACKS.items():
        t0 = time.perf_counter()
        for i, ((src, photo), box) in enumerate(zip(photos, boxes, strict=True)):
            face_w = rng.uniform(120, 200)

            def placer(bg: int, photo=photo, box=box, face_w=face_w) -> np.ndarray:
                return place(photo, box, bg, face_w)

            rows.append({"type": kind, "id": i, "source": src, **runner.run(make(placer, rng))})
        log.info("%s: %d presentations in %.1f s", kind, len(photos), time.perf_counter() - t0)
    return rows, summarise(rows, cfg.threshold)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.liveness_eval", description=__doc__)
    p.add_argument("--models", type=Path, default=ROOT / "models" / "out")
    p.add_argument("--faces", type=Path, default=SHARED / "faces")
    p.add_argument("--video", type=Path, default=SHARED / "video" / "short_hamilton_clip.mp4")
    p.add_argument("--quick", action="store_true", help="a few presentations of each type")
    p.add_argument("--json", type=Path, help="write every presentation's result here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = LivenessConfig()
    rows, summary = evaluate(args.models, args.faces, args.video, args.quick, cfg)
    print(render(summary, cfg.threshold))
    by_source = per_source(rows)
    sources = sorted({s for d in by_source.values() for s in d})
    print("\nAPCER by photo source\n\n| attack | " + " | ".join(sources) + " |")
    print("|---|" + "---|" * len(sources))
    for kind, d in by_source.items():
        cells = " | ".join(f"{d[s]:.0%}" if s in d else "-" for s in sources)
        print(f"| {kind} | {cells} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"summary": summary, "by_source": by_source, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
