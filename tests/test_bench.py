"""The bench harness: its statistics, and one quick run on a tiny input producing every figure.

Benchmarks measure and tests do not time: nothing here asserts a speed, only that each section
ran (or said clearly which part is missing) and that the JSON carries every figure.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.memory_bench import (  # noqa: E402
    WARMUP_DECISIONS,
    Sample,
    analyse,
    slope_kb_per_1000,
    thin,
)
from bench.stats import FAILED_SCORE, pair_scores, summarise_ms, verification_rates  # noqa: E402
from bench.suite import BUDGETS, SECTION_NAMES  # noqa: E402


def test_eer_and_tar_on_separable_and_overlapping_scores():
    separable = verification_rates([0.9, 0.8, 0.7], [0.1, 0.2, 0.3])
    assert separable["eer"] == 0.0
    assert separable["tar_at_far"]["0.01"] == 1.0
    # One impostor (0.75) above one genuine (0.7): one error in three on each side at best.
    overlap = verification_rates([0.9, 0.8, 0.7], [0.1, 0.2, 0.75])
    assert overlap["eer"] == pytest.approx(1 / 3, abs=1e-4)
    # With 3 impostors, FAR <= 1% means no impostor accepted: threshold above 0.75.
    assert overlap["tar_at_far"]["0.01"] == pytest.approx(2 / 3, abs=1e-4)
    assert overlap["threshold_at_far"]["0.01"] == pytest.approx(0.8)
    assert overlap["coarse_far"]["0.001"] is True


def test_failed_photo_is_a_failed_comparison_not_a_skip():
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    vectors = {"x": a, "y": a, "z": None, "w": b}
    g, i = pair_scores([("x", "y", 1), ("x", "z", 1), ("x", "w", 0)], vectors)
    assert g == [1.0, FAILED_SCORE] and i == [0.0]
    rates = verification_rates(g, i)
    # The genuine pair with no face can never be accepted: TAR tops out at 1/2.
    assert rates["tar_at_far"]["0.01"] == pytest.approx(0.5)
    # face_recognition distances: smaller is closer, so the score is the negated distance.
    g2, _ = pair_scores([("x", "y", 1)], vectors, metric="neg_l2")
    assert g2 == [-0.0]


def _run(rss_kb, step: int = 100) -> list[Sample]:
    """One sample per ``step`` decisions, RSS given per sample."""
    return [Sample(float(i), i * step, int(kb)) for i, kb in enumerate(rss_kb)]


def test_memory_slope_and_verdict():
    # 3,000 decisions: a warm-up that grows 2 MB, then flat within a few kB of noise.
    warm = [150_000 + i * 100 for i in range(21)]
    flat = [152_000 + (7 if i % 2 else -7) for i in range(10)]
    run = analyse(_run(warm + flat))
    assert run["decisions"] == 3000 and run["warmup_decisions"] == WARMUP_DECISIONS
    assert abs(run["slope_kb_per_1000"]) < 10 and run["verdict"] == "flat"
    assert run["rss_mb_start"] == round(150_000 / 1024, 1)
    # The old daemon: 2.4 kB more per decision, without end.
    creep = analyse(_run([150_000 + i * 240 for i in range(31)]))
    assert creep["slope_kb_per_1000_second_half"] == 2400.0 and creep["verdict"] == "not flat"
    # Too short to get past the warm-up: no verdict either way.
    assert analyse(_run([150_000] * 10))["verdict"].startswith("too few decisions")
    assert analyse([])["verdict"] == "no samples"
    assert slope_kb_per_1000(_run([1, 2])) is None
    assert slope_kb_per_1000([Sample(0.0, 5, 1), Sample(1.0, 5, 2), Sample(2.0, 5, 3)]) is None
    rows = thin(_run(range(100)), rows=12)
    assert len(rows) <= 13 and rows[0][1] == 0 and rows[-1][1] == 9900


def test_summary_of_no_samples_and_of_samples():
    assert summarise_ms([])["median"] is None
    s = summarise_ms([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["n"] == 5 and s["median"] == 3.0 and 4.0 < s["p90"] < 100.0


def _has_figure(d: dict, *path: str) -> bool:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return False
        d = d[k]
    return isinstance(d, int | float) and not isinstance(d, bool)


def test_quick_run_writes_every_figure(tmp_path, faces_dir, models_dir):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--per-source",
            "4",
            "--no-install",
            "--faces",
            str(faces_dir),
            "--models",
            str(models_dir),
            "--json",
            str(out),
            "--out-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert (tmp_path / "latest-quick.json").is_file()
    assert "== budgets" in proc.stdout
    assert result["mode"] == "quick" and result["photos"]["count"] == 20
    sections = result["sections"]
    assert set(sections) == set(SECTION_NAMES)
    for name, sec in sections.items():
        assert sec["status"] in ("ok", "missing", "error"), name
        if sec["status"] != "ok":
            assert sec["reason"], f"{name} says {sec['status']} without a reason"
    # Our own sections must run whenever their parts are present (these are, in this suite).
    for name in ("pipeline", "models", "compare", "qr", "matcher", "ledger"):
        assert sections[name]["status"] == "ok", (name, sections[name].get("reason"))
    _check_own_sections(sections)
    _check_optional_sections(sections)

    assert [b["budget"] for b in result["budgets"]] == [b[0] for b in BUDGETS]
    for b in result["budgets"]:
        assert b["verdict"] in ("PASS", "MISS", "NOT MEASURED")
        assert (b["value"] is None) == (b["verdict"] == "NOT MEASURED")
    assert result["budgets"][0]["verdict"] != "NOT MEASURED"


def _check_own_sections(sections: dict) -> None:
    """Every figure of the sections built on this repository's own code."""
    pipe = sections["pipeline"]
    for key in ("int8/1t", "dynamic/1t"):
        v = pipe["variants"][key]
        for stage in ("decode", "detect", "align", "quality", "embed", "match"):
            assert _has_figure(v, "stages_ms", stage, "median"), (key, stage)
            assert _has_figure(v, "stages_ms", stage, "p90"), (key, stage)
        assert _has_figure(v, "end_to_end_ms", "median")
        assert _has_figure(v, "analyse_ms_embedded", "median")
    assert "float" in pipe  # measured, or a sentence saying the build makes none
    for name, row in sections["models"]["models"].items():
        assert _has_figure(row, "1t", "median"), name

    acc = sections["compare"]["accuracy"]["ours:int8"]["all"]
    assert acc["genuine"] > 0 and acc["impostor"] > 0
    assert _has_figure(acc, "eer")
    assert _has_figure(acc, "tar_at_far", "0.01") and _has_figure(acc, "tar_at_far", "0.001")

    for n in ("1000", "10000"):
        for dtype in ("float32", "int8"):
            assert _has_figure(sections["matcher"], "sizes", n, dtype, "search_ms", "median")
    assert _has_figure(sections["qr"], "no_code_ms", "median")
    assert sections["qr"]["decoded"] is True  # the pasted claim QR is read back
    for kind in ("refusal", "payout"):
        assert _has_figure(sections["ledger"], kind, "events_per_s")


def _check_optional_sections(sections: dict) -> None:
    """The figures of face_recognition and the daemon, when they ran."""
    if sections["facerec"]["status"] == "ok":
        assert _has_figure(sections["facerec"], "seconds_per_photo_mean")
        ratios = sections["compare"]["ratios"]["ours:int8"]
        assert _has_figure(ratios, "speed", "all_photos", "ratio")
    if importlib.util.find_spec("edge.app") and sections["daemon"]["status"] == "ok":
        assert _has_figure(sections["daemon"], "ready_s")
        assert _has_figure(sections["daemon"], "rss_mb")
    memory = sections["memory"]
    assert memory["status"] == "ok", memory.get("reason")
    assert memory["decisions"] > 0 and _has_figure(memory, "rss_mb_end")
    assert memory["samples"] and memory["verdict"]  # quick: too short for flat or not
