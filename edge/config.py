"""One configuration schema for the whole terminal.

The file is TOML (``/etc/edge/config.toml`` on a device). Every key has a default, so an
empty file runs the terminal on its embedded defaults: simulated camera, mock GPIO, printer to a
file and the durable outbox. Unknown keys and wrong types are refused, each error named by key
path; so are values that contradict each other (see ``RULES``). Paths are ``pathlib.Path``; a
relative path is relative to the working directory, as it always was.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edge.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = Path("/etc/edge/config.toml")
# A real config is a few kB; a huge file is a mistake (or an attack on the parser).
MAX_CONFIG_BYTES = 1 << 20

# The Pi's primary UART (what a serial receipt printer is wired to) sits on GPIO 14 and 15.
UART_PORTS = frozenset({"/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0"})
UART_PINS = {14: "TXD", 15: "RXD"}

# What the validators below enforce across keys, in words (for `edge check-config --explain`
# and the JSON Schema); each rule has an accepted and a refused case in tests/test_config.py.
RULES = (
    "vision.quality.min_brightness must be below vision.quality.max_brightness",
    "liveness.min_frames must not be above liveness.max_frames",
    "flow.capture_timeout_s x camera.fps must give at least flow.good_frames frames, and at "
    "least liveness.min_frames when liveness is enabled",
    "signals: the red, green, blue and buzzer pins must all differ",
    "signals: no pin may be GPIO 14 or 15 while a serial printer uses the Pi's UART "
    "(printer.port " + ", ".join(sorted(UART_PORTS)) + ")",
    "printer.kind = serial needs printer.port",
    "mqtt.enabled needs mqtt.host; with mqtt.tls also mqtt.cert_file and mqtt.key_file "
    "(mqtt.ca_file may stay unset to trust the system's CAs); mqtt.password needs mqtt.username",
)


def _default_models_dir() -> Path:
    return Path(os.environ.get("EDGE_MODELS_DIR", str(PROJECT_ROOT / "models" / "out")))


def _default_state_dir() -> Path:
    return Path(os.environ.get("EDGE_STATE_DIR", "var"))


def _to_path(value: Any) -> Any:
    # TOML has no path type, and strict validation would refuse a string for a Path field.
    if isinstance(value, str):
        if not value.strip():
            raise PydanticCustomError("path_empty", "Path must not be empty")
        return Path(value)
    if isinstance(value, os.PathLike):
        return Path(value)
    raise PydanticCustomError("path_type", "Input should be a path (a string)")


def _to_optional_path(value: Any) -> Any:
    # "" is how a file written before these keys became paths says "not set"; TOML has no null.
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _to_path(value)


ConfigPath = Annotated[Path, BeforeValidator(_to_path)]
OptionalPath = Annotated[Path | None, BeforeValidator(_to_optional_path)]


class Problem(NamedTuple):
    """A rule across keys that a config breaks: the keys involved and what to do about it."""

    keys: tuple[str, ...]  # relative to the model that found the problem
    fix: str


class Section(BaseModel):
    """Base of every section: strict, so a typo in a key is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)

    def problems(self) -> list[Problem]:
        """Rules across this model's keys that its values break (none by default)."""
        return []

    def __setattr__(self, name: str, value: Any) -> None:
        # pydantic stores an assigned value before the model's rules run; a refused
        # assignment must leave the config as it was.
        old = self.__dict__.get(name)
        try:
            super().__setattr__(name, value)
        except ValidationError:
            if name in self.__dict__:
                self.__dict__[name] = old
            raise

    @model_validator(mode="after")
    def _check_rules(self) -> Section:
        found = self.problems()
        if found:
            # One error carries every problem; `_format_errors` prints a line for each.
            raise PydanticCustomError(
                "cross_key",
                "{summary}",
                {"summary": "; ".join(p.fix for p in found), "problems": found},
            )
        return self


class DeviceConfig(Section):
    """This terminal and where it keeps its state."""

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
    state_dir: ConfigPath = Field(
        default_factory=_default_state_dir,
        description="Ledger, keys, bundles and pending receipts live here "
        "(default: $EDGE_STATE_DIR, else var)",
    )
    max_clock_skew_s: float = Field(
        default=300.0,
        gt=0,
        description="Refuse to sign events when the clock is further off than this from a trusted time",
    )


