"""The daemon as systemd sees it: seconds from exec to READY=1, and resident memory at steady state.

``python -m edge --config CFG run --keep-running`` (flow mode "identify") is started with
``NOTIFY_SOCKET`` pointing at a datagram socket bound here, on a folder camera looping over a
few 640x480 frames made from the test photos (written under bench/out and removed afterwards).
RSS is read from /proc/<pid>/status while frames flow. A separate ``-X importtime`` run shows which imports the
start-up time goes to.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

from bench.common import ROOT, Context, Missing, require_module

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0


def _frames(ctx: Context, folder: Path, n: int = 6) -> None:
    """A few camera-sized frames: the test photos letterboxed into 640x480."""
    folder.mkdir(parents=True)
    photos = ctx.photos
    picks = [p for p in photos.photos if photos.source[p] in ("facerec", "celeb5")][
        :n
    ] or photos.photos[:n]
    for i, rel in enumerate(picks):
        img = cv2.imread(str(photos.path(rel)), cv2.IMREAD_COLOR)
        if img is None:
            continue
        h, w = img.shape[:2]
        s = min(640 / w, 480 / h)
        img = cv2.resize(
            img, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA
        )
        canvas = cv2.copyMakeBorder(
            img, 0, 480 - img.shape[0], 0, 640 - img.shape[1], cv2.BORDER_CONSTANT
        )
        cv2.imwrite(str(folder / f"frame{i:02d}.jpg"), canvas)


def _config(
    path: Path, state: Path, frames: Path, models_dir: Path | None, mode: str = "identify"
) -> None:
    models = f'dir = "{models_dir}"\n' if models_dir else ""
    path.write_text(
        f'[device]\nstate_dir = "{state}"\n\n'
        f"[models]\n{models}\n"
        # identify mode runs the face engine (and liveness) on every frame: the busiest steady
        # state; in qr mode idle frames only look for a QR code.
        f'[flow]\nmode = "{mode}"\n\n'
        f'[camera]\nkind = "folder"\nsource = "{frames}"\nloop = true\nfps = 15.0\n\n'
        '[signals]\nkind = "mock"\n\n'
        '[printer]\nkind = "none"\n\n'
        "[mqtt]\nenabled = false\n\n"
        '[logging]\nlevel = "WARNING"\n'
    )


def status_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of a process, in kB (empty once it is gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m:
            out[key] = int(m.group(1))
    return out


def memory_map(pid: int, top: int = 10) -> dict[str, float]:
    """Resident MB per mapped file (shared libraries, models) and for anonymous memory."""
    sizes: dict[str, int] = {}
    name = "[anon]"
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        head = line.split()
        if not head:
            continue
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            path = head[5] if len(head) > 5 else ""
            if path.startswith("/"):
                # Group a package's libraries: .../site-packages/cv2/... -> cv2
                parts = Path(path).parts
                if "site-packages" in parts:
                    i = parts.index("site-packages")
                    name = parts[i + 1] if i + 1 < len(parts) else path
                else:
                    name = Path(path).name
            else:
                name = path or "[anon]"
        elif head[0] == "Rss:":
            sizes[name] = sizes.get(name, 0) + int(head[1])
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1])[:top]
    return {k: round(v / 1024, 1) for k, v in ranked}


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def import_profile(top: int = 8) -> dict:
    """Cumulative import milliseconds of the heaviest modules behind ``edge.app``."""
    proc = subprocess.run(
        # edge.__main__ first: it sets the daemon's environment (BLAS threads, escpos cache).
        [sys.executable, "-X", "importtime", "-c", "import edge.__main__, edge.app"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)), m.group(4)))
    if not rows:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["no output"]}
    # The total is the sum of the outermost imports; the list is the heaviest modules by their
    # own time (without their imports), which is where a fix would go.
    base = min(r[2] for r in rows)
    total = sum(r[1] for r in rows if r[2] == base)
    heaviest = sorted(rows, reverse=True)[:top]
    return {"total_ms": round(total / 1000, 1)} | {
        name: round(self_us / 1000, 1) for self_us, _, _, name in heaviest
    }


# Runs in a fresh interpreter: each start-up step of the daemon, timed on its own.
_STARTUP_CHILD = r"""
import json, sys, time
steps, t = {}, time.perf_counter()
def mark(name):
    global t
    now = time.perf_counter()
    steps[name] = round((now - t) * 1000, 1)
    t = now
try:
    import edge.__main__
    mark("import edge.__main__ (CLI, environment)")
    import numpy, cv2
    mark("import numpy+cv2")
    import edge.app
    mark("import edge.app (rest)")
    from edge.config import load_config
    cfg = load_config(None)
    cfg.models.dir = sys.argv[1]
    from edge.modelstore import ModelStore
    store = ModelStore.load(cfg.models.dir, required=("detector", "landmarks", "embedder_int8"))
    mark("ModelStore.load (read, sha256, tensor check)")
    from edge.vision.pipeline import FaceEngine
    engine = FaceEngine(store, cfg)
    mark("FaceEngine (interpreters)")
    from edge.vision.liveness import LivenessChecker
    LivenessChecker(store, cfg.liveness)
    mark("LivenessChecker (interpreters)")
    import numpy as np
    engine.analyse(np.zeros((480, 640, 3), np.uint8))
    mark("first frame")
