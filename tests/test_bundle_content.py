"""Issue 12, point 6: a bundle body signed by central is still checked before it is used.

Every case signs a malformed body with central's real key, so the signature verifies and only
the content rules stand between it and the terminal; each must end in a BundleError (never a
KeyError, TypeError or ValueError), and the store must keep its last good bundle.
"""

from __future__ import annotations

import copy

import pytest
from forge import MODEL, NOW, body_of, genuine_bundle, sign_body

from edge.enrolment.bundle import verify_and_open
from edge.enrolment.store import BundleStore
from edge.errors import BundleError


def open_(blob, central_pem, identity):
    return verify_and_open(blob, central_pem, identity, *MODEL, NOW.timestamp(), None)


def households(b):
    return b["households"]


# Each case: what to do to a genuine body, and a word the refusal must contain.
CASES = {
    "negative amount": (lambda b: households(b)[0].update(amount=-300_000), "amount"),
    "huge amount": (lambda b: households(b)[0].update(amount=10**15), "amount"),
    "boolean amount": (lambda b: households(b)[0].update(amount=True), "amount"),
    "zero amount": (lambda b: households(b)[0].update(amount=0), "amount"),
    "fractional amount": (lambda b: households(b)[0].update(amount=1.5), "amount"),
    "amount as text": (lambda b: households(b)[0].update(amount="300000"), "amount"),
    "duplicate household": (
        lambda b: households(b).append(copy.deepcopy(households(b)[0])),
        "duplicate",
    ),
    "duplicate member": (
        lambda b: households(b)[0]["members"].append({"member_id": "M1", "role": "recipient"}),
        "duplicate",
    ),
    "household id outside the claim alphabet": (
        lambda b: households(b)[0].update(household_id="kpm 1; drop"),
        "claim alphabet",
    ),
    "household id with a trailing newline": (
        lambda b: households(b)[1].update(household_id="KPM-3171-0001-0002\n"),
        "claim alphabet",
    ),
    "member id with a slash": (
        lambda b: households(b)[0]["members"][0].update(member_id="M/1"),
        "member_id",
    ),
    "unknown role": (lambda b: households(b)[0]["members"][0].update(role="boss"), "role"),
    "label naming no household": (
        lambda b: b["templates"]["labels"].__setitem__(2, "KPM-9999-0000-0000/M1"),
        "labels[2]",
    ),
    "label naming no member": (
        lambda b: b["templates"]["labels"].__setitem__(0, "KPM-3171-0001-0001/M9"),
        "labels[0]",
    ),
    "label that is no string": (
        lambda b: b["templates"]["labels"].__setitem__(0, 7),
        "labels[0]",
    ),
    "missing households": (lambda b: b.pop("households"), "households"),
    "households not a list": (lambda b: b.update(households={"a": 1}), "households"),
    "household not an object": (lambda b: households(b).__setitem__(0, "x"), "households[0]"),
    "extra household key": (lambda b: households(b)[0].update(nik="3171..."), "households[0]"),
    "member list not a list": (lambda b: households(b)[0].update(members=None), "members"),
    "masked name with control characters": (
        lambda b: households(b)[0].update(masked_name="S\x1b[2J"),
        "masked_name",
    ),
    "regency with a newline": (lambda b: b.update(regency="3171\n"), "regency"),
    "round id with a newline": (lambda b: b.update(round_id="2026-12\n"), "round_id"),
    "bundle id not text": (lambda b: b.update(bundle_id=["x"]), "bundle_id"),
    "model not an object": (lambda b: b.update(model="m"), "model"),
    "dim not 128": (lambda b: b["templates"].update(dim=64), "dim"),
    "dim true": (lambda b: b["templates"].update(dim=True), "dim"),
    "valid_from not a time": (lambda b: b.update(valid_from=12), "valid_from"),
    "valid_until not after valid_from": (
        lambda b: b.update(valid_until=b["valid_from"]),
        "valid_until",
    ),
    "limits not an object": (lambda b: b.update(limits=[0.5, 0.9]), "limits"),
    "limit on a key central may not bound": (
        lambda b: b.update(limits={"liveness.enabled": {"min": 0, "max": 1}}),
        "limits",
    ),
    "limit reaching zero": (
        lambda b: b.update(limits={"liveness.threshold": {"min": 0, "max": 0.9}}),
        "limits.liveness.threshold",
    ),
    "limit upside down": (
        lambda b: b.update(limits={"vision.match_threshold": {"min": 0.9, "max": 0.6}}),
        "limits.vision.match_threshold",
    ),
    "template block not an object": (lambda b: b.update(templates=None), "templates"),
    "wrap block missing": (lambda b: b["templates"].pop("wrap"), "template block"),
    "nonce with junk characters": (
        lambda b: b["templates"].update(nonce="*" + b["templates"]["nonce"][1:]),
        "template block",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_central_signed_malformed_body_is_a_bundle_error(
    case, central_key, central_pem, identity
):
    mutate, word = CASES[case]
    body = body_of(genuine_bundle(central_key, identity))
    mutate(body)
    with pytest.raises(BundleError) as caught:
        open_(sign_body(body, central_key), central_pem, identity)
    assert word in str(caught.value)
    # Refusals name the field, never a household id (personal data) from the body.
    assert "KPM-3171-0001-0001" not in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [b"[]", b"null", b"{", b'"x"', b"\xff\xfe", b'{"format": "bansos.bundle/1"}', b"[" * 5000],
    ids=["list", "null", "truncated", "string", "not-utf8", "empty-object", "deep"],
)
def test_a_central_signed_body_that_is_no_bundle_is_a_bundle_error(
    body, central_key, central_pem, identity
):
    with pytest.raises(BundleError):
        open_(sign_body(body, central_key), central_pem, identity)


def test_the_genuine_body_still_opens_and_carries_its_signed_limits(
    central_key, central_pem, identity
):
    limits = {"vision.match_threshold": (0.55, 0.8), "liveness.threshold": (0.5, 0.9)}
    bundle = open_(genuine_bundle(central_key, identity, limits), central_pem, identity)
    assert bundle.limits == limits
    assert [h.amount for h in bundle.households.values()] == [300_000, 300_000]
    # Re-signing the unchanged body changes nothing: the helper itself is sound.
    body = body_of(genuine_bundle(central_key, identity))
    assert open_(sign_body(body, central_key), central_pem, identity).limits == {}


def test_a_bad_template_label_no_longer_reaches_identify_mode(
    tmp_path, central_key, central_pem, identity
):
    """Before: a label naming no household was installed and crashed 1:N matching later."""
    store = BundleStore(tmp_path, central_pem, identity, *MODEL, clock=lambda: NOW.timestamp())
    good = store.install(genuine_bundle(central_key, identity))
    body = body_of(genuine_bundle(central_key, identity))
    body["templates"]["labels"][0] = "KPM-0000-0000-0000/M1"
    with pytest.raises(BundleError, match="names no household member"):
        store.install(sign_body(body, central_key))
    assert store.current().bundle_id == good.bundle_id
    labels, _ = store.current().templates()
    assert all(label.split("/")[0] in store.current().households for label in labels)


def test_the_builder_refuses_what_the_terminal_would_refuse(central_key, identity):
    with pytest.raises(BundleError, match="limits"):
        genuine_bundle(central_key, identity, limits={"vision.match_threshold": (0.0, 0.9)})
