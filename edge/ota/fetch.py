"""Getting a release artefact onto the terminal: HTTPS from central, or chunks over MQTT.

Both write the same partial file in the state dir, so a download cut by a lost link or a
restart resumes where it stopped: HTTPS with a ``Range`` request from the partial file's
length, MQTT by remembering which chunks arrived. Nothing here trusts the bytes; the caller
checks the sha256 named by the signed command and then the release signature.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from edge.errors import ReleaseError
from edge.fsutil import write_atomic

log = logging.getLogger(__name__)

BLOCK = 64 * 1024

Progress = Callable[[int], None]


def pinned_context(ca_file: Path) -> ssl.SSLContext:
    """A TLS client context trusting ``ca_file`` only (not the system's CAs)."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def https_fetch(
    url: str,
    dest: Path,
    size: int,
    ca_file: Path | None,
    *,
    progress: Progress | None = None,
    timeout_s: float = 30.0,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Download ``url`` into ``dest`` until it holds ``size`` bytes, resuming what is there.

    Only ``https://`` with the pinned CA: a release must not come from anyone who can answer
    on the network path. A server that ignores the Range header (200 instead of 206) is
    read from the start again. Raises ReleaseError; the partial file stays for the next try.
    """
    if not url.startswith("https://"):
        raise ReleaseError("a release is fetched over https only")
    if ca_file is None:
        raise ReleaseError("ota.ca_file is not set: no CA to check the release server with")
    have = dest.stat().st_size if dest.exists() else 0
    if have > size:
        dest.unlink()
        have = 0
    if have == size:
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(
            request, context=pinned_context(ca_file), timeout=timeout_s
        ) as resp:
            if have and resp.status != 206:
                log.info("release server ignored the range request, starting over")
                have = 0
            _copy(resp, dest, have, size, progress, stop)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        # URLError, SSLError and timeouts are OSErrors; a cut body is an IncompleteRead.
        raise ReleaseError(f"release download failed: {exc}") from exc
    got = dest.stat().st_size
    if got != size:
        raise ReleaseError(f"release download stopped at {got} of {size} bytes")


def _copy(resp, dest: Path, have: int, size: int, progress: Progress | None, stop) -> None:
    with open(dest, "r+b" if have else "wb") as out:
        out.seek(have)
        out.truncate()
        while have < size and not stop():
            block = resp.read(min(BLOCK, size - have))
            if not block:
                break
            out.write(block)
            have += len(block)
            if progress is not None:
                progress(have)
        out.flush()
        os.fsync(out.fileno())


class ChunkFile:
    """A release arriving in numbered chunks of ``chunk_bytes`` (the last may be shorter).

    Chunks are written at their offset in ``dest``; which ones arrived is kept beside it, so a
    restart keeps them. Chunks may come in any order and more than once.
    """

    def __init__(self, dest: Path, size: int, chunks: int, chunk_bytes: int) -> None:
        if not (chunks - 1) * chunk_bytes < max(size, 1) <= chunks * chunk_bytes:
            raise ReleaseError("chunk count and size do not match the release size")
        self.dest = dest
        self.size = size
        self.chunks = chunks
        self.chunk_bytes = chunk_bytes
        self._index = dest.with_name(dest.name + ".chunks")
        self.have: set[int] = set()
        try:
            saved = json.loads(self._index.read_text())
            if (saved["size"], saved["chunks"], saved["chunk_bytes"]) == (
                size,
                chunks,
                chunk_bytes,
            ):
                self.have = set(saved["have"])
        except (OSError, ValueError, KeyError):
            pass
        if not self.have and dest.exists():
            dest.unlink()

    @property
    def received(self) -> int:
        """Bytes received so far."""
        last = self.size - (self.chunks - 1) * self.chunk_bytes
        return sum(last if i == self.chunks - 1 else self.chunk_bytes for i in self.have)

    @property
    def complete(self) -> bool:
        return len(self.have) == self.chunks

    def write(self, index: int, data: bytes) -> None:
        """Store chunk ``index``; refuse one of the wrong length."""
        if not 0 <= index < self.chunks:
            raise ReleaseError("chunk index out of range")
        want = (
            self.size - index * self.chunk_bytes if index == self.chunks - 1 else self.chunk_bytes
        )
        if len(data) != want:
            raise ReleaseError(f"chunk {index} has {len(data)} bytes, expected {want}")
        mode = "r+b" if self.dest.exists() else "wb"
        with open(self.dest, mode) as out:
            out.seek(index * self.chunk_bytes)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        self.have.add(index)
        state = {
            "size": self.size,
            "chunks": self.chunks,
            "chunk_bytes": self.chunk_bytes,
            "have": sorted(self.have),
        }
        write_atomic(self._index, json.dumps(state).encode())

    def discard(self) -> None:
        """Forget the chunk index (after the whole file was checked)."""
        self._index.unlink(missing_ok=True)