except Exception as exc:
    steps["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(steps))
"""


def startup_steps(models_dir: Path) -> dict:
    """Milliseconds of each start-up step (imports, model checks, interpreters) in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", _STARTUP_CHILD, str(models_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}


def run(ctx: Context) -> dict:
    """READY seconds, RSS after a steady period, shutdown seconds; Missing if `edge run` is not in.

    The figures are those of flow mode "identify" (the face engine and liveness on every
    frame); a full run also starts the daemon in the default "qr" mode, whose idle frames only
    look for a QR code.
    """
    require_module("edge.cli.run", "lead: `edge run`")
    try:
        require_module("edge.app", "lead")
    except ModuleNotFoundError as exc:
        raise Missing(f"`edge run` cannot start yet: module {exc.name} missing") from None
    out = _run_daemon(ctx, "identify", profiles=True)
    if not ctx.opts.quick:
        q = _run_daemon(ctx, "qr", profiles=False)
        out["qr_mode"] = {k: q[k] for k in ("ready_s", "rss_mb", "cpu_share_steady", "stop_s")}
    return out


def _run_daemon(ctx: Context, mode: str, profiles: bool) -> dict:
    settle = 4.0 if ctx.opts.quick else 12.0
    ctx.opts.out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="daemon-", dir=ctx.opts.out_dir))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    proc = None
    listener = None
    try:
        _frames(ctx, work / "frames")
        from edge.config import load_config

        models_dir = Path(ctx.opts.models_dir or load_config(ctx.opts.config).models.dir)
        _config(work / "config.toml", work / "state", work / "frames", models_dir, mode)
        sock.bind(str(work / "notify.sock"))
        log_path = work / "daemon.log"
        t0 = time.monotonic()
        proc = launch(work / "config.toml", work / "notify.sock", log_path)
        # Read the socket all the time, as systemd does: a unix datagram queue holds only
        # net.unix.max_dgram_qlen (often 10) messages, and a full one blocks the sender.
        listener = Listener(sock, t0)
        listener.start()
        ready_s = await_ready(proc, listener, log_path, t0)
        cpu_at_ready = _cpu_s(proc.pid)
        steady = _settle(proc, settle, log_path)
        mem_map = memory_map(proc.pid)
        cpu_steady = _cpu_s(proc.pid)
        stop_s = stop_daemon(proc)
        listener.stop()
        result = {
            "status": "ok",
            "flow_mode": mode,
            "ready_s": round(ready_s, 3),
            "cpu_s_to_ready": cpu_at_ready,
            "steady_after_s": settle,
            "rss_mb": round(steady.get("VmRSS", 0) / 1024, 1),
            "rss_anon_mb": round(steady.get("RssAnon", 0) / 1024, 1),
            "rss_file_mb": round(steady.get("RssFile", 0) / 1024, 1),
            "peak_rss_mb": round(steady.get("VmHWM", 0) / 1024, 1),
            "cpu_share_steady": round((cpu_steady - cpu_at_ready) / settle, 3)
            if cpu_steady is not None and cpu_at_ready is not None
            else None,
            "stop_s": stop_s,
            "exit_code": proc.returncode,
            "notify": _states(listener.messages),
            "rss_by_mapping_mb": mem_map,
        }
        if profiles:
            result["imports_ms"] = import_profile()
            result["startup_steps_ms"] = startup_steps(models_dir)
        return result
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if listener is not None:
            listener.stop()
        sock.close()
        shutil.rmtree(work, ignore_errors=True)


def launch(config: Path, notify: Path, log_path: Path) -> subprocess.Popen:
    """`edge run --keep-running` on ``config``, notifying ``notify``, output to ``log_path``."""
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), PYTHONUNBUFFERED="1")
    with log_path.open("wb") as log_fh:
        return subprocess.Popen(
            [sys.executable, "-m", "edge", "--config", str(config), "run", "--keep-running"],
            cwd=ROOT,
            env=env,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )


def tail(log_path: Path) -> str:
    return " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-5:])


def await_ready(proc: subprocess.Popen, listener: Listener, log_path: Path, t0: float) -> float:
    """Seconds from launch to READY=1; RuntimeError with the log's tail if it never comes."""
    while not listener.ready.is_set() and proc.poll() is None:
        if time.monotonic() - t0 > READY_TIMEOUT_S:
            break
        listener.ready.wait(0.2)
    if listener.ready_s is None:
        code = proc.poll()
        when = f"exited ({code}) before READY" if code is not None else "no READY=1 in time"
        raise RuntimeError(f"{when}: " + tail(log_path))
    return listener.ready_s


def _settle(proc: subprocess.Popen, settle: float, log_path: Path) -> dict[str, int]:
    """Let frames flow for ``settle`` seconds; the last /proc status reading."""
    samples = []
    end = time.monotonic() + settle
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(0.5)
        samples.append(status_kb(proc.pid))
    if proc.poll() is not None:
        raise RuntimeError(f"daemon exited ({proc.returncode}) after READY: " + tail(log_path))
    return samples[-1]


def stop_daemon(proc: subprocess.Popen) -> float | None:
    """SIGTERM, then seconds until the daemon exited (None if it had to be killed)."""
    t_stop = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
        return round(time.monotonic() - t_stop, 3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


class Listener(threading.Thread):
    """Drains the notify socket; notes when READY=1 arrives."""

    def __init__(self, sock: socket.socket, t0: float) -> None:
        super().__init__(daemon=True)
        self.sock, self.t0 = sock, t0
        self.messages: list[str] = []
        self.ready = threading.Event()
        self.ready_s: float | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop_event.is_set():
            try:
                data = self.sock.recv(4096).decode("utf-8", "replace")
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append(data)
            if not self.ready.is_set() and "READY=1" in data.splitlines():
                self.ready_s = time.monotonic() - self.t0
                self.ready.set()

    def stop(self) -> None:
        """Stop after reading what is already queued."""
        self._stop_event.set()
        self.join(timeout=2)


def _states(messages: list[str]) -> list[str]:
    """The notify assignments received, in order (STATUS text shortened)."""
    out = []
    for m in messages:
        for line in m.splitlines():
            out.append(line[:80])
    return out[:20]
