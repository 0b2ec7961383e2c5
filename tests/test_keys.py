"""Device identity, central key, TLS CSR and masking."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.errors import KeyFileError
from edge.keys import (
    DeviceIdentity,
    generate_central_key,
    load_central_private_key,
    load_central_public_key,
    load_device_public,
    make_tls_key_and_csr,
    verify_ed25519,
    write_card,
)
from edge.privacy import mask_id, mask_name


def test_identity_made_once_with_private_files_0600(tmp_path, make_identity):
    keys = tmp_path / "keys"
    a = DeviceIdentity.load_or_create(keys)
    files = sorted(p.name for p in keys.iterdir())
    assert files == ["bundle_x25519.pem", "device_ed25519.pem"]
    for p in keys.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    b = DeviceIdentity.load_or_create(keys)
    assert a.device_public_pem() == b.device_public_pem()
    assert a.bundle_public_bytes() == b.bundle_public_bytes()
    assert len(a.bundle_public_bytes()) == 32
    sig = b.sign(b"hello")
    assert verify_ed25519(a.device_public_pem(), sig, b"hello")
    assert not verify_ed25519(a.device_public_pem(), sig, b"hellO")
    other = make_identity()
    assert not verify_ed25519(other.device_public_pem(), sig, b"hello")


def test_public_pem_never_contains_private_material(tmp_path, make_identity):
    ident = make_identity(tmp_path)  # the public half of keys loaded from files
    pem = ident.device_public_pem()
    assert b"PUBLIC KEY" in pem and b"PRIVATE" not in pem
    card = ident.card("edge-test-0001")
    assert "PRIVATE" not in str(card)


def test_card_round_trip_and_bare_pem(tmp_path, identity):
    write_card(identity, "edge-test-0001", tmp_path / "card.json")
    pub = load_device_public(tmp_path / "card.json")
    assert pub.device_id == "edge-test-0001"
    assert pub.sign_public_pem == identity.device_public_pem()
    assert pub.bundle_public == identity.bundle_public_bytes()
    (tmp_path / "dev.pem").write_bytes(identity.device_public_pem())
    bare = load_device_public(tmp_path / "dev.pem")
    assert bare.device_id is None and bare.bundle_public is None
    (tmp_path / "junk.pem").write_text("nope")
    with pytest.raises(KeyFileError):
        load_device_public(tmp_path / "junk.pem")


def test_central_key_files_and_refuses_overwrite(tmp_path):
    path = tmp_path / "central.key"
    pub = generate_central_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "central.key.pub").read_bytes() == pub
    priv = load_central_private_key(path)
    sig = priv.sign(b"bundle")
    load_central_public_key(pub).verify(sig, b"bundle")
    with pytest.raises(KeyFileError):
        generate_central_key(path)


def test_central_public_key_must_be_ed25519(tmp_path, identity):
    make_tls_key_and_csr(tmp_path, "edge-x-0001")
    ec_pub = x509.load_pem_x509_csr((tmp_path / "tls.csr").read_bytes()).public_key()
    from cryptography.hazmat.primitives import serialization

    ec_pem = ec_pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_central_public_key(ec_pem)
    load_central_public_key(identity.device_public_pem())


def test_tls_csr_has_device_cn_and_reuses_key(tmp_path):
    pem1 = make_tls_key_and_csr(tmp_path, "edge-bdg-0007")
    csr = x509.load_pem_x509_csr(pem1)
    assert csr.is_signature_valid
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "edge-bdg-0007"
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    assert csr.public_key().curve.name == "secp256r1"
    assert stat.S_IMODE((tmp_path / "tls_key.pem").stat().st_mode) == 0o600
    csr2 = x509.load_pem_x509_csr(make_tls_key_and_csr(tmp_path, "edge-bdg-0007"))
    assert csr2.public_key().public_numbers() == csr.public_key().public_numbers()


@pytest.mark.parametrize(
    "raw, masked",
    [
        ("KPM-3171-0815-0042", "KPM-3171-****-0042"),
        ("KPM-0815-0042", "KPM-****-0042"),
        ("3171010101900042", "************0042"),
        ("", "-"),
        (None, "-"),
        ("AB", "****"),
    ],
)
def test_mask_id(raw, masked):
    assert mask_id(raw) == masked


def test_mask_name():
    assert mask_name("Siti Aminah Rahayu") == "SITI A*** R***"
    assert mask_name("  budi   santoso ") == "BUDI S***"
    assert mask_name("Sukarno") == "S***"
    assert mask_name("") == "-"
