"""Passive multi-frame liveness: is the face in front of the camera a live person?

Nothing is asked of the recipient. During the capture window every frame with a good face goes
to ``LivenessChecker.update``; ``result`` fuses four kinds of evidence into one score:

- motion: frame-identical stills are refused outright; then the 3D structure of the motion. A
  flat photo, however it is moved, tilted or bent slightly, moves its landmarks by (nearly) one
  homography. A head that turns moves near points (nose) against far ones (cheeks, ears) in
  proportion to their depth. We fit a homography between the face meshes of two frames and
  measure how much of what is left is explained by the mesh depth ("plane plus parallax").
- blinks: a dip of the eye aspect ratio well below its running median, from the 468-point mesh.
- learned PAD: MiniFASNet V2 + V1SE P(real) (weak alone: see docs/liveness.md).
- screen and print cues: moire (isolated spectral peaks), a face without colour variation (grey
  print), clipped low-saturation highlights (glare on glossy paper or glass).

Motion or a blink is required (their noisy-OR is the temporal score, the only evidence a flat
picture cannot fake); PAD and the cues can only scale it down:
``score = temporal * pad ** pad_weight * cues ** cue_weight``. A strong screen or print cue sinks
the score; nothing lifts a still photo above the threshold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.errors import ModelError
from edge.vision.landmarks import FaceMesh, Mesh, eye_aspect_ratio
from edge.vision.pad import PadModel

log = logging.getLogger(__name__)

CROP = 96  # side of the face crop used for the still test and the image cues


@dataclass
class LivenessResult:
    """Fused liveness score in [0, 1], the decision against the threshold, and every signal."""

    score: float
    live: bool
    signals: dict[str, float] = field(default_factory=dict)
    frames: int = 0


@dataclass
class _Frame:
    mesh: Mesh
    ear: float
    grey: np.ndarray
    pad: float | None
    moire: float
    chroma: float
    glare: float


def _logistic(x: float, centre: float, width: float) -> float:
    z = min(max((x - centre) / max(width, 1e-9), -60.0), 60.0)
    return 1.0 / (1.0 + math.exp(-z))


def face_crop(rgb: np.ndarray, box: np.ndarray, size: int = CROP) -> np.ndarray:
    """The face box resized to ``size`` x ``size`` (RGB uint8), clipped to the frame."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(max(x1, x0 + 1), w), min(max(y1, y0 + 1), h)
    return cv2.resize(rgb[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)


def _spectral_band(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Window and band mask (0.2 to 0.9 of Nyquist) of an n x n spectrum, made once per size."""
    if n not in _BANDS:
        yy, xx = np.mgrid[0:n, 0:n] - n // 2
        r = np.fft.ifftshift(np.hypot(xx, yy) / (n / 2))
        _BANDS[n] = (np.outer(np.hanning(n), np.hanning(n)), (r > 0.2) & (r < 0.9))
    return _BANDS[n]


_BANDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _band_peak(channel: np.ndarray) -> float:
    win, mask = _spectral_band(channel.shape[0])
    g = channel.astype(np.float64)
    band = np.log1p(np.abs(np.fft.fft2((g - g.mean()) * win)))[mask]
    # Against a robust spread, so that a sharper or noisier image does not score higher.
    med = np.median(band)
    return float((band.max() - med) / (np.median(np.abs(band - med)) + 1e-6))


def moire_peak(crop: np.ndarray) -> float:
    """How far the strongest mid/high-frequency spectral peak of the face stands above its band.

    Skin has a smooth, falling spectrum in brightness and even more in colour; a screen's RGB
    subpixel grid or a print's halftone, resampled by the camera, leaves isolated periodic peaks,
    mostly in the colour (Lab a*, b*) channels. Highest of the three channels, in robust units.
    """
    lab = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB)
    return max(_band_peak(lab[..., c]) for c in range(3))


def colour_spread(crop: np.ndarray) -> float:
    """Spread of chroma (Lab a*, b*) over the face centre; a grey print has almost none."""
    c = crop.shape[0] // 4
    lab = cv2.cvtColor(crop[c:-c, c:-c], cv2.COLOR_RGB2LAB).astype(np.float64)
    return float(np.hypot(lab[..., 1].std(), lab[..., 2].std()))


def glare_fraction(crop: np.ndarray) -> float:
    """Fraction of face pixels that are clipped and colourless (mirror-like glare)."""
    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)
    return float(np.mean((hsv[..., 2] >= 250) & (hsv[..., 1] <= 25)))


def _normalise(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = p.mean(axis=0)
    s = math.sqrt(2) / max(float(np.linalg.norm(p - c, axis=1).mean()), 1e-9)
    t = np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1]])
    return (p - c) * s, t


def fit_homography(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least-squares homography taking points ``a`` [N, 2] to ``b`` (normalised DLT)."""
    na, ta = _normalise(a)
    nb, tb = _normalise(b)
    n = len(a)
    m = np.zeros((2 * n, 9))
    x, y, u, v = na[:, 0], na[:, 1], nb[:, 0], nb[:, 1]
    m[0::2, 0], m[0::2, 1], m[0::2, 2] = x, y, 1
    m[0::2, 6], m[0::2, 7], m[0::2, 8] = -u * x, -u * y, -u
    m[1::2, 3], m[1::2, 4], m[1::2, 5] = x, y, 1
    m[1::2, 6], m[1::2, 7], m[1::2, 8] = -v * x, -v * y, -v
    # The null vector of m: the eigenvector of m^T m with the smallest eigenvalue.
    _, vecs = np.linalg.eigh(m.T @ m)
    h = np.linalg.inv(tb) @ vecs[:, 0].reshape(3, 3) @ ta
    return h / h[2, 2] if abs(h[2, 2]) > 1e-12 else h


def plane_parallax(a: Mesh, b: Mesh) -> float:
    """Depth-explained residual of the best homography between two meshes, over eye distance."""
    pa, pb = a.xy.astype(np.float64), b.xy.astype(np.float64)
    h = fit_homography(pa, pb)
    q = np.column_stack([pa, np.ones(len(pa))]) @ h.T
    with np.errstate(divide="ignore", invalid="ignore"):
        resid = pb - q[:, :2] / q[:, 2:3]
    if not np.all(np.isfinite(resid)):
        return 0.0
    z = (a.points[:, 2] + b.points[:, 2]).astype(np.float64) / 2
    z -= z.mean()
    zz = float((z * z).sum())
    iod = float(np.linalg.norm(pa[33] - pa[263]))
    if zz <= 0 or iod <= 1:
        return 0.0
    d = (z[:, None] * resid).sum(axis=0) / zz
    return float(np.linalg.norm(d) * z.std() / iod)


def count_blinks(ears: list[float], drop: float) -> int:
    """Dips of the eye aspect ratio below ``drop`` times its median that reopen afterwards."""
    if len(ears) < 3:
        return 0
    e = np.asarray(ears)
    med = float(np.median(e))
    if med < 0.12:  # eyes never properly open: nothing to blink
        return 0
    closed = e < drop * med
    blinks, i = 0, 0
    while i < len(e):
        if closed[i]:
            j = i
            while j < len(e) and closed[j]:
                j += 1
            # A blink reopens; a dip at the very start or end, or a long closure, is not one.
            if i > 0 and j < len(e) and j - i <= 6:
                blinks += 1
            i = j
        else:
            i += 1
    return blinks


def _model_bytes(models, name: str) -> bytes | None:
    if hasattr(models, "bytes"):
        try:
            return models.bytes(name)
        except (KeyError, ModelError):  # a store without that model: the signal is skipped
            return None
    return models.get(name)


class LivenessChecker:
    """Collects frames of one capture window and fuses their liveness signals.

    ``models``: a ModelStore or a dict of manifest name to TFLite bytes; ``landmarks`` is needed,
    ``pad_v2`` and ``pad_v1se`` are used when present. ``cfg``: a LivenessConfig (or the whole
    Config). Call ``reset`` at the start of each capture window.
    """

    def __init__(self, models, cfg, threads: int = 1) -> None:
        self.cfg = getattr(cfg, "liveness", cfg)
        mesh_model = _model_bytes(models, "landmarks")
        if mesh_model is None:
            raise ValueError("liveness needs the face landmark model ('landmarks')")
        self._mesh_model = mesh_model
        self._threads = threads
        self._mesh: FaceMesh | None = None
        v2, v1se = _model_bytes(models, "pad_v2"), _model_bytes(models, "pad_v1se")
        self.pad = PadModel({"pad_v2": v2, "pad_v1se": v1se}, threads) if v2 and v1se else None
        if self.pad is None:
            log.warning("PAD models absent: liveness runs on temporal and image cues only")
        self._frames: list[_Frame] = []
        self._skipped = 0
        self._cached: tuple[int, int, LivenessResult] | None = None

    @property
    def mesh(self) -> FaceMesh:
        """Our own face mesh, built on first use: the daemon passes the engine's mesh instead,
        so it never needs a second interpreter of the same network."""
        if self._mesh is None:
            self._mesh = FaceMesh(self._mesh_model, self._threads)
        return self._mesh

    def reset(self) -> None:
        """Forget the frames of the previous capture window."""
        self._frames.clear()
        self._skipped = 0
        self._cached = None

    def update(self, rgb: np.ndarray, face, mesh: np.ndarray | None = None) -> None:
        """Add one frame and its face (``box``, ``score``, ``keypoints`` in frame pixels).

        ``mesh``: the 468x3 face mesh of this face when the caller already ran it (x, y in frame
        pixels, z in any fixed unit; e.g. ``FaceResult.mesh``); otherwise it is run here.
        """
        c = self.cfg
        box = np.asarray(face.box, np.float32)
        if len(self._frames) >= c.max_frames:
            return
        if mesh is not None:
            # The caller's mesh was confirmed by its own presence test; z units cancel out in
            # the parallax measure, so any scale will do.
            found = Mesh(points=np.asarray(mesh, np.float32), presence=1.0, scale=1.0)
        else:
            found = self.mesh.run(rgb, box, np.asarray(face.keypoints, np.float32))
        if found.presence < c.min_mesh_presence:
            self._skipped += 1
            return
        crop = face_crop(rgb, box)
        grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        pad = None
        # MiniFASNet calls noise and tiny faces real: only score confident, large faces.
        size = min(float(box[2] - box[0]), float(box[3] - box[1]))
        due = len(self._frames) % c.pad_every == 0  # PAD is the costliest step: not every frame
        if (
            self.pad is not None
            and due
            and face.score >= c.pad_min_score
            and size >= c.pad_min_face_px
        ):
            pad = self.pad.score(rgb, box).real
        self._frames.append(
            _Frame(
                mesh=found,
                ear=eye_aspect_ratio(found.points),
                grey=grey,
                pad=pad,
                moire=moire_peak(crop),
                chroma=colour_spread(crop),
                glare=glare_fraction(crop),
            )
        )

    @property
    def frames(self) -> int:
        """Frames accepted so far in this window."""
        return len(self._frames)

    def _pairs(self) -> list[tuple[int, int]]:
        # Pairs at least a few frames apart carry the motion; cap their number to bound the cost.
        n = len(self._frames)
        gap = max(1, n // 8)
        pairs = [(i, j) for i in range(n) for j in range(i + gap, n)]
        if len(pairs) > self.cfg.max_pairs:
            idx = np.linspace(0, len(pairs) - 1, self.cfg.max_pairs).astype(int)
            pairs = [pairs[k] for k in idx]
        return pairs

    def result(self) -> LivenessResult:
        """The fused decision for the frames collected since the last ``reset``.

        Cached until the next ``update``: asking twice costs nothing.
        """
        key = (len(self._frames), self._skipped)
        if self._cached is None or self._cached[:2] != key:
            self._cached = (*key, self._fuse())
        return self._cached[2]

    def _fuse(self) -> LivenessResult:
        c = self.cfg
        fr = self._frames
        n = len(fr)
        signals: dict[str, float] = {"frames": float(n), "skipped": float(self._skipped)}
        if n < c.min_frames:
            signals["insufficient"] = 1.0
            return LivenessResult(score=0.0, live=False, signals=signals, frames=n)

        # Still: a replayed or injected image changes by (almost) nothing from frame to frame.
        change = max(
            float(np.mean(cv2.absdiff(a.grey, b.grey))) for a, b in zip(fr, fr[1:], strict=False)
        )
        signals["max_frame_change"] = change
        if change < c.still_max_change:
            signals["still"] = 1.0
            return LivenessResult(score=0.0, live=False, signals=signals, frames=n)

        temporal = self._temporal(signals)
        pads = [f.pad for f in fr if f.pad is not None]
        pad = float(np.median(pads)) if pads else None
        signals.update(pad=float("nan") if pad is None else pad, pad_frames=float(len(pads)))
        cues = _image_cues(fr, c, signals)
        # Temporal evidence is required; PAD and the cues only scale it down (PAD gently, since
        # it is weak and can be wrong about real faces too).
        score = temporal * (1.0 if pad is None else pad**c.pad_weight) * cues**c.cue_weight
        live = score >= c.threshold
        log.debug("liveness score %.3f over %d frames (live=%s)", score, n, live)
        return LivenessResult(score=score, live=live, signals=signals, frames=n)

    def _temporal(self, signals: dict[str, float]) -> float:
        """Evidence of a live head over time: 3D motion of the mesh or a blink, in [0, 1]."""
        c, fr = self.cfg, self._frames
        par = [plane_parallax(fr[i].mesh, fr[j].mesh) for i, j in self._pairs()]
        parallax = float(np.percentile(par, 80)) if par else 0.0
        s_motion = _logistic(parallax, c.parallax_centre, c.parallax_width)
        blinks = count_blinks([f.ear for f in fr], c.blink_drop)
        s_blink = 1.0 if blinks else 0.0
        temporal = 1.0 - (1.0 - s_motion) * (1.0 - s_blink)
        signals.update(
            parallax=parallax,
            motion=s_motion,
            blinks=float(blinks),
            ear_median=float(np.median([f.ear for f in fr])),
            temporal=temporal,
        )
        return temporal


def _image_cues(fr: list[_Frame], c, signals: dict[str, float]) -> float:
    """1 minus the strongest sign of a screen or a print (moire, flat colour, glare)."""
    moire = float(np.median([f.moire for f in fr]))
    chroma = float(np.median([f.chroma for f in fr]))
    glare = float(np.median([f.glare for f in fr]))
    spoof_cues = max(
        _logistic(moire, c.moire_centre, c.moire_width),
        1.0 - _logistic(chroma, c.chroma_centre, c.chroma_width),
        0.5 * _logistic(glare, c.glare_centre, c.glare_centre / 4),
    )
    cues = 1.0 - spoof_cues
    signals.update(moire=moire, chroma=chroma, glare=glare, cues=cues)
    return cues
