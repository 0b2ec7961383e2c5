"""One configuration schema for the whole terminal.

The file is TOML (``/etc/edge/config.toml`` on a device). Every key has a default, so an empty
file runs the terminal on its embedded defaults: simulated camera, mock GPIO, printer to a file
and the durable outbox. Unknown keys and wrong types are refused, each error named by key path.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from edge.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = Path("/etc/edge/config.toml")


def _default_models_dir() -> str:
    return os.environ.get("EDGE_MODELS_DIR", str(PROJECT_ROOT / "models" / "out"))


def _default_state_dir() -> str:
    return os.environ.get("EDGE_STATE_DIR", "var")


class Section(BaseModel):
    """Base of every section: strict, so a typo in a key is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)


class DeviceConfig(Section):
    id: str = Field(
        default="edge-demo-0001",
        pattern=r"^[a-z0-9][a-z0-9-]{2,62}$",
        description="Terminal id; MQTT topics, events and receipts carry it",
    )
    regency: str = Field(
        default="3171",
        pattern=r"^[0-9]{4}$",
        description="Four-digit BPS regency code (kabupaten/kota) of the distribution point",
    )
    point_name: str = Field(
        default="Titik Salur Demo", max_length=64, description="Distribution point, on receipts"
    )
    state_dir: str = Field(
        default_factory=_default_state_dir,
        description="Ledger, keys, bundles and pending receipts live here",
    )
    max_clock_skew_s: float = Field(
        default=300.0,
        gt=0,
        description="Refuse to sign events when the clock is further off than this from a trusted time",
    )


class ModelsConfig(Section):
    dir: str = Field(
        default_factory=_default_models_dir,
        description="Folder with manifest.json and the .tflite files made by `make models`",
    )
    embedder: Literal["int8", "dynamic", "float"] = Field(
        default="int8",
        description="int8 (integer convolutions, the Pi's choice), dynamic-range, or float",
    )
    threads: int = Field(default=2, ge=1, le=8, description="Interpreter threads per model")


class QualityConfig(Section):
    min_face_px: float = Field(
        default=60.0, ge=0, description="Minimum inter-ocular-based face size"
    )
    min_sharpness: float = Field(
        default=20.0, ge=0, description="Minimum variance of the Laplacian on the aligned crop"
    )
    max_yaw_deg: float = Field(default=35.0, gt=0, le=90)
    max_pitch_deg: float = Field(default=35.0, gt=0, le=90)
    max_roll_deg: float = Field(default=30.0, gt=0, le=180)
    min_brightness: float = Field(default=40.0, ge=0, le=255)
    max_brightness: float = Field(default=220.0, ge=0, le=255)
    min_contrast: float = Field(default=15.0, ge=0, description="Standard deviation of grey levels")


class VisionConfig(Section):
    detector_score: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="BlazeFace score to keep a face (the face mesh then confirms it)",
    )
    nms_iou: float = Field(default=0.3, gt=0, lt=1)
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
        ge=-1,
        le=1,
        description="Cosine threshold; set by `edge calibrate` for a target false-match rate",
    )
    duplicate_threshold: float = Field(
        default=0.70,
        ge=-1,
        le=1,
        description="1:N score above which a face is taken to belong to another household",
    )
    quality: QualityConfig = Field(default_factory=QualityConfig)


class LivenessConfig(Section):
    enabled: bool = True
    threshold: float = Field(default=0.5, ge=0, le=1, description="Fused score below which: spoof")
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
    moire_width: float = Field(default=0.5, gt=0)
    chroma_centre: float = Field(
        default=2.0, ge=0, description="Chroma spread below this: grey print"
    )
    chroma_width: float = Field(default=0.5, gt=0)
    glare_centre: float = Field(
        default=0.05, gt=0, le=1, description="Share of clipped colourless face pixels: glare"
    )
    pad_weight: float = Field(
        default=0.25, ge=0, description="Exponent of MiniFASNet P(real) in the fused score"
    )
    cue_weight: float = Field(
        default=0.5, ge=0, description="Exponent of the screen/print cue score in the fused score"
    )


class FlowConfig(Section):
    mode: Literal["qr", "identify"] = Field(
        default="qr", description="qr: claim by invitation QR then 1:1; identify: 1:N only"
    )
    capture_timeout_s: float = Field(default=6.0, gt=0)
    good_frames: int = Field(default=3, ge=1, description="Good face frames fused for a decision")
    cooldown_s: float = Field(default=5.0, ge=0)
    store_debug_images: bool = Field(
        default=False, description="Keep face images for debugging (personal data: off by default)"
    )