class ModelsConfig(Section):
    """The face models and how they run."""

    dir: ConfigPath = Field(
        default_factory=_default_models_dir,
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


class FlowConfig(Section):
    """The payout flow: how a claim becomes a decision."""

    mode: Literal["qr", "identify"] = Field(
        default="qr", description="qr: claim by invitation QR then 1:1; identify: 1:N only"
    )
    capture_timeout_s: float = Field(
        default=6.0, gt=0, description="Longest capture window after a claim, in seconds"
    )
    good_frames: int = Field(default=3, ge=1, description="Good face frames fused for a decision")
    cooldown_s: float = Field(
        default=5.0, ge=0, description="Pause after a decision before the same face starts again"
    )
    store_debug_images: bool = Field(
        default=False, description="Keep face images for debugging (personal data: off by default)"
    )
    max_attempts_per_round: int = Field(
        default=5,
        ge=0,
        description="Failed verifications (no match, spoof, duplicate face) of one household in "
        "one round before its letter is refused as too_many_attempts; 0: no limit",
    )
    attempt_window_h: float = Field(
        default=0.0,
        ge=0,
        description="Only failures within this many hours count towards the limit (a cool-down "
        "after which the household may try again); 0: the whole round",
    )


class OverrideConfig(Section):
    """Supervised override: two staff badges and a reason card after a face refusal.

    The limits (roles, counts, share, badge age, revocations) are central's, signed into the
    bundle's ``override_policy``; only timing and the optional evidence are set here.
    """

    enabled: bool = Field(
        default=True, description="Offer overrides when the bundle carries a policy"
    )
    step_timeout_s: float = Field(
        default=60.0, gt=0, le=600, description="Longest wait for the next badge or card, seconds"
    )
    evidence: bool = Field(
        default=False,
        description="Keep the face crop of each override sealed to central (personal data)",
    )
    evidence_retention_days: float = Field(
        default=30.0, gt=0, le=365, description="Days a sealed crop is kept before deletion"
    )


class CameraConfig(Section):
    """Where frames come from."""

    kind: Literal["auto", "picamera2", "opencv", "folder"] = Field(
        default="folder",
        description="auto: picamera2 when importable, else opencv; folder: images from disk",
    )
    # Not a Path: for opencv it is a device index or a URL as well, and a Path would mangle
    # "rtsp://"; relative folders and files are read from the working directory.
    source: str = Field(
        default="",
        description="opencv: device index, video file or URL; folder: directory of images",
    )
    width: int = Field(default=640, ge=64, description="Frame width in pixels")
    height: int = Field(default=480, ge=64, description="Frame height in pixels")
    fps: float = Field(default=15.0, gt=0, description="Frames per second asked of the camera")
    loop: bool = Field(default=False, description="folder/video: start again at the end")
    queue_size: int = Field(default=2, ge=1, le=16, description="Frames buffered before dropping")
    repeat: int = Field(
        default=1, ge=1, le=1000, description="folder: each image given this many times in a row"
    )
    stall_s: float = Field(
        default=3.0, gt=0, description="No frame for this long: the camera is reopened"
    )


class SignalsConfig(Section):
    """The LED and buzzer that tell staff and recipient the outcome."""

    kind: Literal["gpiozero", "mock", "log"] = Field(
        default="mock",
        description="gpiozero: real pins; mock: gpiozero's simulated pins; log: log lines only",
    )
    led_kind: Literal["rgb", "separate"] = Field(
        default="rgb", description="One RGB LED, or three separate LEDs on the same three pins"
    )
    red_pin: int = Field(default=17, ge=0, le=27, description="BCM GPIO number of the red LED")
    green_pin: int = Field(default=27, ge=0, le=27, description="BCM GPIO number of the green LED")
    blue_pin: int = Field(default=22, ge=0, le=27, description="BCM GPIO number of the blue LED")
    buzzer_pin: int = Field(
        default=18, ge=0, le=27, description="BCM GPIO number of the active buzzer"
    )
    active_high: bool = Field(
        default=True, description="LED lights on a high pin (false for a common-anode RGB LED)"
    )

    def pins(self) -> dict[str, int]:
        """Every pin this section drives, by key."""
        return {
            "red_pin": self.red_pin,
            "green_pin": self.green_pin,
            "blue_pin": self.blue_pin,
            "buzzer_pin": self.buzzer_pin,
        }

    def problems(self) -> list[Problem]:
        """A pin given to more than one part."""
        users: dict[int, list[str]] = {}
        for key, pin in self.pins().items():
            users.setdefault(pin, []).append(key)
        return [
            Problem(
                tuple(keys),
                f"GPIO {pin} is given to {' and '.join(keys)}; each LED and the buzzer needs "
                "its own pin",
            )
            for pin, keys in users.items()
            if len(keys) > 1
        ]


class PrinterConfig(Section):
    """The receipt printer."""

    kind: Literal["serial", "usb", "file", "dummy", "none"] = Field(
        default="file",
        description="usb: usblp device (path, default /dev/bansos-printer); dummy: bytes kept "
        "in memory (tests); none: no printer",
    )
    port: str = Field(default="/dev/serial0", description="serial: the printer's serial device")
    baudrate: int = Field(default=9600, ge=1200, description="serial: line speed, bits/s")
    path: OptionalPath = Field(
        default=None,
        description="file: output file (unset: state_dir/receipts.bin); usb: the device "
        "(unset: /dev/bansos-printer)",
    )
    refusal_slip: bool = Field(default=False, description="Print a slip for refusals as well")
    timeout_s: float = Field(
        default=0.5, gt=0, le=5, description="serial: wait this long for a status answer"
    )
    status_queries: bool = Field(
        default=True,
        description="serial, usb: ask online/paper (DLE EOT); false when the printer never "
        "answers (TX not wired, or a model without DLE EOT)",
    )
    qr: Literal["native", "image"] = Field(
        default="native",
        description="native: the printer draws the QR (GS ( k); image: sent as a raster image, "
        "for printers without native QR",
    )
    profile: str = Field(
        default="", description="python-escpos profile name; empty: generic 58 mm, 32 columns"
    )

    def problems(self) -> list[Problem]:
        """A serial printer with nowhere to send its bytes."""
        if self.kind == "serial" and not self.port.strip():
            return [Problem(("port",), "kind is serial: set the printer's serial device")]
        return []


class MqttConfig(Section):
    """The link to central: events out, commands in."""

    enabled: bool = Field(default=False, description="Off: events wait in the ledger outbox")
    host: str = Field(default="localhost", description="Broker host name")
    port: int = Field(
        default=1883, ge=1, le=65535, description="Broker port (8883 for TLS, usually)"
    )
    tls: bool = Field(default=True, description="Mutual TLS; plain TCP only for a lab")
    ca_file: OptionalPath = Field(
        default=None, description="CA certificate of the broker (unset: the system's CAs)"
    )
    cert_file: OptionalPath = Field(
        default=None, description="This terminal's client certificate, issued by the central CA"
    )
    key_file: OptionalPath = Field(
        default=None, description="Private key of the client certificate (made at provisioning)"
    )
    username: str = Field(
        default="", description="Broker user name; with mutual TLS the broker takes the CN"
    )
    password: SecretStr = Field(
        default=SecretStr(""), description="Broker password (hidden in check-config output)"
    )
    keepalive_s: int = Field(default=30, ge=5, description="MQTT keep-alive interval, seconds")
    health_interval_s: float = Field(
        default=60.0, gt=0, description="Seconds between health reports to central"
    )
    topic_prefix: str = Field(
        default="bansos/v1",
        pattern=r"^[^/+#\s]+(/[^/+#\s]+)*$",
        description="First levels of every topic (no wildcards, no leading or trailing '/')",
    )

    def problems(self) -> list[Problem]:
        """Settings an enabled link cannot connect with."""
        if not self.enabled:
            return []
        found = []
        if not self.host.strip():
            found.append(Problem(("host",), "mqtt is enabled: set the broker's host name"))
        if self.tls and self.cert_file is None:
            found.append(
                Problem(
                    ("cert_file",),
                    "tls is on: set the client certificate issued by the central CA "
                    "(or tls = false for a lab broker)",
                )
            )
        if self.tls and self.key_file is None:
            found.append(
                Problem(
                    ("key_file",),
                    "tls is on: set the client certificate's private key "
                    "(provisioning makes state_dir/keys/tls_key.pem)",
                )
            )
        if self.password.get_secret_value() and not self.username.strip():
            found.append(
                Problem(("password",), "a password is only sent with a username: set mqtt.username")
            )
        return found


class BundleConfig(Section):
    """Enrolment bundles and commands from central."""

    central_public_key: OptionalPath = Field(
        default=None,
        description="PEM file with central's Ed25519 public key, which signs bundles and "
        "commands; unset: bundles cannot be verified and remote commands are off",
    )


class RetentionConfig(Section):
    """How long personal data stays on the terminal (``edge prune``, daily by systemd timer).

    Nothing of the round of an installed bundle is pruned, nor any event central has not
    acknowledged, nor a payout whose receipt is not printed yet.
    """

    ledger_days: int = Field(
        default=90,
        ge=1,
        description="Events acknowledged by central and older than this lose their content "
        "(the chain keeps hash and signature); payouts of past rounds are deleted",
    )
    synced_days: int = Field(
        default=30,
        ge=1,
        description="Payouts reported by other terminals (claims sync) are kept this long",
    )
    debug_crops_days: int = Field(
        default=7, ge=1, description="Face crops of flow.store_debug_images are kept this long"
    )


class OtaConfig(Section):
    """Fleet updates: signed releases from central, installed side by side (edge/ota)."""

    release_public_key: OptionalPath = Field(
        default=None,
        description="PEM file with the release Ed25519 public key, installed at provisioning; "
        "it must not be central's bundle key. Unset: update commands are refused",
    )
    root: ConfigPath = Field(
        default=Path("/opt/edge"),
        description="Prefix holding releases/<version>, the current and previous links",
    )
    ca_file: OptionalPath = Field(
        default=None,
        description="The only CA trusted for HTTPS release downloads (pinned); unset: "
        "releases arrive only in chunks over MQTT",
    )
    max_bytes: int = Field(
        default=1 << 30, gt=0, description="Largest release artefact accepted, bytes"
    )
    confirm_timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds a new release has to pass selftest and READY"
    )
    apply_wait_s: float = Field(
        default=1800.0,
        gt=0,
        description="Seconds the daemon waits for the installer to answer its request "
        "(unpacking a release on a Pi takes minutes; payouts go on meanwhile) before it "
        "reports the update failed",
    )


