"""The installed enrolment bundle of this terminal: verified before use, last good one kept."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edge.enrolment.bundle import Bundle, verify_and_open
from edge.errors import BundleError
from edge.events import iso_utc
from edge.fsutil import write_atomic
from edge.keys import DeviceIdentity

log = logging.getLogger(__name__)


class BundleStore:
    """The installed bundle under ``state_dir/bundles``: verify before use, keep the last good."""

    def __init__(
        self,
        state_dir: Path | str,
        central_public_pem: bytes,
        identity: DeviceIdentity,
        model_id: str,
        model_sha256: str,
        *,
        device_id: str | None = None,
        clock=time.time,
    ) -> None:
        self.dir = Path(state_dir) / "bundles"
        self.path = self.dir / "current.bundle"
        self._central = central_public_pem
        self._identity = identity
        self._model_id = model_id
        self._model_sha256 = model_sha256
        self._device_id = device_id
        self._clock = clock
        self._current: Bundle | None = None
        self._expiry_logged = False
        if self.path.exists():
            try:
                self._current = self._verify(self.path.read_bytes())
                log.info("bundle %s loaded: %s", self._current.bundle_id, self._current.summary())
            except (BundleError, OSError) as exc:
                log.warning("installed bundle not usable: %s", exc)

    def _verify(self, blob: bytes) -> Bundle:
        return verify_and_open(
            blob,
            self._central,
            self._identity,
            self._model_id,
            self._model_sha256,
            self._clock(),
            self._device_id,
        )

    def install(self, blob: bytes) -> Bundle:
        """Verify ``blob`` and make it the current bundle, or raise BundleError keeping the old."""
        try:
            bundle = self._verify(blob)
            old = self._current
            if old and old.round_id == bundle.round_id and bundle.issued_at < old.issued_at:
                # A replayed older bundle could bring back a household central has removed.
                issued, installed = (iso_utc(b.issued_at, "seconds") for b in (bundle, old))
                raise BundleError(
                    f"bundle issued {issued} is older than the installed one ({installed})"
                )
        except BundleError as exc:
            log.warning("bundle refused, keeping the last good one: %s", exc)
            raise
        write_atomic(self.path, blob, 0o600)
        self._current = bundle
        self._expiry_logged = False
        log.info("bundle %s installed: %s", bundle.bundle_id, bundle.summary())
        return bundle

    def current(self) -> Bundle | None:
        """The installed bundle if it is valid now, else None (an expired bundle pays nobody)."""
        b = self._current
        if b is None:
            return None
        if not b.is_valid_at(self._clock()):
            if not self._expiry_logged:
                log.warning("bundle %s is outside its validity window", b.bundle_id)
                self._expiry_logged = True
            return None
        return b
