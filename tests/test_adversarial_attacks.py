"""Issue 12, point 5: the review's poison inputs, each replayed against the real code.

A lone surrogate in a household id, seq = 2**63 - 1, a trailing newline after an id, a
1,000-deep TOML array, junk characters in base64: each must end as a recorded, acknowledged
rejection or the parser's own error, with a reason, never a traceback or a retry loop.
"""

from __future__ import annotations

import base64
import json

import paho.mqtt.client as mqtt
import pytest
from forge import raw_event, resign_event
from pg import pg_cluster_fixture, pg_dsn_fixture  # noqa: F401
from support import pay

from edge.__main__ import main
from edge.enrolment.bundle import open_envelope
from edge.errors import BundleError, ClaimError, ConfigError, LedgerError, PayloadError
from edge.events import (
    AMOUNT_MAX,
    SEQ_MAX,
    b64url,
    receipt_payload,
    signature_ok,
    unb64,
    unb64url,
    verify_receipt_payload,
)
from edge.mqtt import schemas
from edge.mqtt.claims import ClaimsSync
from edge.mqtt.client import BrokerSettings
from edge.mqtt.consumer import Consumer, DeviceRegistry
from edge.mqtt.store import EventStore
from edge.mqtt.topics import split
from edge.payout.claim import _check, decode_claim, validate_household_id

DEVICE = "edge-test-0001"
TOPIC = f"bansos/v1/3171/{DEVICE}/event"


@pytest.fixture
def central(tmp_path, identity):
    store = EventStore(tmp_path / "central.sqlite")
    registry = DeviceRegistry(keys={DEVICE: identity.device_public_pem()})
    consumer = Consumer(BrokerSettings(tls=False), store, registry)
    yield consumer, store
    store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_central(request, tmp_path, identity):
    """The consumer over each backend central runs (PostgreSQL refuses NUL in text)."""
    dsn = tmp_path / "central.sqlite" if request.param == "sqlite" else None
    store = EventStore(dsn or request.getfixturevalue("pg_dsn"))
    registry = DeviceRegistry(keys={DEVICE: identity.device_public_pem()})
    consumer = Consumer(BrokerSettings(tls=False), store, registry)
    yield consumer, store
    store.close()


class FakeClient:
    """The paho client as Consumer._on_message uses it: acknowledgements, kept."""

    def __init__(self) -> None:
        self.acks: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)


def deliver(consumer: Consumer, payload: bytes, mid: int = 7) -> FakeClient:
    msg = mqtt.MQTTMessage(mid=mid, topic=TOPIC.encode())
    msg.payload = payload
    msg.qos = 1
    client = FakeClient()
    consumer._on_message(client, None, msg)
    return client


# -- lone surrogates -------------------------------------------------------------------------


def test_a_lone_surrogate_is_a_recorded_and_acknowledged_rejection(central, ledger, identity):
    consumer, store = central
    poisoned = resign_event({**pay(ledger), "household_id": "KPM-\ud800"}, identity)
    client = deliver(consumer, raw_event(poisoned))
    # Before: UnicodeEncodeError, retried in paho's network thread and never acknowledged.
    assert client.acks == [7] and consumer.unacked == 0
    assert consumer.rejected == 1 and store.rejected_count() == 1 and store.count() == 0
    with pytest.raises(PayloadError, match="lone surrogate"):
        schemas.parse("event", raw_event(poisoned))


def test_every_poison_is_acknowledged_and_kept_on_every_backend(any_central, ledger, identity):
    consumer, store = any_central
    genuine = pay(ledger)
    poisons = [
        raw_event(resign_event({**genuine, "household_id": "KPM-\ud800"}, identity)),
        raw_event(resign_event({**genuine, "household_id": "KPM-\x00"}, identity)),
        raw_event(resign_event({**genuine, "seq": 2**63 - 1}, identity)),
        b'{"schema": "bansos.event/1", "x": "\x00\xff"}',
        b"[" * 100_000,
    ]
    for mid, payload in enumerate(poisons, 1):
        assert deliver(consumer, payload, mid).acks == [mid]
    assert consumer.unacked == 0 and store.rejected_count() == len(poisons)
    assert store.count() == 0
    deliver(consumer, raw_event(genuine), 99)
    assert store.count() == 1  # and the consumer still stores what is genuine


