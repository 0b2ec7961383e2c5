"""The face templates of a bundle, sealed to one device.

A random AES-256-GCM content key encrypts the float32 template matrix and the round's
household reference key; the content key is wrapped with a key derived (HKDF-SHA256) from
X25519 between a one-off central key and the device's bundle key. Central seals
(:func:`encrypt_templates`, from ``edge.enrolment.bundle.build_bundle``); the terminal opens
(:func:`decrypt_templates`), in memory only, after the bundle's signature and body checks.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.enrolment.bundle_body import DIM
from edge.errors import BundleError
from edge.events import b64, unb64
from edge.keys import DeviceIdentity

WRAP_ALG = "X25519-HKDF-SHA256-A256GCM"
REF_KEY_BYTES = 32
_WRAP_INFO = b"bansos.bundle/1 content-key wrap"
_REF_AAD = b"|ref_key"  # the key and the templates share a content key, never a nonce or aad


def _wrap_key(epk_raw: bytes, device_raw: bytes, shared: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=epk_raw + device_raw, info=_WRAP_INFO
    ).derive(shared)


def encrypt_templates(
    labels: list[str],
    matrix: np.ndarray,
    bundle_id: str,
    device_bundle_public: bytes,
    ref_key: bytes,
) -> dict:
    """The ``templates`` block: the matrix and the ref key under a fresh content key wrapped
    for one device."""
    aad = bundle_id.encode()
    content_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    ciphertext = AESGCM(content_key).encrypt(nonce, matrix.tobytes(), aad)
    ref_nonce = os.urandom(12)
    ref_ciphertext = AESGCM(content_key).encrypt(ref_nonce, ref_key, aad + _REF_AAD)
    eph = x25519.X25519PrivateKey.generate()
    epk_raw = eph.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = eph.exchange(x25519.X25519PublicKey.from_public_bytes(device_bundle_public))
    kek = _wrap_key(epk_raw, device_bundle_public, shared)
    wrap_nonce = os.urandom(12)
    return {
        "labels": list(labels),
        "dim": DIM,
        "dtype": "float32-le",
        "wrap": {
            "alg": WRAP_ALG,
            "epk": b64(epk_raw),
            "nonce": b64(wrap_nonce),
            "key": b64(AESGCM(kek).encrypt(wrap_nonce, content_key, aad)),
        },
        "nonce": b64(nonce),
        "ciphertext": b64(ciphertext),
        "ref_key": {"nonce": b64(ref_nonce), "ciphertext": b64(ref_ciphertext)},
    }


def decrypt_templates(body: dict, identity: DeviceIdentity) -> tuple[list[str], np.ndarray, bytes]:
    """Labels, the Nx128 float32 matrix and the round's ref key of a checked body, decrypted
    in memory with this device's bundle key; BundleError when they cannot be."""
    try:
        tpl = body["templates"]
        wrap = tpl["wrap"]
        if wrap["alg"] != WRAP_ALG or tpl["dim"] != DIM:
            raise BundleError(f"unsupported template encryption {wrap['alg']!r}")
        aad = body["bundle_id"].encode()
        epk = unb64(wrap["epk"])
        shared = identity.bundle_exchange(epk)
        kek = _wrap_key(epk, identity.bundle_public_bytes(), shared)
        content_key = AESGCM(kek).decrypt(unb64(wrap["nonce"]), unb64(wrap["key"]), aad)
        plain = AESGCM(content_key).decrypt(unb64(tpl["nonce"]), unb64(tpl["ciphertext"]), aad)
        labels = [str(x) for x in tpl["labels"]]
        ref = tpl.get("ref_key")
        if not isinstance(ref, dict):
            # Events would carry no household reference: claims sync and central could not
            # match this terminal's payouts.
            raise BundleError("bundle has no household reference key: rebuild it")
        ref_key = AESGCM(content_key).decrypt(
            unb64(ref["nonce"]), unb64(ref["ciphertext"]), aad + _REF_AAD
        )
    except InvalidTag as exc:
        raise BundleError("templates do not decrypt with this device's key") from exc
    except BundleError:
        raise
    except (ValueError, KeyError, TypeError) as exc:  # binascii.Error is a ValueError
        raise BundleError("template block is malformed") from exc
    matrix = np.frombuffer(plain, dtype="<f4").astype(np.float32)
    if matrix.size != len(labels) * DIM:
        raise BundleError("template count does not match its labels")
    if len(ref_key) != REF_KEY_BYTES:
        raise BundleError(f"household reference key is not {REF_KEY_BYTES} bytes")
    return labels, matrix.reshape(len(labels), DIM), ref_key