class LoggingConfig(Section):
    """What the daemon logs."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged"
    )


def _rules_in_schema(schema: dict[str, Any]) -> None:
    schema["description"] = (
        schema.get("description", "")
        + "\n\nRules across keys:\n"
        + "\n".join(f"- {rule}" for rule in RULES)
    )


class Config(Section):
    """The whole terminal configuration (one TOML file)."""

    model_config = ConfigDict(json_schema_extra=_rules_in_schema)

    device: DeviceConfig = Field(default_factory=DeviceConfig, description=DeviceConfig.__doc__)
    models: ModelsConfig = Field(default_factory=ModelsConfig, description=ModelsConfig.__doc__)
    vision: VisionConfig = Field(default_factory=VisionConfig, description=VisionConfig.__doc__)
    liveness: LivenessConfig = Field(
        default_factory=LivenessConfig, description=LivenessConfig.__doc__
    )
    flow: FlowConfig = Field(default_factory=FlowConfig, description=FlowConfig.__doc__)
    override: OverrideConfig = Field(
        default_factory=OverrideConfig, description=OverrideConfig.__doc__
    )
    camera: CameraConfig = Field(default_factory=CameraConfig, description=CameraConfig.__doc__)
    signals: SignalsConfig = Field(default_factory=SignalsConfig, description=SignalsConfig.__doc__)
    printer: PrinterConfig = Field(default_factory=PrinterConfig, description=PrinterConfig.__doc__)
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description=MqttConfig.__doc__)
    bundle: BundleConfig = Field(default_factory=BundleConfig, description=BundleConfig.__doc__)
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig, description=RetentionConfig.__doc__
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description=LoggingConfig.__doc__)
    ota: OtaConfig = Field(default_factory=OtaConfig, description=OtaConfig.__doc__)

    @property
    def state_path(self) -> Path:
        """``device.state_dir``: ledger, keys, bundles and receipts."""
        return self.device.state_dir

    def problems(self) -> list[Problem]:
        """Rules across sections (each section checks its own keys first)."""
        return self._frame_budget() + self._uart_pins()

    def _frame_budget(self) -> list[Problem]:
        # A capture window that cannot hold the frames a decision needs ends every claim in
        # "poor quality", which looks like a camera fault in the field.
        need, key = self.flow.good_frames, "flow.good_frames"
        if self.liveness.enabled and self.liveness.min_frames > need:
            need, key = self.liveness.min_frames, "liveness.min_frames"
        timeout, fps = self.flow.capture_timeout_s, self.camera.fps
        if need <= timeout * fps + 1e-9:
            return []
        return [
            Problem(
                (key, "flow.capture_timeout_s", "camera.fps"),
                f"{need} good frames are needed but a {timeout:g} s window at {fps:g} fps "
                f"holds at most {math.floor(timeout * fps + 1e-9)}; raise flow.capture_timeout_s "
                f"to at least {math.ceil(10 * need / fps) / 10:g} s or lower {key}",
            )
        ]

    def _uart_pins(self) -> list[Problem]:
        if self.printer.kind != "serial" or self.printer.port not in UART_PORTS:
            return []
        return [
            Problem(
                (f"signals.{key}", "printer.port"),
                f"GPIO {pin} is the UART's {UART_PINS[pin]}, which the serial printer on "
                f"{self.printer.port} uses; move {key.removesuffix('_pin')} to another pin",
            )
            for key, pin in self.signals.pins().items()
            if pin in UART_PINS
        ]


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


def _echo_input(err: Any) -> bool:
    """Show the offending value, except tables and anything that may be a secret."""
    if "input" not in err or isinstance(err["input"], dict | list):
        return False
    return not any(word in str(err["loc"][-1]) for word in ("password", "secret", "token"))


def _error_lines(err: Any) -> list[str]:
    """One ``  key.path: message`` line per problem in a pydantic error."""
    path = ".".join(str(p) for p in err["loc"])
    if err["type"] == "cross_key":
        prefix = path + "." if path else ""
        return [
            f"  {', '.join(prefix + key for key in p.keys)}: {p.fix}"
            for p in err["ctx"]["problems"]
        ]
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key" + _suggest(Config, err["loc"])
    elif _echo_input(err):
        msg = f"{msg} (got {type(err['input']).__name__} {err['input']!r:.40})"
    return [f"  {path or '(top level)'}: {msg}"]


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [line for err in exc.errors() for line in _error_lines(err)]
    return "\n".join([f"{source}: {len(lines)} error(s)", *lines])


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a mapping against the schema; raise ConfigError listing every bad key path."""
    try:
        # Strict: TOML is typed, so "5" for an integer or 1 for a boolean is a mistake to report,
        # not to coerce. Python callers constructing sections directly keep lax validation.
        return Config.model_validate(data, strict=True)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from exc
    except RecursionError as exc:
        raise ConfigError(f"{source}: values nested too deeply") from exc


def revalidate(cfg: Config, source: str = "<config>") -> None:
    """Check a config changed in place against every rule; raise ConfigError if one breaks.

    Assigning a key validates that key and its own section, but not the rules that span
    sections (the capture window against liveness, say): call this after such changes.
    """
    try:
        Config.model_validate(cfg.model_dump())
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
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: config file of {len(raw)} bytes is too large")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    except RecursionError as exc:
        # tomllib parses nested arrays recursively: 1,000 "[" must be an error, not a traceback.
        raise ConfigError(f"{p}: not valid TOML: arrays or tables nested too deeply") from exc
    return parse_config(data, str(p))
