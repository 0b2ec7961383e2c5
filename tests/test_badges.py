"""Staff badges, reason cards and the override policy: signed by central, checked offline."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest
from support import REF_KEY, T0

from edge.__main__ import main
from edge.enrolment.badges import (
    BADGE_PREFIX,
    OVERRIDABLE,
    REASONS,
    OverridePolicy,
    issue_badge,
    parse_policy,
    parse_reason,
    reason_text,
    render_badge_png,
    render_reason_cards,
    verify_badge,
)
from edge.enrolment.bundle import BundleSpec, Household, Member, build_bundle, verify_and_open
from edge.errors import BadgeError, BundleError
from edge.events import b64url, unb64url
from edge.keys import public_pem
from edge.vision.qr import QrReader

ISSUED = datetime.fromtimestamp(T0, UTC) - timedelta(days=10)
POLICY = OverridePolicy(
    roles=("officer", "supervisor"),
    max_per_staff_per_day=3,
    max_per_terminal_per_round=10,
    max_share=0.1,
)


def badge(central_key, staff="PTG-0001", role="officer", regency="3171", **kw):
    kw.setdefault("issued_at", ISSUED)
    return issue_badge(central_key, staff, role, regency, **kw)


def test_a_badge_verifies_offline_with_central_key(central_key, central_pem):
    text = badge(central_key, badge_id="badge-0001")
    assert text.startswith(BADGE_PREFIX + ".") and len(text) < 300  # a small, robust QR
    b = verify_badge(text, central_pem, T0)
    assert (b.staff_id, b.role, b.regency, b.badge_id) == (
        "PTG-0001",
        "officer",
        "3171",
        "badge-0001",
    )
    assert b.as_event() == {"staff_id": "PTG-0001", "role": "officer", "badge_id": "badge-0001"}
    assert verify_badge(text, central_key.public_key(), T0) == b


def test_a_forged_badge_is_refused(central_pem, rogue_key):
    with pytest.raises(BadgeError, match="forged"):
        verify_badge(badge(rogue_key), central_pem, T0)


def test_an_altered_badge_is_refused(central_key, central_pem):
    head, body, sig = badge(central_key).split(".")
    fields = json.loads(unb64url(body))
    fields["role"] = "supervisor"  # promote oneself
    altered = ".".join([head, b64url(json.dumps(fields).encode()), sig])
    with pytest.raises(BadgeError, match="forged or altered"):
        verify_badge(altered, central_pem, T0)


def test_a_badge_signature_is_not_a_bundle_or_command_signature(central_key, central_pem):
    # The same body signed without the badge domain (as a command or bundle would be) fails.
    head, body, _ = badge(central_key).split(".")
    plain = b64url(central_key.sign(unb64url(body)))
    with pytest.raises(BadgeError, match="forged"):
        verify_badge(f"{head}.{body}.{plain}", central_pem, T0)


def test_expired_and_not_yet_valid_badges_are_refused(central_key, central_pem):
    old = badge(central_key, valid_days=5)  # issued 10 days before T0
    with pytest.raises(BadgeError, match="expired"):
        verify_badge(old, central_pem, T0)
    future = badge(central_key, issued_at=ISSUED + timedelta(days=20))
    with pytest.raises(BadgeError, match="not valid yet"):
        verify_badge(future, central_pem, T0)


@pytest.mark.parametrize(
    "text", ["", "BSTAFF1", "BSTAFF1.a.b.c", "BSTAFF1.!!!.???", "BANSOS/1:2026-12:X:0", "x" * 700]
)
def test_malformed_badges_are_refused_not_crashed(central_pem, text):
    with pytest.raises(BadgeError):
        verify_badge(text, central_pem, T0)


def test_issue_refuses_bad_fields(central_key):
    with pytest.raises(BadgeError, match="staff id"):
        badge(central_key, staff="budi santoso")
    with pytest.raises(BadgeError, match="role"):
        badge(central_key, role="boss")
    with pytest.raises(BadgeError, match="regency"):
        badge(central_key, regency="31")
    with pytest.raises(BadgeError, match="valid"):
        badge(central_key, valid_days=0)


def test_policy_refuses_revoked_foreign_wrong_role_and_old_badges(central_key, central_pem):
    def why(policy=POLICY, regency="3171", **kw):
        return policy.refuses(verify_badge(badge(central_key, **kw), central_pem, T0), regency, T0)

    assert why() is None
    assert why(regency="3172") == "badge of another regency"
    assert why(role="auditor") == "role auditor may not override"
    revoked_id = OverridePolicy(**{**POLICY.__dict__, "revoked": frozenset({"bad-badge-1"})})
    assert why(revoked_id, badge_id="bad-badge-1") == "badge revoked"
    revoked_staff = OverridePolicy(**{**POLICY.__dict__, "revoked": frozenset({"PTG-0001"})})
    assert why(revoked_staff) == "badge revoked"
    young = OverridePolicy(**{**POLICY.__dict__, "max_badge_age_days": 7.0})
    assert why(young) == "badge older than the policy allows"


def test_reason_cards_are_a_fixed_list():
    for code in REASONS:
        assert parse_reason(reason_text(code)) == code
    with pytest.raises(BadgeError):
        parse_reason("BREASON1:friend_of_the_officer")
    with pytest.raises(BadgeError):
        reason_text("friend_of_the_officer")


def test_policy_round_trips_and_malformed_policies_are_errors():
    key = bytes(range(32))
    policy = OverridePolicy(**{**POLICY.__dict__, "evidence_key": key})
    assert parse_policy(policy.as_body()) == policy
    assert parse_policy(None) is None
    body = POLICY.as_body()
    for broken, match in [
        ({**body, "surprise": 1}, "unknown field"),
        ({**body, "roles": []}, "roles"),
        ({**body, "roles": ["boss"]}, "roles"),
        ({**body, "refusals": ["already_paid"]}, "refusals"),
        ({**body, "max_share": 1.5}, "max_share"),
        ({**body, "max_per_staff_per_day": -1}, "max_per_staff_per_day"),
        ({**body, "max_per_terminal_per_round": "10"}, "max_per_terminal_per_round"),
        ({**body, "evidence_key": base64.b64encode(b"short").decode()}, "evidence_key"),
        ({k: v for k, v in body.items() if k != "max_share"}, "max_share"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_policy(broken)
    # Only face refusals are overridable, whatever central writes.
    assert set(OVERRIDABLE) == {"no_match", "poor_quality", "no_face"}


def _bundle(central_key, identity, policy):
    now = datetime.fromtimestamp(T0, UTC)
    spec = BundleSpec(
        "edge-test-0001",
        "2026-12",
        "Pos",
        "3171",
        "m",
        "0" * 64,
        now - timedelta(1),
        now + timedelta(1),
        ref_key=REF_KEY,
    )
    hh = [Household("KPM-3171-0001-0001", "S***", "3171", 1, [Member("M1", "recipient")])]
    m = np.ones((1, 128), np.float32) / np.sqrt(128)
    return build_bundle(
        spec,
        hh,
        ["KPM-3171-0001-0001/M1"],
        m,
        central_key=central_key,
        device_bundle_public=identity.bundle_public_bytes(),
        override_policy=policy,
    )


def test_the_policy_travels_signed_in_the_bundle(central_key, central_pem, identity):
    opened = verify_and_open(
        _bundle(central_key, identity, POLICY), central_pem, identity, "m", "0" * 64, T0, None
    )
    assert opened.override_policy == POLICY
    none = verify_and_open(
        _bundle(central_key, identity, None), central_pem, identity, "m", "0" * 64, T0, None
    )
    assert none.override_policy is None


def test_a_signed_but_malformed_policy_refuses_the_bundle(central_key, central_pem, identity):
    bad = OverridePolicy(**{**POLICY.__dict__, "max_share": 7.0})  # central's own mistake
    with pytest.raises(BundleError, match="max_share"):
        verify_and_open(
            _bundle(central_key, identity, bad), central_pem, identity, "m", "0" * 64, T0, None
        )


def _read_qr(path) -> str | None:
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return QrReader().read(rgb)


def test_printed_cards_read_back_through_the_camera_reader(tmp_path, central_key, central_pem):
    paths = render_reason_cards(tmp_path / "cards")
    assert [p.name for p in paths] == [f"reason-{c}.png" for c in REASONS] + ["reason-cards.pdf"]
    assert paths[-1].read_bytes().startswith(b"%PDF")
    assert parse_reason(_read_qr(paths[0]) or "") == next(iter(REASONS))
    text = badge(central_key)
    png = render_badge_png(text, tmp_path / "badge.png", "PTG-0001", "officer")
    assert verify_badge(_read_qr(png) or "", central_pem, T0).staff_id == "PTG-0001"


def test_cli_issues_verifies_and_prints_cards(tmp_path, central_key, capsys):
    from edge.keys import _pem_private

    key = tmp_path / "central.pem"
    key.write_bytes(_pem_private(central_key))
    pub = tmp_path / "central.pub"
    pub.write_bytes(public_pem(central_key.public_key()))
    out = tmp_path / "b.png"
    args = ["badge", "issue", "--central-key", str(key), "--staff-id", "PTG-0007"]
    assert main([*args, "--role", "supervisor", "--regency", "3171", "--png", str(out)]) == 0
    text = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.is_file() and text.startswith(BADGE_PREFIX)
    assert main(["badge", "verify", "--central-pub", str(pub), text]) == 0
    assert "PTG-0007" in capsys.readouterr().out
    assert main(["badge", "verify", "--central-pub", str(pub), "--image", str(out)]) == 0
    assert main(["badge", "verify", "--central-pub", str(pub), text[:-4] + "AAAA"]) == 1
    assert main(["badge", "reason-cards", "--out", str(tmp_path / "cards")]) == 0
    assert (tmp_path / "cards" / "reason-cards.pdf").is_file()


def test_bundle_build_reads_the_policy_file(tmp_path):
    from edge.cli.payout import _override_policy

    path = tmp_path / "policy.json"
    path.write_text(json.dumps(POLICY.as_body()))
    assert _override_policy(path) == POLICY
    assert _override_policy(None) is None
    path.write_text(json.dumps({**POLICY.as_body(), "roles": ["boss"]}))
    with pytest.raises(BundleError, match="roles"):
        _override_policy(path)
    with pytest.raises(BundleError):
        _override_policy(tmp_path / "missing.json")
