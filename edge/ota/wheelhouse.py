"""A release's wheelhouse from the hash-pinned lock of one target image.

``edge release build --target bookworm-aarch64`` puts in the release exactly the wheelhouse a
technician installs offline (provisioning/wheelhouse.py): every wheel of
``requirements/<target>.txt``, the terminal's own wheel, and the lock itself as
``wheels/requirements.txt``. A terminal then installs it with no index and ``--require-hashes``
(:func:`edge.ota.deploy.venv_deploy`, provisioning/firstboot.py), so an update over the air and
an install from an SD card are the same artefact.

The builder is the checkout's own provisioning/wheelhouse.py (standard library only, not part
of the installed package), loaded from the checkout being released so that its lock and its
code are the ones built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from edge.errors import ReleaseError

LOCK_NAME = "requirements.txt"  # in wheels/, as provisioning/wheelhouse.py writes it

Builder = Callable[[Path, str], list[Path]]


def provisioning_module(checkout: Path) -> ModuleType:
    """The checkout's provisioning/wheelhouse.py, loaded as a module of its own."""
    path = Path(checkout) / "provisioning" / "wheelhouse.py"
    if not path.is_file():
        raise ReleaseError(f"{path}: missing; a --target release needs the provisioning tools")
    name = "_release_wheelhouse_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs: its dataclasses look their module up by name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def lock_wheelhouse(target: str, builder: Builder | None = None):
    """A wheelhouse function for :func:`edge.ota.release.build_release` that builds the
    hash-pinned wheelhouse of ``target`` ("bookworm-aarch64", "trixie-aarch64", "x86_64").

    ``builder(dest, target)`` defaults to the checkout's ``build_wheelhouse`` (PyPI once).
    """

    def wheelhouse(checkout: Path, out: Path, *, platform=None, deps=False) -> dict:
        build, python = builder, None
        if build is None:
            module = provisioning_module(checkout)
            if target not in module.TARGETS:
                known = ", ".join(module.TARGETS)
                raise ReleaseError(f"unknown target {target!r}: one of {known}")
            build, python = module.build_wheelhouse, module.TARGETS[target].python
        try:
            wheels = build(out, target)
        except subprocess.CalledProcessError as exc:
            raise ReleaseError(f"wheelhouse for {target} not built: {exc}") from exc
        if not (out / LOCK_NAME).is_file():
            raise ReleaseError(f"wheelhouse for {target}: no {LOCK_NAME} (the lock) in it")
        # "python": the image's, which the lock's wheels are for (not this machine's).
        facts = {"platform": target, "deps": True, "target": target, "lock": LOCK_NAME}
        return {**facts, "wheels": len(wheels), **({"python": python} if python else {})}

    return wheelhouse
