"""ModelStore refuses every broken model with one clear line, on temporary copies of the build."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from edge.errors import ModelError
from edge.modelstore import REQUIRED, ModelStore


def _copy(models_dir: Path, dest: Path, names: tuple[str, ...]) -> Path:
    """A models folder with only ``names`` (small ones keep the tests fast)."""
    doc = json.loads((models_dir / "manifest.json").read_text())
    doc["models"] = {n: doc["models"][n] for n in names}
    dest.mkdir()
    for entry in doc["models"].values():
        shutil.copyfile(models_dir / entry["file"], dest / entry["file"])
    (dest / "manifest.json").write_text(json.dumps(doc))
    return dest


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc["models"])
    path.write_text(json.dumps(doc))


@pytest.fixture
def store_dir(models_dir: Path, tmp_path: Path) -> Path:
    return _copy(models_dir, tmp_path / "models", ("detector", "embedder_int8"))


def _refusal(directory: Path, **kw) -> str:
    # By default every model of the copy is required, as the daemon requires what it uses.
    try:
        every = list(json.loads((directory / "manifest.json").read_text())["models"])
    except (OSError, ValueError, KeyError, TypeError):
        every = list(REQUIRED)  # the manifest itself is what the test breaks
    with pytest.raises(ModelError) as err:
        ModelStore.load(directory, required=kw.pop("required", every), **kw)
    msg = str(err.value)
    assert "\n" not in msg
    assert "run `make models` to rebuild" in msg
    return msg


def test_built_models_load_with_every_required_model(models_dir: Path) -> None:
    store = ModelStore.load(models_dir, required=REQUIRED)
    assert set(REQUIRED) <= set(store.names())
    for name in store.names():
        data = store.bytes(name)
        assert hashlib.sha256(data).hexdigest() == store.sha256(name) == store.entry(name)["sha256"]
        assert store.model_id(name).endswith(store.sha256(name)[:12])


def test_copy_loads_and_answers_lookups(store_dir: Path) -> None:
    store = ModelStore.load(store_dir, required=("detector",))
    assert store.names() == ["detector", "embedder_int8"]
    assert store.entry("embedder_int8")["inputs"][0]["dtype"] == "int8"
    with pytest.raises(ModelError, match="model pad_v2: not in"):
        store.bytes("pad_v2")


def test_models_not_required_are_read_on_demand_and_still_checked(store_dir: Path) -> None:
    store = ModelStore.load(store_dir, required=("detector",))
    assert "embedder_int8" not in store._blobs  # the daemon keeps only what it uses
    data = store.bytes("embedder_int8")
    assert hashlib.sha256(data).hexdigest() == store.sha256("embedder_int8")
    other = ModelStore.load(store_dir, required=("detector",))
    (store_dir / store.entry("embedder_int8")["file"]).write_bytes(b"\0" * 10)
    with pytest.raises(ModelError, match="embedder_int8"):
        other.bytes("embedder_int8")


def test_missing_manifest(tmp_path: Path) -> None:
    msg = _refusal(tmp_path)
    assert "manifest.json not found" in msg


def test_unreadable_manifest(store_dir: Path) -> None:
    (store_dir / "manifest.json").write_text("{ not json")
    assert "unreadable" in _refusal(store_dir)


def test_required_model_absent_from_manifest(store_dir: Path) -> None:
    msg = _refusal(store_dir, required=("detector", "pad_v1se"))
    assert msg.startswith("model pad_v1se: not in")


def test_missing_file(store_dir: Path) -> None:
    (store_dir / "face_detection_short_range.tflite").unlink()
    msg = _refusal(store_dir)
    assert msg.startswith("model detector: file ") and "is missing" in msg


def test_truncated_file(store_dir: Path) -> None:
    path = store_dir / "mobilefacenet_int8.tflite"
    path.write_bytes(path.read_bytes()[:100_000])
    msg = _refusal(store_dir)
    assert msg.startswith("model embedder_int8:") and "has 100000 bytes" in msg


def test_corrupt_file_same_size(store_dir: Path) -> None:
    path = store_dir / "face_detection_short_range.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    msg = _refusal(store_dir)
    assert msg.startswith("model detector:") and "sha256" in msg


def test_manifest_sha_mismatch(store_dir: Path) -> None:
    _edit_manifest(store_dir, lambda m: m["embedder_int8"].update(sha256="0" * 64))
    msg = _refusal(store_dir)
    assert msg.startswith("model embedder_int8:") and "is not 000000000000" in msg


@pytest.mark.parametrize(
    ("kind", "field", "value", "expect"),
    [
        ("inputs", "shape", [1, 128, 128, 3], "input img_inputs [1, 112, 112, 3] int8"),
        (
            "inputs",
            "dtype",
            "float32",
            "does not match manifest img_inputs [1, 112, 112, 3] float32",
        ),
        ("outputs", "shape", [1, 512], "does not match manifest"),
        ("outputs", "name", "features", "output embeddings [1, 128] float32 does not match"),
    ],
)
def test_tensor_spec_mismatch(store_dir: Path, kind, field, value, expect) -> None:
    _edit_manifest(store_dir, lambda m: m["embedder_int8"][kind][0].update({field: value}))
    msg = _refusal(store_dir)
    assert msg.startswith("model embedder_int8:") and expect in msg


def test_quantization_mismatch(store_dir: Path) -> None:
    def edit(models):
        models["embedder_int8"]["inputs"][0]["quantization"]["scale"] *= 2

    _edit_manifest(store_dir, edit)
    assert "quantization differs" in _refusal(store_dir)


def test_wrong_model_under_the_right_sum(store_dir: Path) -> None:
    """A different valid model in place (manifest sum updated) is caught by its tensors."""
    wrong = (store_dir / "mobilefacenet_int8.tflite").read_bytes()
    (store_dir / "face_detection_short_range.tflite").write_bytes(wrong)

    def edit(models):
        models["detector"].update(sha256=hashlib.sha256(wrong).hexdigest(), bytes=len(wrong))

    _edit_manifest(store_dir, edit)
    msg = _refusal(store_dir)
    assert msg.startswith("model detector: input img_inputs")


def test_not_a_model(store_dir: Path) -> None:
    junk = b"not a flatbuffer" * 100
    (store_dir / "face_detection_short_range.tflite").write_bytes(junk)

    def edit(models):
        models["detector"].update(sha256=hashlib.sha256(junk).hexdigest(), bytes=len(junk))

    _edit_manifest(store_dir, edit)
    assert "does not load as a TFLite model" in _refusal(store_dir)
