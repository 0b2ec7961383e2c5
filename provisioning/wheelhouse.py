#!/usr/bin/env python3
"""Hash-pinned locks of the terminal's runtime and offline wheelhouses built from them.

One lock per target image (``requirements/<target>.txt``): the exact wheel of every runtime
dependency for that image's Python and CPU, with its sha256. Made with pip's own resolver
against PyPI, binary wheels only, for a platform other than this machine's:

    python provisioning/wheelhouse.py lock bookworm-aarch64       # rewrite one lock
    python provisioning/wheelhouse.py build trixie-aarch64 DEST    # wheels + lock + our wheel

A wheelhouse is what a terminal installs from at a site without internet:
``pip install --no-index --find-links DEST --require-hashes -r DEST/requirements.txt``
(provisioning/firstboot.py does exactly that). Standard library only.

The numpy rule (docs/hardware.md, "numpy and picamera2"): the venv sees apt's picamera2 and
simplejpeg, built against the image's own python3-numpy, so the venv's numpy must keep that
numpy's ABI: 1.x on Bookworm (1.24), 2.x on Trixie (2.2).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOCK_DIR = REPO / "requirements"
RUNTIME_IN = LOCK_DIR / "runtime.in"
PYPI = "https://pypi.org/simple"


@dataclass(frozen=True)
class Platform:
    """A target image: its Python, CPU, glibc and the numpy its apt packages were built with."""

    name: str
    python: str  # "3.11"
    machine: str  # "aarch64" | "x86_64"
    glibc: tuple[int, int]
    numpy: str  # specifier the venv's numpy must meet ("" : no apt numpy modules in play)
    system_numpy: str  # what apt ships, for the docs and error messages

    @property
    def platforms(self) -> list[str]:
        """pip takes platform tags literally: every manylinux glibc level up to the image's,
        most specific first (pip prefers earlier tags)."""
        major, minor = self.glibc
        tags = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 16, -1)]
        return [*tags, f"manylinux2014_{self.machine}"]

    def pip_target_args(self) -> list[str]:
        args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python]
        for tag in self.platforms:
            args += ["--platform", tag]
        return args


TARGETS: dict[str, Platform] = {
    # Raspberry Pi OS Bookworm: Python 3.11, glibc 2.36, python3-numpy 1:1.24.2
    "bookworm-aarch64": Platform(
        "bookworm-aarch64", "3.11", "aarch64", (2, 36), ">=1.24,<2", "1.24.2"
    ),
    # Raspberry Pi OS Trixie: Python 3.13, glibc 2.41, python3-numpy 1:2.2.4
    "trixie-aarch64": Platform("trixie-aarch64", "3.13", "aarch64", (2, 41), ">=2.2,<3", "2.2.4"),
    # CI and laptops (Debian Bookworm amd64): no picamera2, so no numpy rule
    "x86_64": Platform("x86_64", "3.11", "x86_64", (2, 36), "", ""),
}


def lock_path(target: str) -> Path:
    return LOCK_DIR / f"{target}.txt"


def pip_env() -> dict[str, str]:
    """pip without this machine's config: no local wheel folders, mirrors or constraints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env.pop("PYTHONPATH", None)
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """``{normalised name: (version, [sha256, ...])}`` of a lock file."""
    text = path.read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"([A-Za-z0-9._-]+)==(\S+)", line)
        if not m:
            raise ValueError(f"{path}: not a pinned line: {line!r}")
        pins[normalise(m.group(1))] = (
            m.group(2),
            re.findall(r"--hash=sha256:([0-9a-f]{64})", line),
        )
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(
    target: str, requirements: Path, *, index_url: str = PYPI, extra: tuple[str, ...] = ()
) -> list[dict]:
    """Resolve ``requirements`` for ``target`` with pip (metadata only, nothing installed).

    Returns pip's report entries: ``metadata`` (name, version) and ``download_info`` (url,
    sha256). Raises CalledProcessError with pip's message when a wheel is missing.
    """
    plat = TARGETS[target]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        cmd += ["--quiet", "--report", str(report), "--index-url", index_url]
        cmd += [*plat.pip_target_args(), "--target", str(Path(tmp) / "t")]
        cmd += ["-r", str(requirements), *extra]
        subprocess.run(cmd, check=True, env=pip_env(), capture_output=True, text=True)
        return json.loads(report.read_text())["install"]


