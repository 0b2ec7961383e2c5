"""Steady-state memory of `edge run`: resident memory against decisions, and whether it levels off.

The real daemon (``python -m edge run --keep-running``) runs on a demo pilot (a signed bundle in
which one recipient is enrolled) in flow mode "identify" with no cool-down, over a looping
folder of faces: the enrolled recipient (paid once, then "already paid") and strangers ("no
match"). It decides several times a second, so a few minutes hold the decisions of a busy
payout day. Every few seconds the bench reads the daemon's VmRSS from /proc and its decision
count from the ledger (a short read-only query, the connection closed at once).

Printed: RSS at intervals, the least-squares slope of RSS against decisions after a warm-up
(caches, allocator arenas), in kB per 1,000 decisions, for the whole steady part and for its
second half, and a verdict: "flat" when the second half's slope is below
``FLAT_KB_PER_1000``. Figures and ratios, not a timed test. With ``--mqtt`` the daemon reports
every event to a local Mosquitto over mutual TLS, as in production.

    python -m bench.memory_bench [--minutes 10] [--mqtt] [--liveness] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from bench.common import ROOT, Context, Options
from bench.daemon_bench import Listener, await_ready, launch, status_kb, stop_daemon, tail

log = logging.getLogger(__name__)

# Left out of the slope: the first quarter of the run, and at least the decisions over which
# SQLite's page cache (2 MB per connection) fills as the ledger grows (about 1 kB a decision).
WARMUP = 0.25
WARMUP_DECISIONS = 2000
MIN_STEADY_DECISIONS = 1000  # fewer after the warm-up: too few to judge
FLAT_KB_PER_1000 = 64.0  # below this (64 bytes a decision) the daemon counts as flat
SAMPLE_EVERY_S = 2.0
FRAMES = 6  # faces in the looping camera folder


@dataclass(frozen=True)
class Sample:
    seconds: float  # since READY
    decisions: int
    rss_kb: int


def slope_kb_per_1000(samples: list[Sample]) -> float | None:
    """Least-squares slope of RSS (kB) against decisions, per 1,000 decisions."""
    if len(samples) < 3:
        return None
    xs = [s.decisions for s in samples]
    ys = [s.rss_kb for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return 1000.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def _mb(kb: float) -> float:
    return round(kb / 1024, 1)


def analyse(samples: list[Sample], flat_kb: float = FLAT_KB_PER_1000) -> dict:
    """Slopes, warm-up growth and the verdict of one run's samples."""
    if not samples:
        return {"decisions": 0, "verdict": "no samples"}
    total = samples[-1].decisions
    start = max(WARMUP * total, WARMUP_DECISIONS)
    steady = [s for s in samples if s.decisions >= start]
    late = steady[len(steady) // 2 :]
    slope, late_slope = slope_kb_per_1000(steady), slope_kb_per_1000(late)
    span = steady[-1].decisions - steady[0].decisions if steady else 0
    if late_slope is None or span < MIN_STEADY_DECISIONS:
        verdict = f"too few decisions to judge (needs {start + MIN_STEADY_DECISIONS:.0f})"
    else:
        verdict = "flat" if late_slope <= flat_kb else "not flat"
    seconds = samples[-1].seconds
    return {
        "decisions": total,
        "decisions_per_min": round(60 * total / seconds, 1) if seconds else None,
        "rss_mb_start": _mb(samples[0].rss_kb),
        "rss_mb_after_warmup": _mb(steady[0].rss_kb) if steady else None,
        "rss_mb_end": _mb(samples[-1].rss_kb),
        "rss_mb_max": _mb(max(s.rss_kb for s in samples)),
        "warmup_decisions": round(start),
        "slope_kb_per_1000": None if slope is None else round(slope, 1),
        "slope_kb_per_1000_second_half": None if late_slope is None else round(late_slope, 1),
        "flat_below_kb_per_1000": flat_kb,
        "verdict": verdict,
    }


def _faces(photos, n: int) -> list:
    """Strangers' photos as RGB arrays (colour sources first), or none without the test set."""
    if photos is None:
        return []
    picks = [p for p in photos.photos if photos.source[p] in ("facerec", "celeb5")]
    out = []
    for rel in picks[:n]:
        bgr = cv2.imread(str(photos.path(rel)), cv2.IMREAD_COLOR)
        if bgr is not None:
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return out


def prepare(work: Path, models_dir: Path, photos, liveness: bool, mqtt: dict | None) -> Path:
    """A demo pilot, a looping camera folder and the daemon's config; returns the config path."""
    from edge import demo
    from edge.config import Config
    from edge.vision.pipeline import FaceEngine

    cfg = Config()
    cfg.models.dir = Path(models_dir)
    state, enrolled = demo.build_pilot(work / "pilot", FaceEngine.from_config(cfg), False)
    frames = work / "frames"
    frames.mkdir()
    shots = [enrolled[demo.ASTRONAUT_HH]] + [demo.letterbox(f) for f in _faces(photos, FRAMES)]
    for i, rgb in enumerate(shots):
        cv2.imwrite(str(frames / f"{i:02d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    sections: dict[str, dict] = {
        "device": {"state_dir": str(state)},
        # Without central's key the pilot's bundle is not usable: no match, payout or receipt.
        "bundle": {"central_public_key": str(state / "keys" / "central_public.pem")},
        "models": {"dir": str(models_dir)},
        "flow": {"mode": "identify", "cooldown_s": 0.0},
        "camera": {"kind": "folder", "source": str(frames), "loop": True, "fps": 30.0},
        "liveness": {"enabled": liveness},
        "signals": {"kind": "mock"},
        "printer": {"kind": "file"},
        "mqtt": mqtt or {"enabled": False},
        "logging": {"level": "WARNING"},
    }
    path = work / "config.toml"
    path.write_text("".join(_toml(name, values) for name, values in sections.items()))
    return path


def _toml(section: str, values: dict) -> str:
    lines = [f"[{section}]"]
    for key, value in values.items():
        if value is None:
            continue
        lines.append(f"{key} = {json.dumps(value)}")  # JSON strings, numbers, booleans are TOML
    return "\n".join(lines) + "\n\n"


def _decisions(ledger: Path) -> int:
    """Events in the ledger (one per decision); -1 when it cannot be read right now."""
    try:
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return -1
    try:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return -1
    finally:
        db.close()  # an open reader would hold back the daemon's WAL checkpoints


def _sample(proc: subprocess.Popen, ledger: Path, minutes: float, every: float) -> list[Sample]:
    samples: list[Sample] = []
    t0 = time.monotonic()
    end = t0 + minutes * 60
    while time.monotonic() < end and proc.poll() is None:
        rss = status_kb(proc.pid).get("VmRSS")
        n = _decisions(ledger)
        if rss and n >= 0:
            samples.append(Sample(round(time.monotonic() - t0, 1), n, rss))
        time.sleep(every)
    return samples


def measure(config: Path, state: Path, minutes: float, every: float = SAMPLE_EVERY_S) -> list:
    """Start `edge run` under a fake systemd, sample it for ``minutes``, stop it."""
    work = Path(tempfile.mkdtemp(prefix="notify-"))  # sun_path holds only 108 bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(work / "n"))
    daemon_log = config.parent / "daemon.log"
    t0 = time.monotonic()
    proc = launch(config, work / "n", daemon_log)
    listener = Listener(sock, t0)
    listener.start()
    try:
        await_ready(proc, listener, daemon_log, t0)
        samples = _sample(proc, state / "ledger.sqlite", minutes, every)
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited ({proc.returncode}): " + tail(daemon_log))
        return samples
    finally:
        if proc.poll() is None:
            stop_daemon(proc)
        listener.stop()
        sock.close()
        shutil.rmtree(work, ignore_errors=True)


def thin(samples: list[Sample], rows: int = 12) -> list[list[float]]:
    """About ``rows`` samples spread over the run, as [seconds, decisions, RSS MB]."""
    step = max(1, -(-len(samples) // rows))
    picked = samples[::step]
    if samples and picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return [[s.seconds, s.decisions, round(s.rss_kb / 1024, 1)] for s in picked]


def run_daemon(
    models_dir: Path,
    photos,
    *,
    minutes: float,
    out_dir: Path,
    liveness: bool = False,
    mqtt: bool = False,
) -> dict:
    """One run: the figures of :func:`analyse` plus thinned samples."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="memory-", dir=out_dir))
    broker = None
    try:
        mqtt_cfg = None
        if mqtt:
            broker = _start_broker(work)
            mqtt_cfg = broker.mqtt_config(_device_id())
        config = prepare(work, models_dir, photos, liveness, mqtt_cfg)
        samples = measure(config, work / "pilot" / "state", minutes)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "minutes": minutes,
        "liveness": liveness,
        "mqtt_tls": mqtt,
        **analyse(samples),
        "samples": thin(samples),
    }


def _device_id() -> str:
    from edge.config import Config

    return Config().device.id


def _start_broker(work: Path):
    """A local Mosquitto with mutual TLS (the tests' helper)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from mosquitto import Broker, Pki  # type: ignore[import-not-found]  # tests/ on sys.path

    broker = Broker(work / "broker", Pki(work / "pki"))
    broker.start()
    return broker


def run(ctx: Context) -> dict:
    """The bench section: a short run in quick mode, a few minutes otherwise."""
    from edge.config import load_config

    models_dir = Path(ctx.opts.models_dir or load_config(ctx.opts.config).models.dir)
    # Quick: the machinery only (too few decisions for a verdict); full: past the warm-up.
    minutes = 0.25 if ctx.opts.quick else 8.0
    res = run_daemon(models_dir, ctx.photos, minutes=minutes, out_dir=ctx.opts.out_dir)
    return {"status": "ok", **res}


def report(res: dict) -> str:
    """The run as a few lines of text."""
    lines = [
        f"{res['decisions']} decisions in {res['minutes']:g} min "
        f"({res['decisions_per_min']}/min; liveness {'on' if res['liveness'] else 'off'}, "
        f"MQTT+TLS {'on' if res['mqtt_tls'] else 'off'})",
        "  seconds  decisions  RSS MB",
    ]
    lines += [f"  {s:7.0f}  {d:9d}  {r:6.1f}" for s, d, r in res["samples"]]
    warm = res["warmup_decisions"]
    after = res["rss_mb_after_warmup"]
    lines.append(
        f"RSS {res['rss_mb_start']} MB at READY, "
        + (f"{after} MB after {warm} decisions (warm-up), " if after else "warm-up not over, ")
        + f"{res['rss_mb_end']} MB at the end"
    )
    if res["slope_kb_per_1000"] is not None:
        lines.append(
            f"slope after warm-up: {res['slope_kb_per_1000']} kB per 1,000 decisions; "
            f"{res['slope_kb_per_1000_second_half']} in its second half"
        )
    lines.append(f"verdict: {res['verdict']} (flat: < {res['flat_below_kb_per_1000']:g} kB/1,000)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.memory_bench``."""
    from bench.data import default_faces_dir, load_photos
    from edge.config import load_config

    p = argparse.ArgumentParser(prog="python -m bench.memory_bench", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--mqtt", action="store_true", help="report to a local Mosquitto over TLS")
    p.add_argument("--liveness", action="store_true", help="liveness on (fewer decisions/min)")
    p.add_argument("--models", type=Path, help="models folder (default: the config's)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        photos = load_photos(default_faces_dir(), per_source=FRAMES)
    except FileNotFoundError:
        photos = None  # the enrolled recipient alone still makes decisions
    models_dir = args.models or Path(load_config(None).models.dir)
    res = run_daemon(
        models_dir,
        photos,
        minutes=args.minutes,
        out_dir=Options().out_dir,
        liveness=args.liveness,
        mqtt=args.mqtt,
    )
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["verdict"] != "not flat" else 1


if __name__ == "__main__":
    sys.exit(main())