def test_claims_sync_counts_a_lone_surrogate_as_rejected(make_ledger, identity, tmp_path):
    here = make_ledger(tmp_path / "b02.sqlite", device_id="edge-b02")
    poisoned = resign_event({**pay(make_ledger()), "household_id": "KPM-\ud800"}, identity)
    sync = ClaimsSync(here, "edge-b02", "3171")
    assert sync.handle(TOPIC, raw_event(poisoned)) is False  # before: UnicodeEncodeError
    assert sync.rejected == 1 and here.stats()["remote_payouts"] == 0


def test_a_store_that_fails_is_retried_not_rejected(central, ledger):
    """Totality must not turn an outage into a silent loss: only poison is acknowledged."""
    consumer, store = central
    store.close()  # the database is gone
    client = deliver(consumer, raw_event(pay(ledger)))
    assert client.acks == [] and consumer.unacked == 1


# -- bounded integers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("seq", 2**63 - 1), ("seq", SEQ_MAX + 1), ("amount", 10**15), ("amount", AMOUNT_MAX + 1)],
)
def test_integers_beyond_the_documented_range_are_refused_at_the_schema(
    central, ledger, identity, field, value
):
    consumer, store = central
    event = resign_event({**pay(ledger), field: value}, identity)  # signed by the device
    outcome = consumer.handle(TOPIC, raw_event(event))
    # Before: OverflowError at central for 2**63 - 1.
    assert outcome.startswith("rejected: event: ") and field in outcome
    assert store.count() == 0 and store.rejected_count() == 1


def test_the_limits_the_schema_documents_are_the_code_s():
    event = schemas.schema("event")["properties"]
    assert event["seq"]["maximum"] == SEQ_MAX and event["amount"]["maximum"] == AMOUNT_MAX


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(ledger, constant):
    payload = json.dumps({**pay(ledger), "score": 0.5}).encode().replace(b"0.5", constant, 1)
    with pytest.raises(PayloadError, match="not JSON"):
        schemas.parse("event", payload)


def test_absurd_nesting_is_a_payload_error_not_a_recursion_error():
    with pytest.raises(PayloadError, match="nested too deeply"):
        schemas.parse("command", b'{"args": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")


# -- fullmatch -------------------------------------------------------------------------------


def test_a_trailing_newline_after_an_id_is_refused_everywhere(ledger, identity):
    event = resign_event({**pay(ledger), "device_id": DEVICE + "\n"}, identity)
    # Both validators: the compiled one and the reference one behind error messages.
    with pytest.raises(PayloadError):
        schemas.parse("event", raw_event(event))
    assert any("device_id" in e for e in schemas.errors("event", event))
    assert split(f"bansos/v1/3171/{DEVICE}\n/event") is None
    assert split("bansos/v1/3171\n/edge-a01/event") is None
    with pytest.raises(ClaimError):
        validate_household_id("KPM-3171-0001-0001\n")
    # A claim whose round carries a newline, with a check value the attacker computed.
    round_id, household = "2026-12\n", "KPM-3171-0001-0001"
    with pytest.raises(ClaimError):
        decode_claim(f"BANSOS/1:{round_id}:{household}:{_check(household, round_id)}")


# -- config loader ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["a = " + "[" * 1000 + "]" * 1000, "[vision]\nmatch_threshold = " + "[" * 1000 + "]" * 1000],
    ids=["top-level", "in-a-section"],
)
def test_a_1000_deep_toml_array_is_a_clear_error(tmp_path, capsys, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="nested too deeply"):
        from edge.config import load_config

        load_config(path)
    code = main(["check-config", str(path)])
    out = capsys.readouterr()
    assert code != 0 and "nested too deeply" in out.err + out.out
    assert "Traceback" not in out.err + out.out and "RecursionError" not in out.err + out.out


