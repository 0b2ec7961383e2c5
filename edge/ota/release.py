"""The release artefact: build it from a checkout, sign it, verify it before anything installs.

A release is one uncompressed tar, ``bansos-edge-<version>.tar``::

    release.json   the manifest: version, platform, ledger layout, sha256 and size of every file
    release.sig    Ed25519 signature (base64) of the exact bytes of release.json
    wheels/        the wheelhouse for the target platform (this project, optionally its deps)
    models/        the built models and their manifest.json
    systemd/       the unit files

It is signed by the *release* key, a key of its own: central's bundle key signs enrolment
data and commands, which change every round, while a release puts code on thousands of
terminals, so that key lives offline with the release engineers. Terminals trust the release
public key installed at provisioning (``ota.release_public_key``); there is no fallback.
The same artefact serves an over-the-air update and a technician's offline install.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from packaging.version import InvalidVersion, Version

from edge.errors import KeyFileError, ReleaseError
from edge.events import canonical, iso_utc
from edge.fsutil import write_atomic
from edge.keys import load_ed25519_public, verify_ed25519

log = logging.getLogger(__name__)

SCHEMA = "bansos.release/1"
MANIFEST = "release.json"
SIGNATURE = "release.sig"
TOP_DIRS = ("wheels", "models", "systemd")
UNIT_SUFFIXES = (".service", ".path", ".timer", ".conf")
MAX_MANIFEST_BYTES = 1 << 20
_HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class Release:
    """A verified release: its manifest and where its artefact is."""

    path: Path
    manifest: dict

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def ledger_version(self) -> int:
        """The ledger layout this release writes (it opens every layout up to this one)."""
        return int(self.manifest["ledger"]["version"])


def parse_version(text: str) -> Version:
    """A PEP 440 version, or ReleaseError."""
    try:
        return Version(text)
    except InvalidVersion as exc:
        raise ReleaseError(f"not a release version: {text!r}") from exc


def artefact_name(version: str) -> str:
    """The file name of the artefact of ``version``."""
    return f"bansos-edge-{version}.tar"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# -- keys ------------------------------------------------------------------------------------


def generate_release_key(path: Path | str) -> bytes:
    """Make a release signing key at ``path`` (0600) and its public PEM at ``<path>.pub``."""
    path = Path(path)
    if path.exists():
        raise KeyFileError(f"{path}: exists; refusing to overwrite a release key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(path, pem)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.with_name(path.name + ".pub").write_bytes(pub)
    return pub


def load_release_private_key(path: Path | str) -> ed25519.Ed25519PrivateKey:
    """The release signing key made by :func:`generate_release_key`."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"release key {path}: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"release key {path}: not an Ed25519 private key")
    return key


# -- build -----------------------------------------------------------------------------------


