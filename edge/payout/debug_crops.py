"""Face crops kept for debugging (``flow.store_debug_images``): one PNG per decided capture.

A face image is personal data, so this is off by default, and the folder and files are
readable by the daemon's user only. The payout flow hands each crop over with the event id of
the decision it belongs to, after that decision is recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.fsutil import write_atomic

log = logging.getLogger(__name__)


class DebugCrops:
    """Writes aligned face crops as ``<folder>/<event_id>.png`` (mode 0600)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def keep(self, event_id: str, crop: np.ndarray) -> None:
        """Store an RGB crop under its event id; a failure is logged, never raised (the
        decision is already recorded and must still be signalled and printed)."""
        import cv2

        path = self.folder / f"{event_id}.png"
        try:
            ok, png = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            if not ok:
                raise ValueError("PNG encoding failed")
            write_atomic(path, png.tobytes(), 0o600)
        except (OSError, ValueError, cv2.error) as exc:
            log.warning("debug face crop for event %s not kept: %s", event_id, exc)
            return
        log.info("debug face crop kept for event %s (flow.store_debug_images is on)", event_id)
