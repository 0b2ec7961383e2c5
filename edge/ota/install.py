"""Install a verified release side by side, switch to it, confirm it or switch back.

Layout under the root prefix (``ota.root``, ``/opt/edge`` on a terminal, a tmp dir in tests)::

    releases/<version>/   release.json, wheels/, models/, systemd/, venv/
    current  -> releases/<version>   what edge.service runs (switched by renaming a temp link)
    previous -> releases/<version>   the last confirmed release, kept until the next confirm

Every step is written to a journal in the state dir (``ota/journal.json``) before the next
begins, so :meth:`Installer.recover` (run at boot and by ``edge-rollback.service``) can finish
or undo whatever a power cut interrupted, always leaving ``current`` on a whole release.

Runs as root (``edge-update.service``): the daemon only downloads and checks the artefact and
asks for the install at a moment no capture runs; this side verifies everything again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from edge.errors import ReleaseError
from edge.events import iso_utc
from edge.fsutil import write_atomic
from edge.ota.deploy import PAUSED, SWITCH, Deploy, Selftest, Service, install_units, probe_venv
from edge.ota.release import MANIFEST, parse_version, verify_release, verify_tree

log = logging.getLogger(__name__)

# Journal states. A trial is a switched release not yet confirmed.
TRIAL = ("switching", "switched", "testing")
DONE = ("idle", "confirmed", "rolled_back", "failed", "rollback_refused")
HISTORY = 20
SHARED = ("venv", "models")
INCOMPLETE = ".incomplete"


Cut = Callable[[str], None]


class PowerCut(Exception):
    """Raised by a test's ``cut`` hook to stop the installer dead after a step."""


def ledger_layout(path: Path) -> int | None:
    """The layout version of the ledger at ``path`` (read only), or None when there is none."""
    if not path.exists():
        return None
    from edge.ledger.schema import layout_version

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        return layout_version(conn, meta)
    finally:
        conn.close()


