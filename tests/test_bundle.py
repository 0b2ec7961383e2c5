"""Enrolment bundle: signed by central, encrypted for one device, refused when wrong."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from support import REF_KEY, FakeClock

from edge.enrolment.bundle import BundleSpec, Household, Member, build_bundle, read_metadata
from edge.enrolment.store import BundleStore
from edge.errors import BundleError

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
MODEL = ("mobilefacenet-int8-0123456789ab", "ab" * 32)


@pytest.fixture()
def central(central_key, central_pem):
    """Central's signing key and the public PEM the terminal trusts."""
    return central_key, central_pem


def households():
    return [
        Household(
            "KPM-3171-0001-0001",
            "SITI A***",
            "3171",
            300_000,
            [Member("M1", "recipient"), Member("M2", "representative")],
        ),
        Household("KPM-3171-0001-0002", "BUDI S***", "3171", 300_000, [Member("M1", "recipient")]),
    ]


def templates(seed=0):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(4, 128)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    labels = [
        "KPM-3171-0001-0001/M1",
        "KPM-3171-0001-0001/M1",
        "KPM-3171-0001-0001/M2",
        "KPM-3171-0001-0002/M1",
    ]
    return labels, m


def make(central, identity, *, model=MODEL, valid_days=30, issued=NOW - timedelta(hours=1), **kw):
    labels, m = templates()
    spec = dict(
        device_id="edge-test-0001",
        round_id="2026-12",
        point_name="Kantor Pos Menteng",
        regency="3171",
        model_id=model[0],
        model_sha256=model[1],
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=valid_days),
        issued_at=issued,
        ref_key=REF_KEY,
    )
    content = dict(households=households(), labels=labels, matrix=m)
    for key, value in kw.items():
        (content if key in content else spec)[key] = value
    return build_bundle(
        BundleSpec(**spec),
        **content,
        central_key=central[0],
        device_bundle_public=identity.bundle_public_bytes(),
    )


def store(tmp_path, central, identity, clock=None):
    return BundleStore(
        tmp_path, central[1], identity, *MODEL, clock=clock or FakeClock(NOW.timestamp())
    )


def test_install_verify_decrypt(tmp_path, central, identity):
    s = store(tmp_path, central, identity)
    assert s.current() is None
    b = s.install(make(central, identity))
    assert b.round_id == "2026-12" and b.point_name == "Kantor Pos Menteng"
    assert b.model_id == MODEL[0] and b.device_id == "edge-test-0001"
    assert set(b.households) == {"KPM-3171-0001-0001", "KPM-3171-0001-0002"}
    hh = b.households["KPM-3171-0001-0001"]
    assert hh.amount == 300_000 and hh.masked_name == "SITI A***"
    assert [m.role for m in hh.members] == ["recipient", "representative"]
    labels, m = b.templates()
    want_labels, want = templates()
    assert labels == want_labels
    assert m.dtype == np.float32 and np.array_equal(m, want)
    assert s.current() is b
    # A new store (a restart) finds the installed bundle again.
    again = store(tmp_path, central, identity).current()
    assert again is not None and again.bundle_id == b.bundle_id


def test_templates_not_in_clear_on_disk(tmp_path, central, identity):
    s = store(tmp_path, central, identity)
    s.install(make(central, identity))
    raw = (tmp_path / "bundles" / "current.bundle").read_bytes()
    body = base64.b64decode(json.loads(raw)["body"])
    _, m = templates()
    assert m.tobytes()[:64] not in body
    assert m.tobytes()[:64] not in raw


def _refused(tmp_path, central, identity, blob, match, caplog):
    s = store(tmp_path, central, identity)
    good = s.install(make(central, identity))
    with caplog.at_level(logging.WARNING, logger="edge.enrolment.bundle"):
        with pytest.raises(BundleError, match=match):
            s.install(blob)
    assert any("bundle refused" in r.getMessage() for r in caplog.records)
    assert s.current() is good  # the last good bundle stays
    reopened = store(tmp_path, central, identity).current()
    assert reopened is not None and reopened.bundle_id == good.bundle_id


