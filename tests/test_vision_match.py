"""Embeddings on real faces: genuine above impostor, fusion, flip view, the gallery 1:1 and 1:N."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest

from edge.config import Config
from edge.evaluation import eer, load_image, metrics, threshold_at_far
from edge.vision.embedder import fuse, l2_normalise
from edge.vision.matcher import Gallery
from edge.vision.pipeline import FaceEngine

# Four identities from each of three sources, four photos each: 48 images.
SOURCES = ("orl", "celeb5", "yale")
PER_SOURCE, PHOTOS = 4, 4


@pytest.fixture(scope="module")
def embedded(engine, faces_dir) -> dict[str, list[tuple[str, np.ndarray]]]:
    """identity -> [(path, embedding)] for a fixed sample."""
    by = defaultdict(list)
    with open(faces_dir / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["source"] in SOURCES:
                by[(row["source"], row["identity"])].append(row["path"])
    out = {}
    for source in SOURCES:
        ids = sorted(k for k in by if k[0] == source)[:PER_SOURCE]
        for key in ids:
            vecs = []
            for rel in sorted(by[key])[:PHOTOS]:
                v = engine.embed(load_image(faces_dir / rel), require_quality=False)
                assert v is not None, f"no face in {rel}"
                vecs.append((rel, v))
            out[key[1]] = vecs
    return out


def _scores(embedded):
    gen, imp = [], []
    items = [(ident, v) for ident, vs in embedded.items() for _, v in vs]
    for i, (a, va) in enumerate(items):
        for b, vb in items[i + 1 :]:
            if a.split("__")[0] != b.split("__")[0]:
                continue  # impostors within a source, as in pairs.csv
            (gen if a == b else imp).append(float(va @ vb))
    return np.array(gen), np.array(imp)


def test_embeddings_are_unit_vectors(embedded):
    for vs in embedded.values():
        for _, v in vs:
            assert v.shape == (128,) and v.dtype == np.float32
            assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-4)


def test_genuine_pairs_score_above_impostor_pairs(embedded):
    gen, imp = _scores(embedded)
    assert len(gen) == len(SOURCES) * PER_SOURCE * PHOTOS * (PHOTOS - 1) // 2
    assert gen.mean() > imp.mean() + 0.4
    # Area under the ROC: the chance a random genuine pair beats a random impostor pair.
    auc = (gen[:, None] > imp[None, :]).mean()
    assert auc > 0.98, f"AUC {auc:.4f}"
    e, _ = eer(gen, imp)
    assert e < 0.05


def test_flip_view_and_fusion(engine, embedded, faces_dir):
    gen, _ = _scores(embedded)
    ident = next(iter(embedded))
    vs = np.stack([v for _, v in embedded[ident]])
    fused = fuse(vs)
    assert np.linalg.norm(fused) == pytest.approx(1.0, abs=1e-5)
    # The fused template is closer to every view than the views are to each other on average.
    assert (vs @ fused).mean() > np.mean([vs[i] @ vs[j] for i in range(4) for j in range(i)])
    # The mirrored view of a face is the same person.
    res = engine.analyse(load_image(faces_dir / embedded[ident][0][0]))
    one = l2_normalise(engine.embedder._run(res.aligned))
    mirrored = l2_normalise(engine.embedder._run(res.aligned[:, ::-1]))
    assert float(one @ mirrored) > np.percentile(gen, 25)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_gallery_verify_and_search_on_real_embeddings(embedded, dtype):
    g = Gallery(dtype=dtype)
    probes = {}
    for ident, vs in embedded.items():
        # Enrol the first three photos, probe with the fourth.
        g.add(ident, np.stack([v for _, v in vs[:3]]))
        probes[ident] = vs[3][1]
    assert len(g) == len(embedded) and g.labels == list(embedded)
    assert g.matrix.shape == (3 * len(embedded), 128) and g.matrix.flags["C_CONTIGUOUS"]
    hits = 0
    for ident, probe in probes.items():
        top = g.search(probe, k=3)
        assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
        assert top[0][1] == pytest.approx(g.verify(probe, top[0][0]), abs=1e-6)
        hits += top[0][0] == ident
        other = next(i for i in embedded if i != ident)
        assert g.verify(probe, ident) > g.verify(probe, other)
    assert hits >= len(probes) - 1
    assert g.verify(probes[ident], "nobody") == -1.0


def test_int8_gallery_scores_close_to_float(embedded):
    labels = [i for i, vs in embedded.items() for _ in vs]
    mat = np.stack([v for vs in embedded.values() for _, v in vs])
    f = Gallery.from_matrix(labels, mat)
    q = Gallery.from_matrix(labels, mat, dtype="int8")
    assert q.matrix.dtype == np.float32 and q._matrix.dtype == np.int8
    probe = mat[5]
    assert np.abs(f.scores(probe) - q.scores(probe)).max() < 0.01
    assert [lb for lb, _ in f.search(probe, 5)][:1] == [lb for lb, _ in q.search(probe, 5)][:1]


def test_far_threshold_and_eer_on_known_scores():
    imp = np.linspace(0.0, 0.999, 1000)
    gen = np.array([0.5, 0.9, 0.995, 0.9995])
    t = threshold_at_far(imp, 0.001)
    assert (imp >= t).sum() == 1  # exactly 0.1 % of 1000 impostors pass
    m = metrics(gen, imp)
    assert m["tar_at_far"]["0.001"] == pytest.approx(0.25)
    assert m["tar_at_far"]["0.01"] == pytest.approx(0.5)
    e, _ = eer(np.array([0.9, 0.8, 0.3]), np.array([0.1, 0.2, 0.85]))
    assert e == pytest.approx(1 / 3)


def test_int8_embedder_agrees_with_dynamic_range(models_dir, engine, embedded, faces_dir):
    cfg = Config()
    cfg.models.threads = 1
    cfg.models.dir = str(models_dir)
    cfg.models.embedder = "dynamic" if engine.embedder_name == "embedder_int8" else "int8"
    other = FaceEngine.from_config(cfg)
    assert other.model_id != engine.model_id
    cos = []
    for vs in embedded.values():
        res = engine.analyse(load_image(faces_dir / vs[0][0]))
        cos.append(float(engine.embed_aligned(res.aligned) @ other.embed_aligned(res.aligned)))
    assert min(cos) > 0.95 and np.mean(cos) > 0.98, cos
