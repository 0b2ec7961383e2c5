"""The config schema and `edge check-config`: defaults, key-path errors, secrets hidden."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge.__main__ import main
from edge.config import (
    Config,
    dump_effective,
    dump_toml,
    load_config,
    parse_config,
)
from edge.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "systemd" / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text, encoding="utf-8")
    return p


def check_config(capsys, path: Path) -> tuple[int, str, str]:
    code = main(["check-config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


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
        '[mqtt]\nenabled = true\nusername = "edge"\npassword = "hunter2-very-secret"\n',
    )
    code, out, err = check_config(capsys, path)
    assert code == 0, err
    assert "hunter2" not in out and "hunter2" not in err
    effective = tomllib.loads(out)
    assert effective["mqtt"]["enabled"] is True
    assert effective["mqtt"]["password"] == "**********"
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
            "bundle": {"central_public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END"},
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


def test_dump_toml_leaves_out_unset_values():
    assert dump_toml({"a": {"x": None, "y": 1}, "b": True}) == "b = true\n\n[a]\ny = 1\n"