def test_tampered_body_refused(tmp_path, central, identity, caplog):
    env = json.loads(make(central, identity))
    body = json.loads(base64.b64decode(env["body"]))
    body["households"][0]["amount"] = 3_000_000
    env["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    _refused(tmp_path, central, identity, json.dumps(env).encode(), "signature", caplog)


def test_unsigned_refused(tmp_path, central, identity, caplog):
    env = json.loads(make(central, identity))
    env["sig"] = ""
    _refused(tmp_path, central, identity, json.dumps(env).encode(), "unsigned", caplog)


def test_signed_by_someone_else_refused(tmp_path, central, identity, rogue_key, caplog):
    mallory = (rogue_key, None)
    _refused(tmp_path, central, identity, make(mallory, identity), "signature", caplog)


def test_expired_refused(tmp_path, central, identity, caplog):
    blob = make(
        central, identity, valid_from=NOW - timedelta(days=40), valid_until=NOW - timedelta(days=1)
    )
    _refused(tmp_path, central, identity, blob, "expired", caplog)


def test_not_yet_valid_refused(tmp_path, central, identity, caplog):
    blob = make(
        central, identity, valid_from=NOW + timedelta(days=2), valid_until=NOW + timedelta(days=9)
    )
    _refused(tmp_path, central, identity, blob, "not valid before", caplog)


def test_other_model_refused(tmp_path, central, identity, caplog):
    blob = make(central, identity, model=("mobilefacenet-dynamic-ffffffffffff", "cd" * 32))
    _refused(tmp_path, central, identity, blob, "for model mobilefacenet-dynamic", caplog)


def test_same_model_id_other_sha_refused(tmp_path, central, identity, caplog):
    blob = make(central, identity, model=(MODEL[0], "ee" * 32))
    _refused(tmp_path, central, identity, blob, "for model", caplog)


def test_foreign_device_refused(tmp_path, central, identity, make_identity, caplog):
    other = make_identity()
    _refused(tmp_path, central, identity, make(central, other), "another device", caplog)


def test_garbage_refused(tmp_path, central, identity, caplog):
    _refused(tmp_path, central, identity, b"\x00\x01 not json", "not a bundle", caplog)


def test_older_bundle_for_same_round_refused(tmp_path, central, identity, caplog):
    blob = make(central, identity, issued=NOW - timedelta(days=3))
    _refused(tmp_path, central, identity, blob, "older than the installed", caplog)


def test_newer_bundle_replaces(tmp_path, central, identity):
    s = store(tmp_path, central, identity)
    a = s.install(make(central, identity))
    b = s.install(
        make(
            central,
            identity,
            issued=NOW - timedelta(minutes=5),
            households=households()[:1],
            labels=templates()[0][:3],
            matrix=templates()[1][:3],
        )
    )
    assert b.bundle_id != a.bundle_id and s.current() is b
    assert list(s.current().households) == ["KPM-3171-0001-0001"]


def test_current_none_after_expiry(tmp_path, central, identity):
    clock = FakeClock(NOW.timestamp())
    s = store(tmp_path, central, identity, clock)
    s.install(make(central, identity, valid_days=2))
    clock.advance(3 * 86400)
    assert s.current() is None
    assert store(tmp_path, central, identity, clock).current() is None


def test_bundle_for_another_device_id_refused_when_store_knows_its_id(tmp_path, central, identity):
    s = BundleStore(
        tmp_path,
        central[1],
        identity,
        *MODEL,
        device_id="edge-test-0002",
        clock=FakeClock(NOW.timestamp()),
    )
    with pytest.raises(BundleError, match="another device"):
        s.install(make(central, identity))


def test_build_refuses_bad_templates(central, identity):
    labels, m = templates()
    with pytest.raises(BundleError, match="name no household"):
        make(central, identity, labels=labels[:3] + ["KPM-9999-0000-0000/M1"])
    with pytest.raises(BundleError):
        make(central, identity, matrix=m[:, :64])
    bad = m.copy()
    bad[0, 0] = np.nan
    with pytest.raises(BundleError, match="NaN"):
        make(central, identity, matrix=bad)


def test_metadata_readable_without_keys(central, identity):
    meta = read_metadata(make(central, identity))
    assert meta["signed"] and meta["template_count"] == 4 and meta["round_id"] == "2026-12"
    assert "templates" not in meta