class CameraConfig(Section):
    kind: Literal["auto", "picamera2", "opencv", "folder"] = "folder"
    source: str = Field(
        default="",
        description="opencv: device index or video file; folder: directory of images",
    )
    width: int = Field(default=640, ge=64)
    height: int = Field(default=480, ge=64)
    fps: float = Field(default=15.0, gt=0)
    loop: bool = Field(default=False, description="folder/video: start again at the end")
    queue_size: int = Field(default=2, ge=1, le=16, description="Frames buffered before dropping")
    repeat: int = Field(
        default=1, ge=1, le=1000, description="folder: each image given this many times in a row"
    )
    stall_s: float = Field(
        default=3.0, gt=0, description="No frame for this long: the camera is reopened"
    )


class SignalsConfig(Section):
    kind: Literal["gpiozero", "mock", "log"] = "mock"
    led_kind: Literal["rgb", "separate"] = "rgb"
    red_pin: int = Field(default=17, ge=0, le=27)
    green_pin: int = Field(default=27, ge=0, le=27)
    blue_pin: int = Field(default=22, ge=0, le=27)
    buzzer_pin: int = Field(default=18, ge=0, le=27)
    active_high: bool = True


class PrinterConfig(Section):
    kind: Literal["serial", "file", "dummy", "none"] = Field(
        default="file", description="dummy: bytes kept in memory (tests); none: no printer"
    )
    port: str = "/dev/serial0"
    baudrate: int = Field(default=9600, ge=1200)
    path: str = Field(
        default="", description="file printer: output file (default state_dir/receipts.bin)"
    )
    refusal_slip: bool = Field(default=False, description="Print a slip for refusals as well")
    timeout_s: float = Field(
        default=0.5, gt=0, le=5, description="serial: wait this long for a status answer"
    )
    status_queries: bool = Field(
        default=True,
        description="serial: ask online/paper (DLE EOT); false when the printer's TX is not wired",
    )
    profile: str = Field(
        default="", description="python-escpos profile name; empty: generic 58 mm, 32 columns"
    )


class MqttConfig(Section):
    enabled: bool = Field(default=False, description="Off: events wait in the ledger outbox")
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    tls: bool = Field(default=True, description="Mutual TLS; plain TCP only for a lab")
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: SecretStr = SecretStr("")
    keepalive_s: int = Field(default=30, ge=5)
    health_interval_s: float = Field(default=60.0, gt=0)
    topic_prefix: str = "bansos/v1"


class BundleConfig(Section):
    central_public_key: str = Field(
        default="",
        description="Ed25519 public key (PEM) of central that signs bundles and commands",
    )


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(Section):
    """The whole terminal configuration."""

    device: DeviceConfig = Field(default_factory=DeviceConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    vision: VisionConfig = Field(default_factory=VisionConfig)
    liveness: LivenessConfig = Field(default_factory=LivenessConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    signals: SignalsConfig = Field(default_factory=SignalsConfig)
    printer: PrinterConfig = Field(default_factory=PrinterConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    bundle: BundleConfig = Field(default_factory=BundleConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @property
    def state_path(self) -> Path:
        return Path(self.device.state_dir)


def _suggest(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """For an unknown key, the closest known key of the same section (a typo is the usual cause)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        sub = getattr(field, "annotation", None) if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return ""
        model = sub
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _echo_input(err: dict[str, Any]) -> bool:
    """Show the offending value, except tables and anything that may be a secret."""
    if "input" not in err or isinstance(err["input"], dict | list):
        return False
    return not any(word in str(err["loc"][-1]) for word in ("password", "secret", "token"))


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} error(s)"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(Config, err["loc"])
        elif _echo_input(err):
            msg = f"{msg} (got {type(err['input']).__name__} {err['input']!r:.40})"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a mapping against the schema; raise ConfigError listing every bad key path."""
    try:
        # Strict: TOML is typed, so "5" for an integer or 1 for a boolean is a mistake to report,
        # not to coerce. Python callers constructing sections directly keep lax validation.
        return Config.model_validate(data, strict=True)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from exc


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Load a TOML file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    return parse_config(data, str(p))


def dump_effective(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data, with secrets hidden (for `edge check-config`)."""
    # SecretStr dumps as '**********' in json mode, which is what we want on a technician's screen.
    return cfg.model_dump(mode="json")


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: cannot write a non-finite number to TOML")
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are a subset of TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    raise ConfigError(f"{key}: cannot write {type(value).__name__} to TOML")


def dump_toml(data: dict[str, Any], _prefix: str = "") -> str:
    """Render nested plain data (as from ``dump_effective``) as TOML that ``load_config`` reads."""
    scalars = []
    tables = []
    for key, value in data.items():
        if value is None:
            continue  # TOML has no null; leaving the key out gives the same default back
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            scalars.append(f"{key} = {_toml_value(value, _prefix + key)}")
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for key, value in tables:
        name = _prefix + key
        body = dump_toml(value, name + ".")
        # A table holding only sub-tables still gets its header: it keeps the file readable.
        out += f"\n[{name}]\n{body}"
    return out
