"""The face models, the vision pipeline's gates and thresholds, and liveness."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge.config.base import ConfigPath, Problem, Section, default_models_dir


class ModelsConfig(Section):
    """The face models and how they run."""

    dir: ConfigPath = Field(
        default_factory=default_models_dir,
        description="Folder with manifest.json and the .tflite files made by `make models` "
        "(default: $EDGE_MODELS_DIR, else models/out in the source tree)",
    )
    embedder: Literal["int8", "dynamic", "float"] = Field(
        default="int8",
        description="int8 (integer convolutions, the Pi's choice), dynamic-range, or float",
    )
    threads: int = Field(default=2, ge=1, le=8, description="Interpreter threads per model")


class QualityConfig(Section):
    """Gates a face crop must pass before it is embedded."""

    min_face_px: float = Field(
        default=60.0, ge=0, description="Minimum face size in pixels, from the eye distance"
    )
    min_sharpness: float = Field(
        default=20.0, ge=0, description="Minimum variance of the Laplacian on the aligned crop"
    )
    max_yaw_deg: float = Field(
        default=35.0, gt=0, le=90, description="Largest head turn left or right, in degrees"
    )
    max_pitch_deg: float = Field(
        default=35.0, gt=0, le=90, description="Largest head tilt up or down, in degrees"
    )
    max_roll_deg: float = Field(
        default=30.0, gt=0, le=180, description="Largest head tilt towards a shoulder, in degrees"
    )
    min_brightness: float = Field(
        default=40.0, ge=0, le=255, description="Mean grey level (0-255) below which: too dark"
    )
    max_brightness: float = Field(
        default=220.0, ge=0, le=255, description="Mean grey level (0-255) above which: too bright"
    )
    min_contrast: float = Field(
        default=15.0, ge=0, description="Minimum standard deviation of grey levels"
    )

    def problems(self) -> list[Problem]:
        """Brightness bounds that leave no brightness acceptable."""
        if self.min_brightness < self.max_brightness:
            return []
        return [
            Problem(
                ("min_brightness", "max_brightness"),
                f"min_brightness ({self.min_brightness:g}) must be below max_brightness "
                f"({self.max_brightness:g}), else every face is refused as too dark or too "
                "bright; lower min_brightness or raise max_brightness",
            )
        ]


class VisionConfig(Section):
    """Face detection, alignment and matching."""

    detector_score: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="BlazeFace score to keep a face (the face mesh then confirms it)",
    )
    nms_iou: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="Overlap (IoU) above which two detections are taken as one face",
    )
    flip_view: bool = Field(
        default=False,
        description="Also embed the mirrored crop and average (+0.1 % TAR, 2x embed time)",
    )
    mesh_align: bool = Field(
        default=True,
        description="Align on five points from the 468-point face mesh (else BlazeFace's four)",
    )
    match_threshold: float = Field(
        # `edge calibrate --far 0.001` on ../shared/faces (int8, mesh alignment, no flip view);
        # see docs/accuracy.md.
        default=0.5412,
        gt=0,
        le=1,
        description="Cosine threshold; set by `edge calibrate` for a target false-match rate "
        "(0 or below would let most strangers match)",
    )
    duplicate_threshold: float = Field(
        default=0.70,
        gt=0,
        le=1,
        description="1:N score above which a face is taken to belong to another household",
    )
    quality: QualityConfig = Field(
        default_factory=QualityConfig, description="Gates a face crop must pass"
    )


class LivenessConfig(Section):
    """Presentation-attack detection: 3D motion, blinks, screen and print cues, MiniFASNet."""

    enabled: bool = Field(
        default=True, description="Check liveness; off, a photo of a recipient is accepted"
    )
    threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Fused score below which: spoof (0 would pass every photo while claiming "
        "to check; say enabled = false instead)",
    )
    min_frames: int = Field(
        default=20,
        ge=2,
        description="Frames with a good face needed to decide (about 1.5 s at 15 fps: 3D motion "
        "needs time to show)",
    )
    max_frames: int = Field(default=60, ge=2, description="Frames kept per capture window")
    max_pairs: int = Field(default=120, ge=1, description="Frame pairs compared for 3D motion")
    min_mesh_presence: float = Field(
        default=0.5, ge=0, le=1, description="Face-mesh confidence below which a frame is skipped"
    )
    pad_min_score: float = Field(
        default=0.7, ge=0, le=1, description="Detector score needed before MiniFASNet scores a face"
    )
    pad_every: int = Field(default=2, ge=1, description="Run MiniFASNet on every n-th frame")
    pad_min_face_px: float = Field(
        default=60.0, ge=0, description="Face box side needed before MiniFASNet scores a face"
    )
    still_max_change: float = Field(
        default=0.25,
        ge=0,
        description="Largest mean grey change between frames of a replayed still",
    )
    parallax_centre: float = Field(
        default=0.02, gt=0, description="Depth parallax (fraction of eye distance) scoring 0.5"
    )
    parallax_width: float = Field(default=0.003, gt=0, description="Softness of the parallax step")
    blink_drop: float = Field(
        default=0.6,
        gt=0,
        lt=1,
        description="Eye aspect ratio below this share of its median: closed",
    )
    moire_centre: float = Field(default=8.0, gt=0, description="Spectral peak scoring 0.5 moire")
    moire_width: float = Field(default=0.5, gt=0, description="Softness of the moire step")
    chroma_centre: float = Field(
        default=2.0, ge=0, description="Chroma spread below this: grey print"
    )
    chroma_width: float = Field(default=0.5, gt=0, description="Softness of the chroma step")
    glare_centre: float = Field(
        default=0.05, gt=0, le=1, description="Share of clipped colourless face pixels: glare"
    )
    pad_weight: float = Field(
        default=0.25, ge=0, description="Exponent of MiniFASNet P(real) in the fused score"
    )
    cue_weight: float = Field(
        default=0.5, ge=0, description="Exponent of the screen/print cue score in the fused score"
    )

    def problems(self) -> list[Problem]:
        """A window too small to ever hold the frames a decision needs."""
        if self.min_frames <= self.max_frames:
            return []
        return [
            Problem(
                ("min_frames", "max_frames"),
                f"min_frames ({self.min_frames}) is above max_frames ({self.max_frames}): "
                "liveness could never decide; raise max_frames or lower min_frames",
            )
        ]
