"""The photos and pairs every section shares: ../shared/faces (or EDGE_FACES_DIR).

Quick mode takes a fixed, small subset (the first photos of each source in manifest order), so
two quick runs measure the same thing. Pairs are always the ones listed in ``pairs.csv``,
restricted to the photos in use, so ours and face_recognition are scored on identical pairs.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def default_faces_dir() -> Path:
    """EDGE_FACES_DIR, else ../shared/faces beside the repository."""
    shared = Path(os.environ.get("EDGE_SHARED_DIR", ROOT.parent / "shared"))
    return Path(os.environ.get("EDGE_FACES_DIR", shared / "faces"))


@dataclass
class PhotoSet:
    """Photos (relative paths) with their source, and the labelled pairs among them."""

    root: Path
    photos: list[str]
    source: dict[str, str]
    pairs: list[tuple[str, str, int]] = field(default_factory=list)
    pair_source: list[str] = field(default_factory=list)

    def path(self, rel: str) -> Path:
        """Absolute path of one photo."""
        return self.root / rel

    def sources(self) -> list[str]:
        """Sources present, sorted."""
        return sorted(set(self.source.values()))

    def pairs_of(self, source: str) -> list[tuple[str, str, int]]:
        """Pairs drawn within one source."""
        return [p for p, s in zip(self.pairs, self.pair_source, strict=True) if s == source]


def load_photos(faces_dir: Path, per_source: int | None = None) -> PhotoSet:
    """Read manifest.csv and pairs.csv; keep ``per_source`` photos of each source (None: all).

    Raises FileNotFoundError when the folder has no manifest.csv.
    """
    manifest = faces_dir / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest.csv in {faces_dir} (set EDGE_FACES_DIR)")
    by_source: dict[str, list[str]] = defaultdict(list)
    source: dict[str, str] = {}
    with manifest.open(newline="") as fh:
        for row in csv.DictReader(fh):
            by_source[row["source"]].append(row["path"])
            source[row["path"]] = row["source"]
    photos: list[str] = []
    for src in sorted(by_source):
        rows = by_source[src]
        photos.extend(rows if per_source is None else _spread(rows, per_source))
    keep = set(photos)
    pairs, pair_source = [], []
    pairs_csv = faces_dir / "pairs.csv"
    if pairs_csv.is_file():
        with pairs_csv.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row["path_a"] in keep and row["path_b"] in keep:
                    pairs.append((row["path_a"], row["path_b"], int(row["same"])))
                    pair_source.append(row["source"])
    return PhotoSet(faces_dir, photos, {p: source[p] for p in photos}, pairs, pair_source)


def _spread(rows: list[str], n: int) -> list[str]:
    """Take ``n`` photos of a source so that several identities (and so genuine pairs) appear.

    Manifest rows are grouped by identity; taking two photos of each identity in turn keeps
    both genuine and impostor pairs in a tiny subset.
    """
    by_id: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_id[r.split("/", 1)[0]].append(r)
    out: list[str] = []
    for take in range(0, max(len(v) for v in by_id.values()), 2):
        for ident in by_id:
            for r in by_id[ident][take : take + 2]:
                if len(out) < n:
                    out.append(r)
        if len(out) >= n:
            break
    return out
