"""The override in the whole daemon, as `make run` shows it: real models, a signed bundle with an
override policy, staff badges and a reason card shown to the scripted camera, mock GPIO pins
and a printer writing real ESC/POS bytes to a file."""

from __future__ import annotations

import pytest

from edge import demo
from edge.events import verify_receipt_payload
from edge.ledger.audit import audit_ledger
from tests.escpos_decode import decode

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def override_run(tmp_path_factory, engine, models_dir):
    root = tmp_path_factory.mktemp("override")
    state, _ = demo.build_pilot(root, engine, with_shared=False)
    script = demo.FrameScript(root / "frames")
    script.pause(1)
    demo.override_script(script, demo.staff_badges(root))
    cfg = demo.demo_config(state, root / "frames", liveness=False, models_dir=str(models_dir))
    app = demo.App(cfg)
    decisions: list = []
    app.on_decision(decisions.append)
    app.run()
    return app, decisions, state


def test_the_daemon_pays_a_supervised_override(override_run, make_identity):
    app, decisions, state = override_run
    assert [str(d.outcome) for d in decisions] == ["no_face", "accepted_override"]
    refusal, paid = (d.event for d in decisions)
    block = paid["override"]
    assert [s["staff_id"] for s in block["staff"]] == ["PTG-0101", "PTG-0202"]
    assert block["overrides"] == refusal["event_id"] and block["reason"] == "elderly"
    # The LED walked staff through the steps, then showed the payout.
    shown = app.signals.history
    assert shown.index("override_second") < shown.index("override_reason") < len(shown) - 1
    assert shown[shown.index("override_reason") + 1] == "accepted"
    printed = decode((state / "receipts.bin").read_bytes())
    assert "PENGECUALIAN DIAWASI" in printed.texts and "Alasan  : LANSIA" in printed.texts
    identity = make_identity(state / "keys")
    record = verify_receipt_payload(printed.qr[0], identity.device_public_pem())
    assert record["event_id"] == paid["event_id"] and record["amount"] == demo.AMOUNT
    report = audit_ledger(state / "ledger.sqlite", identity.device_public_pem())
    assert report.ok and report.overrides == {app.cfg.device.id: 1}


def test_the_daemon_wires_evidence_only_when_asked(tmp_path, engine, models_dir):
    state, _ = demo.build_pilot(tmp_path / "pilot", engine, with_shared=False)
    (tmp_path / "frames").mkdir()
    cfg = demo.demo_config(state, tmp_path / "frames", liveness=False, models_dir=str(models_dir))
    plain = demo.App(cfg)
    try:
        assert plain.flow.override is plain.override and plain.evidence is None
        assert not plain.override.wants_crop
    finally:
        plain.close()
    cfg.override.evidence = True
    sealed = demo.App(cfg)
    try:
        assert sealed.override.wants_crop and sealed.evidence is not None
        assert sealed.evidence.folder == state / "evidence"
    finally:
        sealed.close()
    cfg.override.enabled = False
    off = demo.App(cfg)
    try:
        assert off.override is None and off.flow.override is None
    finally:
        off.close()
