"""The daemon's side of an update: take the ``update`` command, fetch, check, ask to install.

The daemon runs unprivileged with a read-only ``/opt``, so it never installs anything itself.
It downloads the artefact into its state dir (HTTPS with resume, or chunks over MQTT), checks
the sha256 the signed command named and the release signature, and writes
``ota/request.json``. ``edge-update.path`` sees that file and starts ``edge-update.service``
(root), which verifies again and unpacks (:mod:`edge.ota.install`) while payouts go on. When
the installer is ready to switch it says so (``ota/switch``); the daemon pauses claims at the
first moment no capture runs and answers ``ota/paused``. After the restart this side reads
the installer's journal and reports how it ended.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge import __version__
from edge.errors import CommandRefused, KeyFileError, ReleaseError
from edge.fsutil import write_atomic
from edge.keys import load_central_public_pem
from edge.ota.deploy import PAUSED, SWITCH
from edge.ota.fetch import ChunkFile, https_fetch
from edge.ota.install import DONE
from edge.ota.release import artefact_name, parse_version, sha256_file, verify_release

log = logging.getLogger(__name__)

REQUEST = "request.json"
ACTIVE = ("downloading", "staged", "requested")
RETRIES = 5
PAUSE_REASON = "update"
# Between the daemon's pause and the installer stopping it: seconds, unless it died.
PAUSE_MAX_S = 120.0


def load_release_key(cfg: Any) -> bytes | None:
    """The release public key of ``ota.release_public_key``; None when unset.

    Refused when it is central's bundle key: the two keys guard different things and must
    never be one (see edge/ota/release.py).
    """
    pem = load_central_public_pem(cfg.ota.release_public_key, key="ota.release_public_key")
    if pem is None:
        return None
    central = load_central_public_pem(cfg.bundle.central_public_key)
    if central is not None and central.strip() == pem.strip():
        raise KeyFileError(
            "ota.release_public_key is central's bundle key; install the release key instead"
        )
    return pem


class UpdateAgent:
    """Download, check and stage one release at a time; report progress for health."""

    def __init__(
        self,
        cfg: Any,
        *,
        running: str = __version__,
        fetch: Callable[..., None] = https_fetch,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.running = running
        self.dir = cfg.state_path / "ota"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._pem = load_release_key(cfg)
        self._fetch = fetch
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._requested_at: float | None = None
        self._paused_at: float | None = None
        self._next_look = 0.0
        self._received = 0
        self.state: dict = self._load()
        self.news = self._settle()

    # -- persistence ------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.dir / "download.json"

    def _load(self) -> dict:
        try:
            return json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, **fields: Any) -> None:
        self.state = {**self.state, **fields}
        write_atomic(self._state_path, json.dumps(self.state).encode(), mode=0o644)

    def _partial(self, version: str) -> Path:
        return self.dir / (artefact_name(version) + ".part")

    def _settle(self) -> bool:
        """At start: take the installer's verdict on a release this daemon asked for."""
        if self.state.get("state") != "requested":
            if self.state.get("state") == "downloading" and self.state.get("url"):
                self._start_download()
            return False
        try:
            journal = json.loads((self.dir / "journal.json").read_text())
        except (OSError, ValueError):
            journal = {}
        ours = journal.get("request") == self.state.get("request_id")
        if (
            ours
            and journal.get("version") == self.state["version"]
            and journal.get("state") in DONE
        ):
            (self.dir / REQUEST).unlink(missing_ok=True)
            (self.dir / artefact_name(self.state["version"])).unlink(missing_ok=True)
            self._save(state=journal["state"], error=journal.get("error"))
            log.info("update to %s ended: %s", self.state["version"], journal["state"])
            return True
        if self._requested_at is None:
            # Asked for but never picked up (the daemon restarted first): ask again when idle.
            self._save(state="staged")
        return False

    # -- the command ------------------------------------------------------------------------

    def action(self, args: dict) -> dict:
        """The ``update`` command: start (or continue) fetching the named release."""
        with self._lock:
            self._check_command(args)
            if not self._same_release(args):
                self._begin(args)
            if "url" in args:
                if self.state["state"] == "downloading":
                    self._start_download()
            elif self.state["state"] == "downloading":
                self._chunk(args)
            return self.progress() or {}

    def _check_command(self, args: dict) -> None:
        if self._pem is None:
            raise CommandRefused("no release key configured (ota.release_public_key)")
        try:
            version = parse_version(args["version"])
            if version <= parse_version(self.running):
                raise CommandRefused(
                    f"release {args['version']} is not newer than the running {self.running}"
                )
        except ReleaseError as exc:
            raise CommandRefused(str(exc)) from exc
        if args["size"] > self.cfg.ota.max_bytes:
            raise CommandRefused(f"release of {args['size']} bytes exceeds ota.max_bytes")
        pending = self.state.get("version")
        if self.state.get("state") == "requested" and pending != args["version"]:
            raise CommandRefused(f"the install of {pending} is under way")
        if self.state.get("state") in ACTIVE and pending and not self._same_release(args):
            if parse_version(pending) > version:
                raise CommandRefused(f"a newer release ({pending}) is already pending")

    def _same_release(self, args: dict) -> bool:
        return (
            self.state.get("state") in ACTIVE
            and self.state.get("version") == args["version"]
            and self.state.get("sha256") == args["sha256"]
        )

    def _begin(self, args: dict) -> None:
        self._stop_download()
        for old in self.dir.glob("bansos-edge-*"):
            old.unlink()
        self._received = 0
        self.state = {}
        self._save(
            state="downloading",
            version=args["version"],
            size=args["size"],
            sha256=args["sha256"],
            url=args.get("url"),
            error=None,
        )
        log.info("update to %s: download started", args["version"])

    def _chunk(self, args: dict) -> None:
        part = ChunkFile(
            self._partial(args["version"]), args["size"], args["chunks"], args["chunk_bytes"]
        )
        try:
            part.write(args["chunk"], base64.b64decode(args["data"]))
        except ReleaseError as exc:
            raise CommandRefused(str(exc)) from exc
        self._received = part.received
        if part.complete:
            part.discard()
            self._check_artefact()

    # -- HTTPS ------------------------------------------------------------------------------

    def _start_download(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._download, name="ota-fetch", daemon=True)
        self._thread.start()

    def _stop_download(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _download(self) -> None:
        st = dict(self.state)
        part = self._partial(st["version"])
        for attempt in range(RETRIES):
            try:
                self._fetch(
                    st["url"],
                    part,
                    st["size"],
                    self.cfg.ota.ca_file,
                    progress=self._progress,
                    stop=self._stop.is_set,
                )
                break
            except ReleaseError as exc:
                log.warning("update download attempt %d: %s", attempt + 1, exc)
                if self._stop.wait(min(60.0, 2.0 * 2**attempt)):
                    return
        else:
            with self._lock:
                self._save(state="failed", error="download failed")
            return
        if self._stop.is_set():
            return
        with self._lock:
            if self.state.get("version") == st["version"]:
                self._check_artefact()

    def _progress(self, received: int) -> None:
        self._received = received

    # -- checks and the request -------------------------------------------------------------

    def _check_artefact(self) -> None:
        version = self.state["version"]
        part = self._partial(version)
        if sha256_file(part) != self.state["sha256"]:
            part.unlink(missing_ok=True)
            self._save(state="failed", error="sha256 differs from the update command")
            return
        try:
            release = verify_release(part, self._pem or b"")
            if release.version != version:
                raise ReleaseError(f"artefact is release {release.version}, not {version}")
        except ReleaseError as exc:
            part.unlink(missing_ok=True)
            self._save(state="failed", error=str(exc)[:200])
            log.error("update to %s refused: %s", version, exc)
            return
        part.rename(self.dir / artefact_name(version))
        self._save(state="staged", error=None)
        log.info("update to %s staged; installing when no capture runs", version)

    def poll(self, busy: bool) -> str | None:
        """Called by the daemon's loop: the reason to pause claims, or None.

        A staged release is handed to the installer, which unpacks it while payouts go on.
        When it is ready to switch (``ota/switch``), claims pause at the first moment no
        capture runs and ``ota/paused`` tells the installer it may stop the daemon. A pause
        the installer does not end within ``PAUSE_MAX_S``, or a request it does not answer
        within ``ota.apply_wait_s``, is given up and reported.
        """
        with self._lock:
            st = self.state.get("state")
            if st == "staged" and not busy:
                self._request()
                return None
            if st != "requested":
                return None
            now = self._monotonic()
            if self._requested_at is None:
                self._requested_at = now
            if self._paused_at is not None:
                if now - self._paused_at <= PAUSE_MAX_S:
                    return PAUSE_REASON
                self._give_up("the installer did not stop the daemon")
                return None
            if (self.dir / SWITCH).exists() and not busy:
                write_atomic(self.dir / PAUSED, b"{}", mode=0o644)
                self._paused_at = now
                log.info("update to %s: claims paused for the switch", self.state["version"])
                return PAUSE_REASON
            if now >= self._next_look:
                # The installer may have refused before the switch (e.g. a damaged artefact).
                self._next_look = now + 2.0
                if self._settle():
                    self.news = True
                    return None
            if now - self._requested_at > self.cfg.ota.apply_wait_s:
                self._give_up("the installer did not start")
            return None

    def _request(self) -> None:
        version = self.state["version"]
        request_id = str(uuid.uuid4())
        request = {"version": version, "artefact": artefact_name(version), "id": request_id}
        for stale in (SWITCH, PAUSED):
            (self.dir / stale).unlink(missing_ok=True)
        write_atomic(self.dir / REQUEST, json.dumps(request).encode(), mode=0o644)
        self._save(state="requested", request_id=request_id)
        self._requested_at = self._monotonic()
        log.info("update to %s: install requested", version)

    def _give_up(self, why: str) -> None:
        for name in (REQUEST, PAUSED):
            (self.dir / name).unlink(missing_ok=True)
        self._paused_at = None
        self._save(state="failed", error=why)
        log.error("update to %s: %s", self.state["version"], why)

    def progress(self) -> dict | None:
        """The update in hand for health and results, None when there never was one."""
        st = self.state
        if not st.get("version"):
            return None
        received = st["size"] if st.get("state") in ("staged", "requested") else self._received
        return {
            "version": st["version"],
            "state": st.get("state"),
            "received": received if st.get("state") in ACTIVE else None,
            "size": st.get("size"),
            "error": st.get("error"),
        }

    def health(self) -> dict:
        """The fields this part adds to health: running version and the update in hand."""
        return {"version": self.running, "update": self.progress()}

    def close(self) -> None:
        """Stop a running download (it resumes at the next start)."""
        self._stop_download()
