"""What provisioning does for updates over the air (edge/ota): the release key and its CA, the
``[ota]`` section of the config, the update units, and a terminal installed straight from a
signed release artefact (``provision --release bansos-edge-<v>.tar``).

A terminal provisioned from a release has the layout edge/ota's installer keeps::

    /opt/edge/releases/<v>/   release.json, wheels/, models/, systemd/ (venv/ at first boot)
    /opt/edge/current  -> releases/<v>
    /opt/edge/previous -> releases/<v>       until the first update confirms
    /opt/edge/venv     -> current/venv       what the units run
    /opt/edge/models   -> current/models     what models.dir names

so the first update has a release to switch back to, and nothing needs adopting.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from target import ETC, MODELS, OPT, UNIT_DIR, VENV, Target

RELEASE_PUB = ETC / "release_public.pem"
RELEASE_CA = ETC / "release_ca.pem"
RELEASES = OPT / "releases"
CURRENT = OPT / "current"
PREVIOUS = OPT / "previous"
INCOMPLETE = ".incomplete"  # as edge/ota/install.py: "not whole yet"
# The update units; the two with an [Install] section are enabled.
OTA_UNITS = ("edge-update.path", "edge-update.service", "edge-rollback.service")
OTA_UNITS += ("edge-recover.service",)
OTA_WANTS = {
    "edge-update.path": UNIT_DIR / "multi-user.target.wants" / "edge-update.path",
    "edge-recover.service": UNIT_DIR / "multi-user.target.wants" / "edge-recover.service",
}


def check(args: argparse.Namespace):
    """Refuse a bad release key or artefact before anything is written; the verified
    :class:`edge.ota.release.Release` when ``--release`` is given."""
    from edge.errors import KeyFileError
    from edge.keys import load_ed25519_public

    if args.release and not args.release_pub:
        raise SystemExit("provision: --release needs --release-pub to verify it")
    if args.release and args.models:
        raise SystemExit("provision: a release carries its models: give --release or --models")
    if args.release_ca and not args.release_pub:
        raise SystemExit("provision: --release-ca needs --release-pub (updates are off without)")
    if not args.release_pub:
        return None
    pem = Path(args.release_pub).read_bytes()
    try:
        load_ed25519_public(pem)
    except KeyFileError as exc:
        raise SystemExit(f"provision: --release-pub: {exc}") from exc
    if args.central_pub and Path(args.central_pub).read_bytes().strip() == pem.strip():
        raise SystemExit("provision: --release-pub is central's bundle key; give the release key")
    if not args.release:
        return None
    from edge.ota.release import verify_release

    return verify_release(Path(args.release), pem)


def config_values(args: argparse.Namespace) -> dict:
    """The ``[ota]`` keys this run sets (none without a release key: updates stay refused)."""
    if not args.release_pub:
        return {}
    ota = {"release_public_key": f"/{RELEASE_PUB}", "root": f"/{OPT}"}
    if args.release_ca:
        ota["ca_file"] = f"/{RELEASE_CA}"
    return {"ota": ota}


def install_trust(target: Target, args: argparse.Namespace) -> None:
    if args.release_pub:
        target.copy(Path(args.release_pub), RELEASE_PUB)
    if args.release_ca:
        target.copy(Path(args.release_ca), RELEASE_CA)


def link(target: Target, rel: Path, text: str) -> None:
    """A relative symlink ``rel`` -> ``text``, replaced atomically when it differs."""
    path = target.path(rel)
    if path.is_symlink() and os.readlink(path) == text:
        target.report.add("unchanged", f"/{rel}", f"-> {text}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(text, tmp)
    os.replace(tmp, path)
    target.report.add("created", f"/{rel}", f"-> {text}")


def install_release(target: Target, args: argparse.Namespace, release) -> Path:
    """Unpack the verified ``release`` at ``releases/<v>`` and point the links at it; return
    the release folder. The files are checked again as they are written."""
    from edge.errors import ReleaseError
    from edge.ota.release import MANIFEST, verify_release, verify_tree

    version = release.version
    rel = RELEASES / version
    dest = target.path(rel)
    current = target.path(CURRENT)
    if current.is_symlink() and os.readlink(current) != f"releases/{version}":
        raise SystemExit(
            f"provision: this terminal runs {os.readlink(current)}; update it with "
            "`edge release install`, not by provisioning"
        )
    for shared in (VENV, MODELS):  # refused before anything is written
        if target.path(shared).is_dir() and not target.path(shared).is_symlink():
            raise SystemExit(
                f"provision: /{shared} is a real folder (provisioned before releases); install "
                "the release with `edge release install`, which adopts it"
            )
    if _whole(dest, release.manifest, verify_tree, ReleaseError):
        target.report.add("unchanged", f"/{rel}/", f"release {version}, sha256 verified")
    else:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        (dest / INCOMPLETE).write_text(version)
        pem = Path(args.release_pub).read_bytes()
        written = verify_release(Path(args.release), pem, extract_to=dest)
        if written.manifest != release.manifest:
            raise SystemExit("provision: the artefact changed while it was being installed")
        (dest / MANIFEST).write_text(json.dumps(release.manifest, indent=1))
        (dest / INCOMPLETE).unlink()
        files = len(release.manifest["files"])
        target.report.add("created", f"/{rel}/", f"release {version}, {files} files")
    link(target, CURRENT, f"releases/{version}")
    link(target, PREVIOUS, f"releases/{version}")
    link(target, VENV, "current/venv")
    link(target, MODELS, "current/models")
    return dest


def _whole(dest: Path, manifest: dict, verify_tree, error) -> bool:
    """The release folder is already there, complete and unchanged (a second run)."""
    if not dest.is_dir() or (dest / INCOMPLETE).exists():
        return False
    try:
        installed = json.loads((dest / "release.json").read_text())
        if installed.get("files") != manifest["files"]:
            return False
        verify_tree(dest, manifest)
    except (OSError, ValueError, error):
        return False
    return True


def install_or_find(target: Target, args: argparse.Namespace, release) -> Path | None:
    """The verified ``release`` installed, or without one the release installed earlier."""
    return install_release(target, args, release) if release else installed_release(target)


def installed_release(target: Target) -> Path | None:
    """The release folder ``current`` points at, or None."""
    current = target.path(CURRENT)
    return current.resolve() if current.is_symlink() else None


def release_wheel(release_dir: Path) -> Path | None:
    """The terminal's own wheel in a release's wheelhouse."""
    wheels = sorted((release_dir / "wheels").glob("bansos_edge-*.whl"))
    return wheels[-1] if wheels else None


def first_boot_argv(args: argparse.Namespace) -> list[str]:
    """The update arguments first boot passes on (the files are already on the card)."""
    argv = ["--release-pub", f"/{RELEASE_PUB}"] if args.release_pub else []
    if args.release_ca:
        argv += ["--release-ca", f"/{RELEASE_CA}"]
    return argv


def before_pip(install_release) -> None:
    """On a running Pi the release is verified and unpacked before pip makes the venv, so with
    this checkout's edge package on the system Python."""
    try:
        install_release()
    except ModuleNotFoundError as exc:
        raise SystemExit(
            f"provision: cannot verify the release ({exc}): apt install python3-cryptography "
            "python3-packaging python3-pydantic, or provision the card with --root"
        ) from exc
