"""Stage timing inside the real FaceEngine, without changing what it computes.

``instrument(engine)`` wraps the public methods of the engine's parts (detector, aligner or
face mesh, quality, embedder) and the vision functions its module calls, so that one call of
``engine.analyse`` is split into the time spent in each stage. Time is exclusive: a stage
called from inside another is charged to itself only. ``restore()`` puts everything back.
"""

from __future__ import annotations

import functools
import inspect
import sys
import time
import weakref
from collections import defaultdict
from collections.abc import Callable
from typing import Any

# Which stage a part belongs to, by the module its class or function comes from.
STAGE_OF_MODULE = {
    "edge.vision.detector": "detect",
    "edge.vision.align": "align",
    "edge.vision.landmarks": "mesh",
    "edge.vision.quality": "quality",
    "edge.vision.embedder": "embed",
}


# Every wrapper made here: functools.wraps gives a wrapper its original's module, so only this
# tells a second instrument() not to wrap a wrapper.
_WRAPPERS: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()


class Probe:
    """Accumulates exclusive seconds per stage for the calls it wraps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._child: list[float] = []
        self._undo: list[tuple[object, str, object, bool]] = []

    def reset(self) -> None:
        """Forget the figures of the previous frame."""
        self.seconds.clear()
        self.calls.clear()

    def wrap(self, stage: str, fn):
        """A timing wrapper around ``fn`` charging its exclusive time to ``stage``."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._child.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                inner = self._child.pop()
                self.seconds[stage] += elapsed - inner
                self.calls[stage] += 1
                if self._child:
                    self._child[-1] += elapsed

        _WRAPPERS.add(timed)
        return timed

    def _set(self, owner: object, name: str, value: object) -> None:
        had = name in vars(owner) if not isinstance(owner, dict) else name in owner
        old = owner.get(name) if isinstance(owner, dict) else vars(owner).get(name)
        self._undo.append((owner, name, old, had))
        if isinstance(owner, dict):
            owner[name] = value
        else:
            setattr(owner, name, value)

    def restore(self) -> None:
        """Undo every wrapper, newest first."""
        for owner, name, old, had in reversed(self._undo):
            if isinstance(owner, dict):
                owner[name] = old
            elif had:
                setattr(owner, name, old)
            else:
                delattr(owner, name)
        self._undo.clear()

    def ms(self) -> dict[str, float]:
        """Milliseconds per stage for the calls since the last reset."""
        return {k: v * 1000.0 for k, v in self.seconds.items()}


# Parts whose class says more than their module: the face mesh that refines alignment points.
STAGE_OF_CLASS = {"MeshRefiner": "mesh", "FaceMesh": "mesh"}


def _stage_for(obj: object) -> str | None:
    if not inspect.isroutine(obj) and type(obj).__name__ in STAGE_OF_CLASS:
        return STAGE_OF_CLASS[type(obj).__name__]
    mod = type(obj).__module__ if not inspect.isroutine(obj) else getattr(obj, "__module__", "")
    return STAGE_OF_MODULE.get(mod)


def instrument(engine: object) -> tuple[Probe, list[str]]:
    """Wrap the engine's parts; return the probe and a list of what was wrapped (for the report)."""
    probe = Probe()
    wrapped: list[str] = []
    for attr, part in list(vars(engine).items()):
        stage = _stage_for(part)
        if stage is None or inspect.isroutine(part):
            continue
        for name, _member in inspect.getmembers(type(part), inspect.isfunction):
            if name.startswith("_"):
                continue
            probe._set(part, name, probe.wrap(stage, getattr(part, name)))
            wrapped.append(f"{attr}.{name}:{stage}")
    # Functions the engine's module calls by name (e.g. `from edge.vision.align import align`).
    pipeline_mod = sys.modules.get(type(engine).__module__)
    if pipeline_mod is not None:
        namespace = vars(pipeline_mod)
        for name, obj in list(namespace.items()):
            if inspect.isfunction(obj) and obj not in _WRAPPERS:
                stage = STAGE_OF_MODULE.get(obj.__module__)
                if stage:
                    probe._set(namespace, name, probe.wrap(stage, obj))
                    wrapped.append(f"{name}():{stage}")
            elif inspect.ismodule(obj) and obj.__name__ in STAGE_OF_MODULE:
                # `from edge.vision import align` then `align.warp(...)`: wrap inside that module.
                stage = STAGE_OF_MODULE[obj.__name__]
                mod_ns = vars(obj)
                for fname, fobj in list(mod_ns.items()):
                    if (
                        inspect.isfunction(fobj)
                        and fobj.__module__ == obj.__name__
                        and not fname.startswith("_")
                    ):
                        probe._set(mod_ns, fname, probe.wrap(stage, fobj))
                        wrapped.append(f"{obj.__name__}.{fname}():{stage}")
    return probe, wrapped
