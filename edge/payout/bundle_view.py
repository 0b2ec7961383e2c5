"""The bundle a payout is judged against, with the gallery of its face templates."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edge.ports import Bundle, BundleProvider
from edge.vision.matcher import Gallery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveBundle:
    """A bundle and the gallery built from it, taken together so that they always agree."""

    bundle: Bundle | None
    gallery: Gallery

    @property
    def bundle_id(self) -> str | None:
        return self.bundle.bundle_id if self.bundle is not None else None


class BundleView:
    """The current bundle with its gallery, rebuilt only when the bundle changes."""

    def __init__(self, provider: BundleProvider) -> None:
        self._provider = provider
        self.active = ActiveBundle(None, Gallery())

    def refresh(self) -> ActiveBundle:
        """Ask the provider for the bundle to use now; rebuild the gallery if it changed."""
        bundle = self._provider()
        bundle_id = bundle.bundle_id if bundle is not None else None
        if bundle_id != self.active.bundle_id:
            if bundle is None:
                self.active = ActiveBundle(None, Gallery())
            else:
                labels, matrix = bundle.templates()
                self.active = ActiveBundle(bundle, Gallery.from_matrix(labels, matrix))
                log.info("bundle %s active: %d templates", bundle_id, len(labels))
        return self.active
