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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.config.base import Problem, Section
from edge.config.central import BundleConfig, MqttConfig, OtaConfig
from edge.config.devices import UART_PINS, UART_PORTS, CameraConfig, PrinterConfig, SignalsConfig
from edge.config.payout import FlowConfig, OverrideConfig
from edge.config.terminal import DeviceConfig, LoggingConfig, RetentionConfig
from edge.config.vision import LivenessConfig, ModelsConfig, VisionConfig
from edge.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/edge/config.toml")
# A real config is a few kB; a huge file is a mistake (or an attack on the parser).
MAX_CONFIG_BYTES = 1 << 20

# What the sections' validators and Config's enforce across keys, in words (for `edge check-config --explain`
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