def checkout_facts(checkout: Path, python: str = sys.executable) -> dict:
    """Version and ledger layout of the code in ``checkout`` (read by that code itself)."""
    probe = (
        "import json, edge, edge.ledger.schema as s;"
        "print(json.dumps({'version': edge.__version__, 'ledger': s.LEDGER_VERSION,"
        " 'migrations': sorted(s.MIGRATIONS)}))"
    )
    env = dict(os.environ, PYTHONPATH=str(checkout))
    out = subprocess.run(
        [python, "-c", probe], cwd=checkout, env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise ReleaseError(f"cannot read the checkout's version: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout)


def build_wheelhouse(
    checkout: Path, out: Path, *, platform: str | None = None, deps: bool = False
) -> dict:
    """Put the wheels a terminal installs into ``out``; return what the manifest says of them.

    Replaceable: provisioning's wheelhouse builder (hash-pinned lock, every target platform)
    takes its place where it exists. This one builds this project's wheel and, with ``deps``,
    downloads binary wheels of its runtime dependencies for ``platform``.
    """
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # With build isolation: pyproject.toml needs a newer setuptools than a venv may carry.
    cmd = [*pip, "wheel", "--no-deps", "-w", str(out), str(checkout)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise ReleaseError(f"pip wheel failed: {run.stderr.strip()[-400:]}")
    if deps:
        # The dependencies of the wheel just built, as binary wheels for the target.
        (wheel,) = out.glob("bansos_edge-*.whl")
        cmd = [*pip, "download", "--only-binary=:all:", "-d", str(out), str(wheel)]
        if platform:
            cmd += ["--platform", platform]
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise ReleaseError(f"pip download failed: {run.stderr.strip()[-400:]}")
    return {"platform": platform or "any", "deps": deps}


def _copy_models(models_dir: Path, out: Path) -> None:
    manifest_path = models_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{manifest_path}: {exc}; run `make models` first") from exc
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(manifest_path, out / "manifest.json")
    for name, entry in manifest["models"].items():
        src = models_dir / entry["file"]
        if not src.is_file() or sha256_file(src) != entry["sha256"]:
            raise ReleaseError(f"model {name}: {src} is missing or differs from its manifest")
        shutil.copyfile(src, out / entry["file"])


def _copy_units(systemd_dir: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(systemd_dir.iterdir()):
        if src.suffix in UNIT_SUFFIXES or src.name.endswith(".example.toml"):
            shutil.copyfile(src, out / src.name)


def _file_table(tree: Path) -> dict[str, dict]:
    files = {}
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        rel = path.relative_to(tree).as_posix()
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def build_release(
    checkout: Path | str,
    key_path: Path | str,
    out_dir: Path | str,
    *,
    version: str | None = None,
    models_dir: Path | str | None = None,
    platform: str | None = None,
    deps: bool = False,
    wheelhouse=build_wheelhouse,
) -> Path:
    """Build and sign the release of ``checkout``; return the artefact's path.

    ``version`` must be the checkout's own (``edge.__version__``): the running version a
    terminal reports is that of the code, so a release cannot be named anything else.
    """
    checkout = Path(checkout).resolve()
    key = load_release_private_key(key_path)
    facts = checkout_facts(checkout)
    if version is not None and version != facts["version"]:
        raise ReleaseError(
            f"--version {version} but the checkout is {facts['version']}: bump edge/__init__.py "
            "and pyproject.toml first"
        )
    parse_version(facts["version"])
    with tempfile.TemporaryDirectory(prefix="release-") as tmp:
        tree = Path(tmp) / "tree"
        wheels = wheelhouse(checkout, tree / "wheels", platform=platform, deps=deps)
        _copy_models(
            Path(models_dir) if models_dir else checkout / "models" / "out", tree / "models"
        )
        _copy_units(checkout / "systemd", tree / "systemd")
        manifest = {
            "schema": SCHEMA,
            "version": facts["version"],
            "built_at": iso_utc(time.time(), "seconds"),
            "wheelhouse": wheels,
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            # The migration list: a terminal checks it before switching back (see install.py).
            "ledger": {"version": facts["ledger"], "migrations_from": facts["migrations"]},
            "files": _file_table(tree),
        }
        body = canonical(manifest)
        sig = base64.b64encode(key.sign(body))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        target = out / artefact_name(facts["version"])
        partial = target.with_name(target.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, MANIFEST, body)
            _add_bytes(tar, SIGNATURE, sig)
            for rel in manifest["files"]:
                info = tar.gettarinfo(str(tree / rel), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                with open(tree / rel, "rb") as f:
                    tar.addfile(info, f)
        os.replace(partial, target)
    log.info("built release %s (%d files)", facts["version"], len(manifest["files"]))
    return target


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


# -- verify ----------------------------------------------------------------------------------


def _safe_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if not (member.isfile() or member.isdir()):
        raise ReleaseError(f"{name}: only files and folders may be in a release")
    parts = Path(name).parts
    if name.startswith("/") or ".." in parts or not parts:
        raise ReleaseError(f"{name}: path escapes the release folder")
    if member.isfile() and name not in (MANIFEST, SIGNATURE) and parts[0] not in TOP_DIRS:
        raise ReleaseError(f"{name}: unexpected file in a release")


def _read_signed_manifest(tar: tarfile.TarFile, public_pem: bytes) -> dict:
    try:
        body = _member_bytes(tar, MANIFEST)
        sig = base64.b64decode(_member_bytes(tar, SIGNATURE), validate=True)
    except (KeyError, ValueError) as exc:
        raise ReleaseError(f"not a signed release: {exc}") from exc
    if not verify_ed25519(load_ed25519_public(public_pem), sig, body):
        raise ReleaseError("release signature does not verify with the release key")
    manifest = json.loads(body)
    if manifest.get("schema") != SCHEMA:
        raise ReleaseError(f"unknown release schema {manifest.get('schema')!r}")
    parse_version(str(manifest.get("version")))
    return manifest


def _member_bytes(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.getmember(name)
    if not member.isfile() or member.size > MAX_MANIFEST_BYTES:
        raise ReleaseError(f"{name}: not a small file")
    f = tar.extractfile(member)
    assert f is not None
    return f.read()


def verify_release(
    path: Path | str, public_pem: bytes, *, extract_to: Path | None = None
) -> Release:
    """Check an artefact (signature, then every file's size and sha256) and return it.

    With ``extract_to``, the files are also written there while they are checked, so an
    install reads the artefact once. Anything unsigned, tampered, truncated, missing or extra
    is a ReleaseError, and nothing written to ``extract_to`` may then be used.
    """
    path = Path(path)
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            for member in members:
                _safe_member(member)
            manifest = _read_signed_manifest(tar, public_pem)
            expected = manifest["files"]
            seen = set()
            for member in members:
                if not member.isfile() or member.name in (MANIFEST, SIGNATURE):
                    continue
                entry = expected.get(member.name)
                if entry is None:
                    raise ReleaseError(f"{member.name}: not listed in the signed manifest")
                _check_member(tar, member, entry, extract_to)
                seen.add(member.name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ReleaseError(f"{path.name}: unreadable or truncated artefact ({exc})") from exc
    missing = sorted(set(expected) - seen)
    if missing:
        raise ReleaseError(f"files missing from the artefact: {', '.join(missing[:3])}")
    return Release(path, manifest)


def _check_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, entry: dict, extract_to: Path | None
) -> None:
    if member.size != entry["bytes"]:
        raise ReleaseError(f"{member.name}: {member.size} bytes, manifest says {entry['bytes']}")
    f = tar.extractfile(member)
    assert f is not None
    digest = hashlib.sha256()
    sink = None
    if extract_to is not None:
        dest = extract_to / member.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        sink = open(dest, "wb")
    try:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
            if sink is not None:
                sink.write(block)
        if sink is not None:
            sink.flush()
            os.fsync(sink.fileno())
    finally:
        if sink is not None:
            sink.close()
    if digest.hexdigest() != entry["sha256"]:
        raise ReleaseError(f"{member.name}: sha256 differs from the signed manifest")


def verify_tree(tree: Path, manifest: dict) -> None:
    """Check an installed release folder against its manifest (recovery after a power cut)."""
    for rel, entry in manifest["files"].items():
        path = tree / rel
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            raise ReleaseError(f"{rel}: missing or truncated in {tree}")
        if sha256_file(path) != entry["sha256"]:
            raise ReleaseError(f"{rel}: sha256 differs in {tree}")