# -- strict base64 ---------------------------------------------------------------------------


def test_a_receipt_with_junk_in_its_signature_no_longer_verifies(ledger, identity):
    record = receipt_payload(pay(ledger))
    pem = identity.device_public_pem()
    head, sig = record.rsplit("|", 1)
    for bad in (sig[:10] + "." + sig[10:], sig + "=", sig[:10] + "\n" + sig[10:], sig + "A"):
        with pytest.raises(LedgerError):  # before: "." and "\n" were skipped, and it verified
            verify_receipt_payload(f"{head}|{bad}", pem)
    assert verify_receipt_payload(record, pem)["household_ref"]


def test_signatures_have_one_spelling_only(ledger, identity):
    event = pay(ledger)
    raw = base64.b64decode(event["sig"])
    assert signature_ok(event, identity.device_public_pem())
    # The last base64 character carries 2 spare bits: set one and the bytes stay the same.
    last = event["sig"][-3]
    twin = event["sig"][:-3] + chr(ord(last) + 1) + "=="
    assert base64.b64decode(twin) == raw  # Python's decoder alone takes it
    assert not signature_ok({**event, "sig": twin}, identity.device_public_pem())
    for junk in ("AAAA*", "AAA", "AA=A", " AAAA", "AAAA\n"):
        with pytest.raises(ValueError):
            unb64(junk)
    for junk in ("AAA=", "A", "AA.A", "AA+A", "AB"):
        with pytest.raises(ValueError):
            unb64url(junk)
    assert unb64url(b64url(b"\x00\xff")) == b"\x00\xff"


def test_a_bundle_envelope_with_junk_base64_is_a_bundle_error():
    good = base64.b64encode(b"{}").decode()
    for body in (good + "\n", "*" + good, good.rstrip("=")):
        blob = json.dumps({"format": "bansos.bundle/1", "body": body, "sig": good}).encode()
        with pytest.raises(BundleError):
            open_envelope(blob)


def test_command_results_stay_encodable_whatever_the_topic(tmp_path, central_pem):
    from edge.mqtt.processor import CommandProcessor

    proc = CommandProcessor(central_pem, DEVICE, tmp_path / "c.sqlite", {})
    try:
        result = proc.handle(f"bansos/v1/3171/{DEVICE}/cmd/\ud800x", b'{"sig": 1}')
    finally:
        proc.close()
    assert result["status"] == "refused"
    json.dumps(result, ensure_ascii=False).encode()  # what the reporter signs
    assert result["name"] == "?x"


def test_config_ids_refuse_a_trailing_newline():
    from edge.config import parse_config

    for key, value in (("id", "edge-a01\n"), ("regency", "3171\n")):
        with pytest.raises(ConfigError, match=f"device.{key}"):
            parse_config({"device": {key: value}})


def test_a_signed_command_with_an_impossible_date_is_refused_not_failed(
    tmp_path, central_key, central_pem
):
    from edge.events import canonical
    from edge.mqtt.processor import CommandProcessor

    body = {
        "schema": "bansos.command/1",
        "id": "00000000-0000-4000-8000-000000000000",
        "device_id": DEVICE,
        "name": "health",
        "issued_at": "2026-13-45T99:99:99Z",  # fits the schema's pattern, is no date
        "counter": 1,
        "args": {},
    }
    body["sig"] = base64.b64encode(central_key.sign(canonical(body))).decode()
    proc = CommandProcessor(central_pem, DEVICE, tmp_path / "c.sqlite", {"health": lambda a: {}})
    try:
        result = proc.handle(f"bansos/v1/3171/{DEVICE}/cmd/health", canonical(body))
    finally:
        proc.close()
    assert result["status"] == "refused" and "issued_at" in result["error"]


def test_a_liveness_threshold_of_zero_is_refused_in_the_file_too():
    from edge.config import parse_config

    with pytest.raises(ConfigError, match="liveness.threshold"):
        parse_config({"liveness": {"threshold": 0.0}})
    assert parse_config({"liveness": {"enabled": False}}).liveness.enabled is False