def numpy_rule_problem(target: str, numpy_version: str | None) -> str | None:
    """Why ``numpy_version`` breaks the camera path on ``target`` (None when it does not)."""
    plat = TARGETS[target]
    if not plat.numpy:
        return None
    if numpy_version is None:
        return f"{target}: numpy is not pinned"
    have = tuple(int(x) for x in re.findall(r"\d+", numpy_version)[:2])
    for clause in plat.numpy.split(","):
        op, ver = re.match(r"([<>=]+)(.+)", clause.strip()).groups()  # type: ignore[union-attr]
        want = tuple(int(x) for x in ver.split(".")[:2])
        ok = {">=": have >= want, "<": have < want, "==": have == want}[op]
        if not ok:
            return (
                f"{target}: numpy {numpy_version} does not keep the ABI of the image's "
                f"python3-numpy {plat.system_numpy} (rule {plat.numpy}): picamera2 would fail "
                "with 'numpy.dtype size changed'"
            )
    return None


def write_lock(target: str, requirements: Path = RUNTIME_IN, *, index_url: str = PYPI) -> Path:
    """Resolve and write ``requirements/<target>.txt``; the numpy rule is a constraint."""
    plat = TARGETS[target]
    extra: tuple[str, ...] = ()
    with tempfile.TemporaryDirectory() as tmp:
        if plat.numpy:
            rule = Path(tmp) / "numpy-rule.txt"
            rule.write_text(f"numpy{plat.numpy}\n")
            extra = ("-c", str(rule))
        items = resolve(target, requirements, index_url=index_url, extra=extra)
    lines = [
        f"# Lock of the terminal's runtime for {target} (Python {plat.python}, {plat.machine},"
        f" glibc {plat.glibc[0]}.{plat.glibc[1]}).",
        f"# Written by `python provisioning/wheelhouse.py lock {target}` from "
        "requirements/runtime.in; do not edit.",
    ]
    if plat.numpy:
        lines.append(f"# numpy rule: {plat.numpy} (the image's python3-numpy {plat.system_numpy})")
    for item in sorted(items, key=lambda i: normalise(i["metadata"]["name"])):
        meta, info = item["metadata"], item["download_info"]
        sha = info["archive_info"]["hashes"]["sha256"]
        wheel = info["url"].rsplit("/", 1)[-1]
        lines.append(f"{normalise(meta['name'])}=={meta['version']} \\")
        lines.append(f"    --hash=sha256:{sha}")
        lines.append(f"    # {wheel}")
    out = lock_path(target)
    out.write_text("\n".join(lines) + "\n")
    return out


def build_wheelhouse(dest: Path, target: str, lock: Path | None = None) -> list[Path]:
    """Download every wheel of ``target``'s lock into ``dest``, add the terminal's own wheel
    and the lock as ``dest/requirements.txt``; return the wheels, sorted by name.

    Needs the internet (PyPI) once, at the office; the result installs with no index.
    ``target`` is a key of :data:`TARGETS` ("bookworm-aarch64", "trixie-aarch64", "x86_64").
    """
    plat = TARGETS[target]
    lock = lock or lock_path(target)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes"]
    cmd += ["--index-url", PYPI, *plat.pip_target_args(), "-d", str(dest), "-r", str(lock)]
    subprocess.run(cmd, check=True, env=pip_env())
    # The terminal itself is pure Python: one py3-none-any wheel serves every target.
    for old in dest.glob("bansos_edge-*.whl"):
        old.unlink()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), str(REPO)],
        check=True,
    )
    (dest / "requirements.txt").write_bytes(lock.read_bytes())
    (dest / "TARGET").write_text(target + "\n")
    return sorted(dest.glob("*.whl"))


def install_commands(
    python: str | Path, wheelhouse: Path, ours_from: Path | None = None
) -> list[list[str]]:
    """The two pip runs that install the terminal from a wheelhouse with no index: the locked
    dependencies, hash-checked, then the terminal's newest wheel (from ``ours_from``, a
    release's wheels, when given) on top."""
    ours = sorted(Path(ours_from or wheelhouse).glob("bansos_edge-*.whl"))
    if not ours:
        raise FileNotFoundError(f"{ours_from or wheelhouse}: no bansos_edge wheel")
    pip = [str(python), "-m", "pip", "install", "--no-index", "--find-links", str(wheelhouse)]
    return [
        [*pip, "--require-hashes", "-r", str(Path(wheelhouse) / "requirements.txt")],
        [*pip, "--no-deps", str(ours[-1])],
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    lk = sub.add_parser("lock", help="rewrite requirements/<target>.txt from runtime.in")
    lk.add_argument("targets", nargs="*", help="default: all targets")
    bd = sub.add_parser("build", help="download a wheelhouse for a target")
    bd.add_argument("target", choices=list(TARGETS))
    bd.add_argument("dest", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "lock":
        for t in args.targets or TARGETS:
            print(f"wheelhouse: wrote {write_lock(t)}")
    else:
        wheels = build_wheelhouse(args.dest, args.target)
        print(f"wheelhouse: {len(wheels)} wheels for {args.target} in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