def read_manifest(release_dir: Path) -> dict | None:
    """The manifest of an installed release folder, or None."""
    try:
        return json.loads((release_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


class Installer:
    """The root side of an update on one root prefix (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        state_dir: Path,
        release_public_pem: bytes,
        *,
        service: Service,
        selftest: Selftest,
        deploy: Deploy,
        confirm_timeout_s: float = 120.0,
        unit_dir: Path | None = None,
        wait_idle: Callable[[], bool] | None = None,
        cut: Cut | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.releases = self.root / "releases"
        self.current = self.root / "current"
        self.previous = self.root / "previous"
        self.state_dir = Path(state_dir)
        self.journal_path = self.state_dir / "ota" / "journal.json"
        self._pem = release_public_pem
        self.service = service
        self.selftest = selftest
        self.deploy = deploy
        self.confirm_timeout_s = confirm_timeout_s
        # Where the releases' unit files go (/etc/systemd/system); None leaves units alone.
        self.unit_dir = unit_dir
        # Asks the daemon to pause between captures and waits for it (see file_handshake);
        # None: stop it at once (a technician's install, tests).
        self.wait_idle = wait_idle
        self._cut = cut
        self._clock = clock
        # The daemon's request this run answers ("" for a technician's install), recorded with
        # each step so the daemon does not take an older verdict for its own.
        self._request: str | None = None

    # -- journal ----------------------------------------------------------------------------

    def journal(self) -> dict:
        """The last step written, ``{"state": "idle"}`` when nothing was ever installed."""
        try:
            return json.loads(self.journal_path.read_text())
        except (OSError, ValueError):
            return {"state": "idle"}

    def _step(self, state: str, **fields) -> dict:
        old = self.journal()
        if self._request is not None:
            fields.setdefault("request", self._request)
        entry = {**{k: v for k, v in old.items() if k != "history"}, **fields, "state": state}
        entry["ts"] = iso_utc(self._clock(), "seconds")
        history = (old.get("history") or [])[-(HISTORY - 1) :]
        entry["history"] = [*history, {"state": state, "ts": entry["ts"], **fields}]
        # 0644: the daemon (another user) reads it to report the outcome.
        self._ota_dir()
        write_atomic(self.journal_path, json.dumps(entry, indent=1).encode(), mode=0o644)
        log.info("update %s %s", state, entry.get("version"))
        self._point(state)
        return entry

    def _ota_dir(self) -> None:
        # Shared with the daemon, which writes its downloads and answers there: made by root
        # (a technician's install before the first start), it must still belong to the daemon.
        ota = self.journal_path.parent
        if ota.is_dir():
            return
        ota.mkdir(parents=True, mode=0o700)
        owner = self.state_dir.stat()
        if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
            os.chown(ota, owner.st_uid, owner.st_gid)

    def _point(self, name: str) -> None:
        if self._cut is not None:
            self._cut(name)

    # -- what is installed ------------------------------------------------------------------

    def current_version(self) -> str | None:
        """The version ``current`` points at, or None on a terminal without releases."""
        manifest = read_manifest(self.current) if self.current.exists() else None
        return str(manifest["version"]) if manifest else None

    def _link(self, link: Path, target: Path | str) -> None:
        # A symlink cannot be overwritten in place; a rename of a new one over it is atomic.
        tmp = link.with_name(link.name + ".new")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        # A str is the link text as is ("current/venv" resolves through ``current``).
        rel = target if isinstance(target, str) else os.path.relpath(target, link.parent)
        os.symlink(rel, tmp)
        self._point(f"link-{link.name}-made")
        os.replace(tmp, link)
        _fsync_dir(link.parent)

    # -- install ----------------------------------------------------------------------------

    def unpack(self, artefact: Path) -> Path:
        """Verify the artefact and put it, deployed, at ``releases/<version>``."""
        release = verify_release(artefact, self._pem)
        version = release.version
        self._refuse_older(version)
        final = self.releases / version
        complete = final.is_dir() and not (final / INCOMPLETE).exists()
        if complete and (read_manifest(final) or {}).get("files") == release.manifest["files"]:
            try:
                verify_tree(final, release.manifest)
                if (final / "venv").is_dir():
                    return final  # a re-run after a power cut: nothing to redo
            except ReleaseError:
                pass
        self._step("unpacking", version=version, previous=self.current_version(), error=None)
        # Unpacked in place (a venv's scripts name their own path, so no rename afterwards);
        # the marker says "not whole yet" until the last file is synced.
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir(parents=True)
        (final / INCOMPLETE).write_text(version)
        _fsync_dir(self.releases)
        # Checked again as it is written: the file sits in the daemon's folder, so what is
        # extracted must be exactly what was verified, not whatever is there by now.
        written = verify_release(artefact, self._pem, extract_to=final)
        if written.manifest != release.manifest:
            raise ReleaseError("the artefact changed while it was being installed")
        (final / MANIFEST).write_text(json.dumps(release.manifest, indent=1))
        self._point("extracted")
        self.deploy(final, release.manifest)
        self._point("deployed")
        os.sync()
        (final / INCOMPLETE).unlink()
        _fsync_dir(final)
        self._step("unpacked", version=version)
        return final

    def _refuse_older(self, version: str) -> None:
        running = self.current_version()
        if running is not None and parse_version(version) <= parse_version(running):
            raise ReleaseError(f"release {version} is not newer than the running {running}")

    @contextlib.contextmanager
    def locked(self):
        """One installer at a time: edge-update and the OnFailure rollback may overlap."""
        self._ota_dir()
        with open(self.journal_path.with_name("installer.lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def apply(self, artefact: Path, version: str | None = None, request: str = "") -> dict:
        """Install, switch at once (the daemon asked: it is idle), confirm or switch back.

        Returns the final journal entry (``confirmed``, ``rolled_back``, ``rollback_refused``
        or ``failed``).
        """
        self._request = request
        try:
            new = self.unpack(Path(artefact))
        except (ReleaseError, OSError) as exc:
            # ``version``: what was asked for, so the daemon can tell its request was answered.
            self._step("failed", version=version, error=str(exc)[:300])
            raise
        if self.wait_idle is not None and not self.wait_idle():
            self._handshake_done()
            entry = self._step("failed", error="the daemon did not pause for the switch")
            raise ReleaseError(entry["error"])
        self.service.stop()
        self._handshake_done()
        self._point("stopped")
        self._adopt()
        previous = self.current.resolve() if self.current.exists() else None
        self._step("switching", version=new.name, previous=previous.name if previous else None)
        self._link(self.current, new)
        self._step("switched")
        self._shared_links()
        self._units(new)
        return self.confirm()

    def _handshake_done(self) -> None:
        for name in (SWITCH, PAUSED):
            (self.journal_path.parent / name).unlink(missing_ok=True)

    def _units(self, release_dir: Path) -> None:
        # The units travel with the release, so a rollback brings the old ones back too.
        if self.unit_dir is not None and install_units(release_dir / "systemd", self.unit_dir):
            self.service.reload()
            self._point("units")

    def _shared_links(self) -> None:
        # edge.service runs <root>/venv/bin/edge and the config names <root>/models: one link
        # each through ``current``, made once, so the unit and config never change.
        for name in SHARED:
            link = self.root / name
            if not link.is_symlink() or os.readlink(link) != f"current/{name}":
                self._link(link, f"current/{name}")

    def _adopt(self) -> None:
        """A terminal provisioned before releases (a real ``venv`` and ``models`` under the
        root) gets them moved into ``releases/<its version>``, so it has a release to go
        back to. Reached through the links, the moved venv keeps working: Python finds its
        pyvenv.cfg by the path it was started with."""
        venv = self.root / "venv"
        if self.current.exists() or venv.is_symlink() or not venv.is_dir():
            return
        facts = probe_venv(venv / "bin" / "python")
        version = facts.get("version") or "0"
        dest = self.releases / f"{version}+provisioned"
        # Made before the journal names it: a cut before that leaves only an incomplete
        # folder, which recovery removes.
        dest.mkdir(parents=True, exist_ok=True)
        (dest / INCOMPLETE).write_text(version)
        manifest = {"version": version, "ledger": {"version": facts.get("ledger", 0)}}
        manifest["files"] = {}
        (dest / MANIFEST).write_text(json.dumps({**manifest, "adopted": True}, indent=1))
        _fsync_dir(self.releases)
        self._step("adopting", version=version, previous=None, adopted=dest.name)
        self._finish_adopt(dest)

    def _finish_adopt(self, dest: Path) -> None:
        # Also the recovery of an adoption cut short: each move happens once.
        for name in SHARED:
            real = self.root / name
            if real.is_dir() and not real.is_symlink() and not (dest / name).exists():
                os.rename(real, dest / name)
                _fsync_dir(self.root)
                self._point(f"moved-{name}")
        self._link(self.current, dest)
        self._link(self.previous, dest)
        self._shared_links()
        (dest / INCOMPLETE).unlink(missing_ok=True)
        self._step("confirmed", version=dest.name, error=None)

    def confirm(self) -> dict:
        """Selftest the switched release, start it, wait for READY; else switch back."""
        new = self.current.resolve()
        self._step("testing")
        ok, detail = self.selftest(new)
        self._point("selftested")
        if ok and self.service.start(self.confirm_timeout_s):
            if self.current.exists():
                self._link(self.previous, new)
            entry = self._step("confirmed", error=None)
            self._prune(keep={new.name, entry.get("previous")})
            return entry
        why = f"selftest failed: {detail}" if not ok else "no READY within the confirm time"
        return self.rollback(why)

    def _prune(self, keep: set) -> None:
        # A card holds two releases: the one running and the one before it (until the next
        # update confirms, a rollback may still want it).
        for old in self.releases.iterdir():
            if old.is_dir() and old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
                log.info("removed release %s", old.name)

    def rollback(self, why: str) -> dict:
        """Switch ``current`` back to the previous release, unless the ledger forbids it.

        A ledger the newer release migrated to a layout the older code does not know stays
        where it is: switching back would leave a daemon that refuses its own ledger (and
        restoring an older copy would lose payouts). The terminal then stays on the new release.
        """
        entry = self.journal()
        prev_name = entry.get("previous")
        if not prev_name or not (self.releases / prev_name).is_dir():
            self.service.start(self.confirm_timeout_s)
            return self._step("rollback_refused", error=f"{why}; no previous release to go back to")
        prev = self.releases / prev_name
        needed = ledger_layout(self.state_dir / "ledger.sqlite")
        knows = int(((read_manifest(prev) or {}).get("ledger") or {}).get("version", 0))
        if needed is not None and needed > knows:
            self.service.start(self.confirm_timeout_s)
            return self._step(
                "rollback_refused",
                error=f"{why}; ledger layout {needed} is newer than {prev_name} knows ({knows})",
            )
        self._step("rolling_back", error=why[:300])
        self._link(self.current, prev)
        self._units(prev)
        self.service.start(self.confirm_timeout_s)
        return self._step("rolled_back")

    # -- recovery ---------------------------------------------------------------------------

    def recover(self, *, start_service: bool = False) -> dict:
        """Finish or undo an update a power cut or crash interrupted (idempotent).

        A trial that never confirmed is rolled back: the terminal cannot tell a new release
        that hung from one that was cut off, and the previous one is known to work.
        """
        for stale in (
            self.current.with_name("current.new"),
            self.previous.with_name("previous.new"),
        ):
            if stale.is_symlink():
                stale.unlink()
        entry = self.journal()
        state = entry["state"]
        if state == "adopting":
            self._finish_adopt(self.releases / entry["adopted"])
        running = self.current.resolve() if self.current.exists() else None
        if self.releases.is_dir():
            for partial in self.releases.glob(f"*/{INCOMPLETE}"):
                if partial.parent != running:
                    shutil.rmtree(partial.parent, ignore_errors=True)
        if state in ("adopting", "unpacking", "unpacked"):
            entry = self._step("failed", error="interrupted before the switch")
        elif state in TRIAL or state == "rolling_back":
            if self.current.exists() and self.current.resolve().name == entry.get("previous"):
                self._units(self.current.resolve())
                entry = self._step("rolled_back", error=entry.get("error") or "interrupted trial")
            else:
                entry = self.rollback(entry.get("error") or "interrupted before it was confirmed")
                return entry
        if start_service:
            self.service.start(self.confirm_timeout_s)
        return entry


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
