"""The config schema and `edge check-config`: defaults, key-path errors, rules across keys,
paths, the central key file, and the schema explaining itself."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ValidationError

from edge.__main__ import main
from edge.cli.config_text import dump_effective, dump_toml, explain, json_schema
from edge.config import RULES, Config, load_config, parse_config, revalidate
from edge.errors import CommandRefused, ConfigError, KeyFileError
from edge.keys import DeviceIdentity, load_central_public_pem, public_pem
from edge.mqtt.remote_config import apply_config_changes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "systemd" / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text, encoding="utf-8")
    return p


def check_config(capsys, *args: str | Path) -> tuple[int, str, str]:
    code = main(["check-config", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def refusal(text: str) -> list[str]:
    """The error lines (after the count line) check-config gives for a TOML text."""
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text))
    lines = str(info.value).splitlines()
    assert lines[0] == f"<config>: {len(lines) - 1} error(s)"
    return lines[1:]


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg == Config()
    assert cfg.camera.kind == "folder" and cfg.mqtt.enabled is False


def test_values_are_read(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            '[device]\nid = "edge-3273-0042"\nregency = "3273"\n'
            "[vision.quality]\nmin_sharpness = 31.5\n[camera]\nfps = 10\n",
        )
    )
    assert cfg.device.id == "edge-3273-0042"
    assert cfg.device.regency == "3273"
    assert cfg.vision.quality.min_sharpness == 31.5
    # A TOML integer for a float field is a number all the same.
    assert cfg.camera.fps == 10.0 and isinstance(cfg.camera.fps, float)


def test_check_config_prints_effective_config_with_secrets_hidden(tmp_path, capsys):
    path = write(
        tmp_path,
        '[mqtt]\nenabled = true\nusername = "edge"\npassword = "hunter2-very-secret"\n'
        'cert_file = "/etc/edge/device.crt"\nkey_file = "/var/lib/edge/keys/tls_key.pem"\n',
    )
    code, out, err = check_config(capsys, path)
    assert code == 0, err
    assert "hunter2" not in out and "hunter2" not in err
    effective = tomllib.loads(out)
    assert effective["mqtt"]["enabled"] is True
    assert effective["mqtt"]["password"] == "**********"
    assert effective["mqtt"]["cert_file"] == "/etc/edge/device.crt"
    assert "ca_file" not in effective["mqtt"]  # unset: TOML has no null, so it is left out
    # Defaults are part of the effective config, not only what the file says.
    assert effective["vision"]["quality"]["min_sharpness"] == Config().vision.quality.min_sharpness
    assert effective["device"]["id"] == Config().device.id


def test_malformed_toml(tmp_path, capsys):
    path = write(tmp_path, '[device]\nid = "edge-0001\nregency = "3171"\n')
    code, out, err = check_config(capsys, path)
    assert code == 1
    assert out == ""
    assert "not valid TOML" in err and "line 2" in err
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_unknown_nested_key_is_refused_with_its_path(tmp_path, capsys):
    path = write(tmp_path, "[vision.quality]\nmin_sharpnes = 25.0\n")
    code, _, err = check_config(capsys, path)
    assert code == 1
    assert "vision.quality.min_sharpnes: unknown key" in err
    assert "did you mean 'min_sharpness'" in err


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"(?m)^  cameras: unknown key \(did you mean 'camera'"):
        load_config(write(tmp_path, '[cameras]\nkind = "folder"\n'))


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('[camera]\nwidth = "640"\n', "camera.width"),  # string for an integer
        ("[camera]\nwidth = 640.0\n", "camera.width"),  # float for an integer
        ("[mqtt]\nenabled = 1\n", "mqtt.enabled"),  # integer for a boolean
        ("[device]\nregency = 3171\n", "device.regency"),  # integer for a code string
        ('[camera]\nkind = "usb"\n', "camera.kind"),  # not one of the choices
        ("[mqtt]\nport = 70000\n", "mqtt.port"),  # out of range
        ("device = 5\n", "device"),  # a scalar where a table belongs
        ("[device]\nstate_dir = 5\n", "device.state_dir"),  # a number for a path
        ('[device]\nstate_dir = ""\n', "device.state_dir"),  # an empty required path
        ("[bundle]\ncentral_public_key = true\n", "bundle.central_public_key"),
        ("[vision]\nmatch_threshold = 0.0\n", "vision.match_threshold"),  # every face matches
        ('[mqtt]\ntopic_prefix = "bansos/#"\n', "mqtt.topic_prefix"),  # a wildcard
    ],
)
def test_wrong_types_are_refused(tmp_path, text, path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    lines = str(info.value).splitlines()
    assert lines[0].endswith("1 error(s)")
    assert lines[1].startswith(f"  {path}: ")


def test_every_error_is_listed(tmp_path, capsys):
    path = write(
        tmp_path,
        '[device]\nid = "Not A Valid Id"\n[camera]\nfps = "fast"\n'
        "[mqtt]\npassword = 5\nportt = 1\n",
    )
    code, _, err = check_config(capsys, path)
    assert code == 1
    assert "4 error(s)" in err
    for key in ("device.id", "camera.fps", "mqtt.password", "mqtt.portt"):
        assert f"  {key}: " in err


def test_missing_file(tmp_path, capsys):
    code, _, err = check_config(capsys, tmp_path / "absent.toml")
    assert code == 1 and "cannot read config" in err


def test_dump_toml_round_trips():
    cfg = parse_config(
        {
            "device": {"id": "edge-0001-0002", "point_name": 'Balai "Desa"\nRT 01'},
            "bundle": {"central_public_key": "/etc/edge/central_public.pem"},
            "printer": {"path": "spool/receipts.bin"},
            "vision": {"quality": {"max_roll_deg": 12.5}},
        }
    )
    text = dump_toml(dump_effective(cfg))
    assert parse_config(tomllib.loads(text)) == cfg


def test_example_config_passes_check_config(capsys):
    code, out, err = check_config(capsys, EXAMPLE)
    assert code == 0, err
    effective = tomllib.loads(out)
    assert effective["device"]["state_dir"] == "/var/lib/edge"
    assert effective["camera"]["kind"] == "picamera2"
    assert effective["bundle"]["central_public_key"] == "/etc/edge/central_public.pem"
    cfg = load_config(EXAMPLE)
    assert cfg.mqtt.enabled and cfg.mqtt.tls and cfg.signals.kind == "gpiozero"


def test_dump_toml_leaves_out_unset_values():
    assert dump_toml({"a": {"x": None, "y": 1}, "b": True}) == "b = true\n\n[a]\ny = 1\n"


# -- paths -------------------------------------------------------------------------------------


def test_paths_are_path_objects_and_relative_ones_stay_relative(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            '[device]\nstate_dir = "state/edge"\n[models]\ndir = "/opt/edge/models"\n'
            '[printer]\npath = "out/receipts.bin"\n'
            '[mqtt]\nca_file = "ca.pem"\ncert_file = "/etc/edge/device.crt"\nkey_file = "k.pem"\n'
            '[bundle]\ncentral_public_key = "central.pub"\n',
        )
    )
    assert cfg.device.state_dir == Path("state/edge") and cfg.state_path == Path("state/edge")
    # Relative to the working directory, as before: not resolved, not tied to the file's folder.
    assert not cfg.device.state_dir.is_absolute()
    assert cfg.models.dir == Path("/opt/edge/models")
    assert cfg.printer.path == Path("out/receipts.bin")
    assert (cfg.mqtt.ca_file, cfg.mqtt.cert_file, cfg.mqtt.key_file) == (
        Path("ca.pem"),
        Path("/etc/edge/device.crt"),
        Path("k.pem"),
    )
    assert cfg.bundle.central_public_key == Path("central.pub")


def test_unset_optional_paths_are_none_and_an_empty_string_means_unset(tmp_path):
    assert Config().bundle.central_public_key is None and Config().printer.path is None
    # Files written before these keys were paths say "not set" with "".
    cfg = load_config(write(tmp_path, '[bundle]\ncentral_public_key = ""\n[mqtt]\nca_file = ""\n'))
    assert cfg.bundle.central_public_key is None and cfg.mqtt.ca_file is None


def test_python_callers_may_assign_strings_to_path_keys(tmp_path):
    cfg = Config()
    cfg.device.state_dir = str(tmp_path / "state")
    cfg.models.dir = tmp_path / "models"
    assert cfg.state_path == tmp_path / "state" and cfg.models.dir == tmp_path / "models"


# -- rules across keys: each accepted at its edge and refused just past it ---------------------

MQTT_TLS = (
    '[mqtt]\nenabled = true\nhost = "mqtt.example"\n'
    'cert_file = "/etc/edge/device.crt"\nkey_file = "/var/lib/edge/keys/tls_key.pem"\n'
)
UART_PRINTER = '[printer]\nkind = "serial"\nport = "/dev/serial0"\n'

RULE_CASES = [
    pytest.param(
        "[vision.quality]\nmin_brightness = 100.0\nmax_brightness = 101.0\n",
        "[vision.quality]\nmin_brightness = 120.0\nmax_brightness = 120.0\n",
        "vision.quality.min_brightness, vision.quality.max_brightness: min_brightness (120) "
        "must be below max_brightness (120)",
        id="brightness",
    ),
    pytest.param(
        "[liveness]\nmin_frames = 60\nmax_frames = 60\n",
        "[liveness]\nmin_frames = 61\nmax_frames = 60\n",
        "liveness.min_frames, liveness.max_frames: min_frames (61) is above max_frames (60)",
        id="liveness-frames",
    ),
    pytest.param(
        "[flow]\ncapture_timeout_s = 2.0\n[camera]\nfps = 10.0\n",  # exactly the 20 frames
        "[flow]\ncapture_timeout_s = 1.0\n[camera]\nfps = 15.0\n",
        "liveness.min_frames, flow.capture_timeout_s, camera.fps: 20 good frames are needed "
        "but a 1 s window at 15 fps holds at most 15; raise flow.capture_timeout_s to at "
        "least 1.4 s or lower liveness.min_frames",
        id="window-liveness",
    ),
    pytest.param(
        "[liveness]\nenabled = false\n[flow]\ncapture_timeout_s = 1.0\ngood_frames = 15\n",
        "[liveness]\nenabled = false\n[flow]\ncapture_timeout_s = 1.0\ngood_frames = 16\n",
        "flow.good_frames, flow.capture_timeout_s, camera.fps: 16 good frames are needed",
        id="window-good-frames",
    ),
    pytest.param(
        "[signals]\nred_pin = 5\ngreen_pin = 6\nblue_pin = 13\nbuzzer_pin = 19\n",
        "[signals]\nred_pin = 18\n",
        "signals.red_pin, signals.buzzer_pin: GPIO 18 is given to red_pin and buzzer_pin; "
        "each LED and the buzzer needs its own pin",
        id="pins",
    ),
    pytest.param(
        UART_PRINTER + "[signals]\nbuzzer_pin = 16\n",
        UART_PRINTER + "[signals]\nbuzzer_pin = 14\n",
        "signals.buzzer_pin, printer.port: GPIO 14 is the UART's TXD, which the serial printer "
        "on /dev/serial0 uses; move buzzer to another pin",
        id="uart-pins",
    ),
    pytest.param(
        '[printer]\nkind = "file"\nport = ""\n',
        '[printer]\nkind = "serial"\nport = ""\n',
        "printer.port: kind is serial: set the printer's serial device",
        id="serial-port",
    ),
    pytest.param(
        '[mqtt]\nenabled = false\nhost = ""\n',
        '[mqtt]\nenabled = true\ntls = false\nhost = ""\n',
        "mqtt.host: mqtt is enabled: set the broker's host name",
        id="mqtt-host",
    ),
    pytest.param(
        MQTT_TLS,
        '[mqtt]\nenabled = true\nhost = "mqtt.example"\nkey_file = "k.pem"\n',
        "mqtt.cert_file: tls is on: set the client certificate issued by the central CA",
        id="tls-cert",
    ),
    pytest.param(
        '[mqtt]\nenabled = true\ntls = false\nhost = "10.0.0.2"\n',
        '[mqtt]\nenabled = true\nhost = "mqtt.example"\ncert_file = "c.pem"\n',
        "mqtt.key_file: tls is on: set the client certificate's private key",
        id="tls-key",
    ),
    pytest.param(
        MQTT_TLS + 'username = "edge"\npassword = "pw"\n',
        MQTT_TLS + 'password = "pw"\n',
        "mqtt.password: a password is only sent with a username: set mqtt.username",
        id="password-username",
    ),
]


@pytest.mark.parametrize(("accepted", "refused", "line"), RULE_CASES)
def test_rule_across_keys(accepted, refused, line):
    parse_config(tomllib.loads(accepted))
    lines = refusal(refused)
    assert len(lines) == 1
    assert lines[0].startswith(f"  {line}"), lines[0]


def test_tls_with_no_certificate_files_names_both_keys(tmp_path, capsys):
    path = write(tmp_path, '[mqtt]\nenabled = true\nhost = "mqtt.example"\n')
    code, out, err = check_config(capsys, path)
    assert code == 1 and out == ""
    assert err.splitlines()[0].endswith("2 error(s)")
    assert "  mqtt.cert_file: tls is on" in err and "  mqtt.key_file: tls is on" in err


def test_one_pin_for_three_parts_is_one_error_naming_all_three():
    lines = refusal("[signals]\nred_pin = 18\ngreen_pin = 18\n")
    assert lines == [
        "  signals.red_pin, signals.green_pin, signals.buzzer_pin: GPIO 18 is given to red_pin "
        "and green_pin and buzzer_pin; each LED and the buzzer needs its own pin"
    ]


def test_rule_errors_in_several_sections_and_type_errors_are_all_listed():
    lines = refusal(
        "[liveness]\nmin_frames = 70\n[signals]\nred_pin = 22\n"
        "[vision.quality]\nmin_brightness = 250.0\n[camera]\nwidth = 1.5\n"
    )
    keys = [line.split(": ")[0].strip() for line in lines]
    assert keys == [
        "vision.quality.min_brightness, vision.quality.max_brightness",
        "liveness.min_frames, liveness.max_frames",
        "camera.width",
        "signals.red_pin, signals.blue_pin",
    ]


def test_a_serial_printer_elsewhere_leaves_the_uart_pins_free():
    cfg = parse_config(
        tomllib.loads(
            '[printer]\nkind = "serial"\nport = "/dev/ttyUSB0"\n[signals]\nred_pin = 14\n'
        )
    )
    assert cfg.signals.red_pin == 14


def test_assigning_a_key_checks_the_rules_of_its_section_and_a_refusal_changes_nothing():
    cfg = Config()
    with pytest.raises(ValidationError, match="min_frames"):
        cfg.liveness.min_frames = cfg.liveness.max_frames + 1
    assert cfg.liveness.min_frames == 20
    with pytest.raises(ValidationError, match="buzzer_pin"):
        cfg.signals.buzzer_pin = cfg.signals.red_pin
    assert cfg.signals.buzzer_pin == 18
    cfg.liveness.min_frames = 30
    assert cfg.liveness.min_frames == 30


def test_revalidate_checks_rules_across_sections():
    cfg = Config()
    cfg.flow.capture_timeout_s = 0.5  # its own section has no objection
    with pytest.raises(ConfigError, match=r"liveness.min_frames, flow.capture_timeout_s"):
        revalidate(cfg)
    cfg.flow.capture_timeout_s = 6.0
    revalidate(cfg)


def test_config_command_breaking_a_rule_across_sections_changes_nothing():
    cfg = Config()
    with pytest.raises(CommandRefused, match="flow.capture_timeout_s, camera.fps"):
        apply_config_changes(cfg, {"flow.cooldown_s": 1.0, "flow.capture_timeout_s": 0.5})
    assert (cfg.flow.cooldown_s, cfg.flow.capture_timeout_s) == (5.0, 6.0)
    done = apply_config_changes(cfg, {"flow.capture_timeout_s": 2.0})
    assert done == {"changed": {"flow.capture_timeout_s": [6.0, 2.0]}}


# -- the central public key is a file named in the config --------------------------------------


def central_config(tmp_path: Path, key_file: Path) -> Config:
    return load_config(write(tmp_path, f'[bundle]\ncentral_public_key = "{key_file}"\n'))


def test_central_key_is_read_from_the_configured_file(tmp_path):
    pem = DeviceIdentity.generate().device_public_pem()
    (tmp_path / "central.pub").write_bytes(pem)
    cfg = central_config(tmp_path, tmp_path / "central.pub")
    assert load_central_public_pem(cfg.bundle.central_public_key) == pem


def test_no_central_key_configured_gives_none_even_with_a_file_in_the_state_dir(tmp_path):
    # The old fallback (state_dir/keys/central_public.pem) is gone: only the config names it.
    cfg = parse_config({"device": {"state_dir": str(tmp_path)}})
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "central_public.pem").write_bytes(
        DeviceIdentity.generate().device_public_pem()
    )
    assert load_central_public_pem(cfg.bundle.central_public_key) is None


def test_a_missing_central_key_file_is_an_error_naming_the_key(tmp_path):
    cfg = central_config(tmp_path, tmp_path / "absent.pem")
    with pytest.raises(KeyFileError) as info:
        load_central_public_pem(cfg.bundle.central_public_key)
    assert str(info.value).startswith(f"bundle.central_public_key: cannot read {tmp_path}")


@pytest.mark.parametrize(
    "content",
    [
        public_pem(ec.generate_private_key(ec.SECP256R1()).public_key()),
        b"not a key at all\n",
    ],
    ids=["ec-key", "garbage"],
)
def test_a_central_key_file_that_is_not_ed25519_is_an_error_naming_the_key(tmp_path, content):
    (tmp_path / "central.pub").write_bytes(content)
    cfg = central_config(tmp_path, tmp_path / "central.pub")
    with pytest.raises(KeyFileError, match=r"^bundle.central_public_key: .*central.pub: "):
        load_central_public_pem(cfg.bundle.central_public_key)


def test_pem_text_in_the_config_is_not_taken_for_a_key(tmp_path):
    # It used to be sniffed and accepted; now the key names a file, and no such file exists.
    pem = DeviceIdentity.generate().device_public_pem().decode()
    cfg = parse_config({"bundle": {"central_public_key": pem}})
    with pytest.raises(KeyFileError, match="^bundle.central_public_key: cannot read"):
        load_central_public_pem(cfg.bundle.central_public_key)


def test_daemon_start_fails_on_a_missing_central_key(tmp_path, models_dir):
    from edge.app import App

    cfg = Config()
    cfg.models.dir = models_dir
    cfg.device.state_dir = tmp_path / "state"
    cfg.liveness.enabled = False
    cfg.bundle.central_public_key = tmp_path / "central.pub"
    with pytest.raises(KeyFileError, match="bundle.central_public_key"):
        App(cfg)


# -- the schema explains itself ----------------------------------------------------------------


def fields(model: type[BaseModel], prefix: str = ""):
    """Every (key path, FieldInfo) of a model, sections included."""
    for name, field in model.model_fields.items():
        yield prefix + name, field
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from fields(field.annotation, f"{prefix}{name}.")


def test_every_key_has_a_description():
    missing = [path for path, field in fields(Config) if not (field.description or "").strip()]
    assert missing == []
    assert len(list(fields(Config))) > 90  # the walk reaches every section


def test_check_config_explain_lists_every_key_with_type_default_and_description(capsys):
    code, out, _ = check_config(capsys, "--explain")
    assert code == 0 and out == explain()
    sections = {line for line in out.splitlines() if line.startswith("[")}
    assert {"[device]", "[vision]", "[vision.quality]", "[mqtt]", "[bundle]"} <= sections
    for path, field in fields(Config):
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            continue
        assert f"\n    {field.description}\n" in out, path
    block = out.split("[liveness]\n")[1]
    assert "min_frames = 20\n    integer, x >= 2\n    Frames with a good face" in block
    assert "threshold = 0.5\n    number, 0 < x <= 1\n" in block
    mqtt = out.split("[mqtt]\n")[1]
    assert "ca_file = (unset)\n    path, optional\n" in mqtt
    assert 'kind = "mock"\n    one of "gpiozero", "mock", "log"\n' in out
    for rule in RULES:
        assert f"#  - {rule}\n" in out


def test_check_config_schema_is_the_json_schema_and_validates_the_example(capsys):
    code, out, _ = check_config(capsys, "--schema")
    assert code == 0
    schema = json.loads(out)
    assert schema == json.loads(json.dumps(json_schema()))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(tomllib.loads(EXAMPLE.read_text()))
    assert list(validator.iter_errors({"camera": {"widht": 640}}))  # extra keys refused there too
    quality = schema["$defs"]["QualityConfig"]["properties"]["max_brightness"]
    assert quality["maximum"] == 255 and quality["description"].startswith("Mean grey level")
    assert all(rule in schema["description"] for rule in RULES)


def test_explain_and_schema_cannot_be_combined(capsys):
    with pytest.raises(SystemExit):
        main(["check-config", "--explain", "--schema"])
    assert "not allowed with" in capsys.readouterr().err
