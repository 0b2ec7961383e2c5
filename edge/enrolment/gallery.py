"""The pilot's local gallery (`edge enroll --id`): face templates encrypted at rest.

Face templates are biometric data: on disk they are sealed with AES-256-GCM under a key file
(``state_dir/keys/template.key``, mode 0600, made on first use). The file records the model that
made the templates, since vectors from another model are meaningless to compare against.
Production galleries come in signed enrolment bundles; this store is for pilots and tests.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.errors import GalleryError
from edge.fsutil import write_atomic
from edge.vision.matcher import Gallery

log = logging.getLogger(__name__)

MAGIC = b"EDGEGAL1"
GALLERY_FILE = "gallery.enc"
KEY_FILE = Path("keys") / "template.key"


class GalleryStore:
    """Encrypted file of labelled templates under ``state_dir``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / GALLERY_FILE
        self.key_path = self.state_dir / KEY_FILE

    def _key(self) -> bytes:
        if self.key_path.exists():
            key = self.key_path.read_bytes()
            if len(key) != 32:
                raise GalleryError(f"{self.key_path}: not a 256-bit key")
            return key
        key = AESGCM.generate_key(bit_length=256)
        self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.key_path, key)
        log.info("created template key %s", self.key_path)
        return key

    def _read(self) -> dict:
        if not self.path.exists():
            return {"version": 1, "model_id": None, "entries": []}
        blob = self.path.read_bytes()
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 16:
            raise GalleryError(f"{self.path}: not a gallery file")
        nonce = blob[len(MAGIC) : len(MAGIC) + 12]
        try:
            plain = AESGCM(self._key()).decrypt(nonce, blob[len(MAGIC) + 12 :], MAGIC)
        except InvalidTag as exc:
            raise GalleryError(f"{self.path}: cannot decrypt (wrong key or tampered)") from exc
        return json.loads(plain)

    def _write(self, doc: dict) -> None:
        nonce = os.urandom(12)
        sealed = AESGCM(self._key()).encrypt(nonce, json.dumps(doc).encode(), MAGIC)
        write_atomic(self.path, MAGIC + nonce + sealed)

    def load(self) -> tuple[list[str], np.ndarray, str | None]:
        """(row labels, float32 N x dim matrix, model id that made them)."""
        doc = self._read()
        labels = [e["label"] for e in doc["entries"]]
        rows = [np.frombuffer(base64.b64decode(e["vector"]), "<f4") for e in doc["entries"]]
        matrix = np.vstack(rows).astype(np.float32) if rows else np.zeros((0, 128), np.float32)
        return labels, matrix, doc.get("model_id")

    def gallery(self, model_id: str | None = None) -> Gallery:
        """The stored templates as a Gallery; refuses templates made by another model."""
        labels, matrix, stored_model = self.load()
        if model_id and stored_model and stored_model != model_id:
            raise GalleryError(
                f"{self.path}: templates were made by {stored_model}, not {model_id}: enrol again"
            )
        return Gallery.from_matrix(labels, matrix)

    def add(self, label: str, vectors: np.ndarray, model_id: str) -> int:
        """Append templates under ``label``; returns how many the label now has."""
        doc = self._read()
        if doc["entries"] and doc.get("model_id") not in (None, model_id):
            raise GalleryError(
                f"{self.path}: holds templates of {doc['model_id']}; remove it to enrol "
                f"with {model_id}"
            )
        doc["model_id"] = model_id
        for v in np.asarray(vectors, np.float32).reshape(len(vectors), -1):
            doc["entries"].append(
                {"label": label, "vector": base64.b64encode(v.astype("<f4").tobytes()).decode()}
            )
        self._write(doc)
        return sum(1 for e in doc["entries"] if e["label"] == label)

    def remove(self, label: str) -> int:
        """Delete every template of ``label``; returns how many were removed."""
        doc = self._read()
        before = len(doc["entries"])
        doc["entries"] = [e for e in doc["entries"] if e["label"] != label]
        if len(doc["entries"]) != before:
            self._write(doc)
        return before - len(doc["entries"])
