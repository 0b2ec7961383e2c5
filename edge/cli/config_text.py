"""The config as text for a person: `edge check-config`'s TOML, `--explain` and `--schema`.

The schema and its rules live in :mod:`edge.config`; this module only renders them.
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from edge.config import RULES, Config
from edge.errors import ConfigError


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


_TYPE_NAMES: dict[object, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "true/false",
    Path: "path",
    SecretStr: "secret string",
}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file: types, ranges, defaults and every key's description."""
    return Config.model_json_schema()


def _range_text(field: FieldInfo) -> str:
    bounds: dict[str, Any] = {}
    for item in field.metadata:
        for name in ("gt", "ge", "lt", "le", "pattern", "max_length"):
            if getattr(item, name, None) is not None:
                bounds[name] = getattr(item, name)
    lower = f"{bounds['gt']} < " if "gt" in bounds else ""
    lower = f"{bounds['ge']} <= " if "ge" in bounds else lower
    upper = f" < {bounds['lt']}" if "lt" in bounds else ""
    upper = f" <= {bounds['le']}" if "le" in bounds else upper
    if lower and not upper:
        # "x >= 0" reads better than "0 <= x" when there is no upper bound.
        op = ">" if "gt" in bounds else ">="
        lower, upper = "", f" {op} {bounds['gt' if op == '>' else 'ge']}"
    parts = [f"{lower}x{upper}"] if lower or upper else []
    if "pattern" in bounds:
        parts.append(f"matching {bounds['pattern']}")
    if "max_length" in bounds:
        parts.append(f"at most {bounds['max_length']} characters")
    return ", ".join(parts)


def _type_text(field: FieldInfo) -> str:
    """How a key's type reads to a technician: ``number, 0 < x <= 1``, ``one of "a", "b"``."""
    ann = field.annotation
    optional = get_origin(ann) in (Union, types.UnionType) and type(None) in get_args(ann)
    if optional:
        ann = next(a for a in get_args(ann) if a is not type(None))
    if get_origin(ann) is Literal:
        text = "one of " + ", ".join(json.dumps(v) for v in get_args(ann))
    else:
        text = _TYPE_NAMES.get(ann) or str(getattr(ann, "__name__", ann))
    extra = _range_text(field)
    return text + (f", {extra}" if extra else "") + (", optional" if optional else "")


def _explain_section(name: str, model: BaseModel, out: list[str]) -> None:
    out += ["", f"[{name}]", f"# {model.__doc__}"]
    subsections = []
    defaults = model.model_dump(mode="json")
    for key, field in type(model).model_fields.items():
        value = getattr(model, key)
        if isinstance(value, BaseModel):
            subsections.append((f"{name}.{key}", value))
            continue
        default = defaults[key]
        shown = "(unset)" if default is None else _toml_value(default, key)
        out.append(f"{key} = {shown}")
        out.append(f"    {_type_text(field)}")
        out.append(f"    {field.description}")
    for sub_name, sub in subsections:
        _explain_section(sub_name, sub, out)


def explain() -> str:
    """Every key by section with its type, default and description, then the rules across keys."""
    cfg = Config()
    out = ["# Every key of the terminal config: key = default, then its type and what it does."]
    for name in Config.model_fields:
        _explain_section(name, getattr(cfg, name), out)
    out += ["", "# Rules across keys (check-config refuses a file that breaks one):"]
    out += [f"#  - {rule}" for rule in RULES]
    return "\n".join(out) + "\n"
