"""Helpers for the OTA tests: copies of this repository to build releases from, and a small
HTTPS server (test CA) that honours Range requests and can drop a download half way."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import shutil
import ssl
import threading
from pathlib import Path

from support import ROOT

SOURCE_PARTS = ("pyproject.toml", "README.md", "edge", "systemd")


def copy_checkout(dst: Path, version: str | None = None, patches: dict | None = None) -> Path:
    """This repository's buildable parts in ``dst``, with ``version`` and text ``patches``
    (``{relative path: (old, new)}``; ``old`` must be there, so a patch cannot silently miss)."""
    dst.mkdir(parents=True, exist_ok=True)
    for part in SOURCE_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dst / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(src, dst / part)
    edits = dict(patches or {})
    if version is not None:
        init = (dst / "edge" / "__init__.py").read_text()
        (dst / "edge" / "__init__.py").write_text(
            re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init)
        )
        py = (dst / "pyproject.toml").read_text()
        (dst / "pyproject.toml").write_text(
            re.sub(r'^version = "[^"]+"', f'version = "{version}"', py, count=1, flags=re.M)
        )
    for rel, (old, new) in edits.items():
        text = (dst / rel).read_text()
        assert old in text, f"patch of {rel} misses: {old!r}"
        (dst / rel).write_text(text.replace(old, new))
    return dst


def tiny_models(dst: Path) -> Path:
    """A models folder with a manifest and one small file (release tests need no inference)."""
    dst.mkdir(parents=True, exist_ok=True)
    data = b"not a real model" * 64
    (dst / "detector.tflite").write_bytes(data)
    entry = {"file": "detector.tflite", "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"version": 1, "models": {"detector": {**entry, "bytes": len(data)}}}
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def fake_wheelhouse(checkout: Path, out: Path, *, platform=None, deps=False) -> dict:
    """A stand-in wheelhouse: one file, no pip (for tests that never install the code)."""
    out.mkdir(parents=True, exist_ok=True)
    version = re.search(r'__version__ = "([^"]+)"', (checkout / "edge/__init__.py").read_text())
    assert version
    (out / f"bansos_edge-{version[1]}-py3-none-any.whl").write_bytes(b"PK fake wheel " * 100)
    return {"platform": "any", "deps": False}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        srv = self.server
        data: bytes = srv.blob  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        srv.ranges.append(rng)  # type: ignore[attr-defined]
        start = 0
        if rng and srv.honour_range:  # type: ignore[attr-defined]
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = srv.cut_after  # type: ignore[attr-defined]
        if cut is not None:
            srv.cut_after = None  # type: ignore[attr-defined]
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class HttpsServer:
    """Serves ``blob`` at any path over TLS with the given certificate, on a free port."""

    def __init__(self, cert: Path, key: Path, blob: bytes) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.blob = blob  # type: ignore[attr-defined]
        self.httpd.ranges = []  # type: ignore[attr-defined]
        self.httpd.cut_after = None  # type: ignore[attr-defined]
        self.httpd.honour_range = True  # type: ignore[attr-defined]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/release.tar"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def ranges(self) -> list:
        return self.httpd.ranges  # type: ignore[attr-defined]

    def cut_next_after(self, n: int) -> None:
        self.httpd.cut_after = n  # type: ignore[attr-defined]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
