"""What every config section shares: strict validation, path keys and cross-key problems."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

# edge/config/base.py -> the source tree (models/out and ../shared are found from here).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_models_dir() -> Path:
    """``models.dir`` when unset: $EDGE_MODELS_DIR, else models/out in the source tree."""
    return Path(os.environ.get("EDGE_MODELS_DIR", str(PROJECT_ROOT / "models" / "out")))


def default_state_dir() -> Path:
    """``device.state_dir`` when unset: $EDGE_STATE_DIR, else var (relative)."""
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
