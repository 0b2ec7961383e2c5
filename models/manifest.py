"""Manifest entries, the freshness rule and manifest.json I/O shared by the build steps."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from models.fetch import sha256_bytes, sha256_file

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_VERSION = 1
# Bump when the way an entry is made changes without any source file changing.
RECIPE_VERSION = 2


def progress(msg: str) -> None:
    """One progress line on stdout (the build runs unattended in CI)."""
    print(f"models: {msg}", flush=True)


def key(*parts: object) -> str:
    """Short digest of everything an entry was made from; a change means rebuild."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def source_key(*modules: str) -> bytes:
    """The source of build modules under models/, so that editing a recipe rebuilds its output."""
    return b"".join((ROOT / "models" / m).read_bytes() for m in modules)


def fresh(entry: dict | None, out: Path, key: str) -> bool:
    """An entry is fresh when it was made by the same recipe and its file is intact."""
    if not entry or entry.get("build", {}).get("key") != key:
        return False
    path = out / entry["file"]
    return (
        path.is_file()
        and path.stat().st_size == entry.get("bytes")
        and sha256_file(path) == entry.get("sha256")
    )


def write(out: Path, name: str, data: bytes) -> None:
    """Replace out/name atomically: a reader never sees half a model."""
    tmp = out / (name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out / name)


def entry(file: str, data: bytes, model_id_prefix: str, key: str, **fields) -> dict:
    """A manifest entry for model bytes, with tensor specs read by LiteRT."""
    from models.evaluate import tensor_specs

    inputs, outputs = tensor_specs(data)
    sha = sha256_bytes(data)
    return {
        "file": file,
        "sha256": sha,
        "bytes": len(data),
        "model_id": f"{model_id_prefix}-{sha[:12]}",
        **fields,
        "inputs": inputs,
        "outputs": outputs,
        "build": {"key": key, "recipe": RECIPE_VERSION},
    }


def load(out: Path) -> dict:
    """The entries of out/manifest.json, or {} when there is none usable."""
    try:
        data = json.loads((out / "manifest.json").read_text())
        return data["models"] if data.get("version") == MANIFEST_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def save(out: Path, entries: dict) -> None:
    """Write out/manifest.json in a stable order (untouched when nothing changed)."""
    order = [
        "detector",
        "landmarks",
        "embedder_int8",
        "embedder_dynamic",
        "embedder_float",
        "pad_v2",
        "pad_v1se",
    ]
    names = [n for n in order if n in entries] + sorted(set(entries) - set(order))
    doc = {"version": MANIFEST_VERSION, "models": {n: entries[n] for n in names}}
    text = json.dumps(doc, indent=1) + "\n"
    path = out / "manifest.json"
    if path.is_file() and path.read_text() == text:
        return
    tmp = out / "manifest.json.tmp"
    tmp.write_text(text)
    tmp.replace(path)
