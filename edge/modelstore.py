"""The built models, checked before the terminal uses any of them.

`ModelStore.load(dir)` reads `manifest.json` (written by `make models`), and for every model
checks that the file exists, that its sha256 is the one in the manifest and that a LiteRT
interpreter sees the tensors the manifest promises. Anything else stops the start with one
line naming the model, what is wrong and how to rebuild: a terminal must never match faces
with a model other than the one its enrolment bundle was made for.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edge.errors import ModelError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
REBUILD = "run `make models` to rebuild"
# What the daemon loads; other entries in the manifest (e.g. embedder_float) are optional.
REQUIRED = ("detector", "landmarks", "embedder_int8", "embedder_dynamic", "pad_v2", "pad_v1se")


def _fail(name: str, problem: str) -> ModelError:
    return ModelError(f"model {name}: {problem}; {REBUILD}")


def _spec(detail: dict) -> dict:
    return {
        "name": detail["name"],
        "shape": [int(v) for v in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
    }


def _fmt(spec: dict) -> str:
    return f"{spec.get('name')} {spec.get('shape')} {spec.get('dtype')}"


def check_tensors(name: str, model: bytes, entry: dict) -> None:
    """Raise ModelError unless the model's input and output tensors match the manifest entry."""
    from edge.vision.runtime import load_interpreter

    # Tensor specs are known once the model is parsed; allocating would have XNNPACK pack every
    # weight and plan arenas only to drop them, leaving megabytes in the daemon's heap.
    try:
        interp = load_interpreter(model, 1)
    except Exception as exc:  # the runtime's own error types vary between LiteRT versions
        raise _fail(name, f"{entry['file']} does not load as a TFLite model ({exc})") from exc
    for kind, details in (
        ("inputs", interp.get_input_details()),
        ("outputs", interp.get_output_details()),
    ):
        want = entry.get(kind)
        if not isinstance(want, list):
            raise _fail(name, f"manifest entry has no {kind} spec")
        got = [_spec(d) for d in details]
        if len(got) != len(want):
            raise _fail(name, f"{len(got)} {kind} in the file, manifest says {len(want)}")
        for g, w in zip(got, want, strict=True):
            if g != {k: w.get(k) for k in ("name", "shape", "dtype")}:
                raise _fail(name, f"{kind[:-1]} {_fmt(g)} does not match manifest {_fmt(w)}")
        for d, w in zip(details, want, strict=True):
            q = w.get("quantization")
            scale, zero = d.get("quantization", (0.0, 0))
            if q and (not np.isclose(scale, q["scale"], rtol=1e-6) or int(zero) != q["zero_point"]):
                raise _fail(name, f"{kind[:-1]} {w['name']} quantization differs from manifest")


class ModelStore:
    """Checked model files of one build, held in memory; look them up by manifest name."""

    def __init__(self, directory: Path, entries: dict[str, dict], blobs: dict[str, bytes]):
        self.directory = directory
        self._entries = entries
        self._blobs = blobs

    @classmethod
    def load(
        cls,
        models_dir: Path | str,
        required: Iterable[str] = REQUIRED,
        check_tensors_of: Iterable[str] | None = None,
    ) -> ModelStore:
        """Read and check every model of the manifest in ``models_dir``.

        ``required`` names the models that must be present, read and checked now (default: all
        six the daemon may use); the manifest's other models are read and hash-checked when
        first asked for. Tensor specs are checked for the required models unless
        ``check_tensors_of`` names others.
        Raises ``ModelError`` (one line) on the first problem.
        """
        directory = Path(models_dir)
        path = directory / MANIFEST
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ModelError(f"models: {path} not found; {REBUILD}") from exc
        except (OSError, ValueError) as exc:
            raise ModelError(f"models: {path} is unreadable ({exc}); {REBUILD}") from exc
        if not isinstance(doc, dict) or doc.get("version") != MANIFEST_VERSION:
            raise ModelError(
                f"models: {path} is not a version {MANIFEST_VERSION} manifest; {REBUILD}"
            )
        entries = doc.get("models")
        if not isinstance(entries, dict):
            raise ModelError(f"models: {path} lists no models; {REBUILD}")
        for name in required:
            if name not in entries:
                raise _fail(name, f"not in {path}")
        required = list(required)
        checked = set(required if check_tensors_of is None else check_tensors_of)
        # Only the models this process uses are read and kept: the daemon does not carry the
        # bytes of the embedders it did not choose. Others are read (and checked) on demand.
        blobs = {}
        for name in required:
            blobs[name] = cls._read(directory, name, entries[name])
            if name in checked:
                check_tensors(name, blobs[name], entries[name])
        log.info("models checked: %s", ", ".join(f"{n}={entries[n]['model_id']}" for n in required))
        return cls(directory, entries, blobs)

    @staticmethod
    def _read(directory: Path, name: str, entry: dict) -> bytes:
        if not isinstance(entry, dict) or not all(k in entry for k in ("file", "sha256")):
            raise _fail(name, "manifest entry lacks file or sha256")
        file = directory / entry["file"]
        try:
            data = file.read_bytes()
        except FileNotFoundError as exc:
            raise _fail(name, f"file {file} is missing") from exc
        except OSError as exc:
            raise _fail(name, f"file {file} is unreadable ({exc.strerror})") from exc
        if "bytes" in entry and len(data) != entry["bytes"]:
            raise _fail(name, f"file {file} has {len(data)} bytes, manifest says {entry['bytes']}")
        got = hashlib.sha256(data).hexdigest()
        if got != entry["sha256"]:
            raise _fail(name, f"file {file} sha256 {got[:12]}... is not {entry['sha256'][:12]}...")
        return data

    def names(self) -> list[str]:
        """Names of the models in the manifest, in manifest order."""
        return list(self._entries)

    def _get(self, name: str) -> dict:
        try:
            return self._entries[name]
        except KeyError as exc:
            raise _fail(name, f"not in {self.directory / MANIFEST}") from exc

    def entry(self, name: str) -> dict:
        """The manifest entry (file, sha256, model_id, source, licence, tensor specs, ...)."""
        return self._get(name)

    def bytes(self, name: str) -> bytes:
        """The checked model file's content (pass it to edge.vision.runtime)."""
        entry = self._get(name)
        if name not in self._blobs:
            self._blobs[name] = self._read(self.directory, name, entry)
        return self._blobs[name]

    def model_id(self, name: str) -> str:
        return self._get(name)["model_id"]

    def sha256(self, name: str) -> str:
        return self._get(name)["sha256"]
