"""The contract's schemas: well-formed, shipped, strict, and the two validators agree."""

from __future__ import annotations

import copy

import pytest
from jsonschema import Draft202012Validator
from support import pay

from edge.errors import PayloadError
from edge.mqtt import topics
from edge.mqtt.schemas import KINDS, errors, parse, schema, validate


@pytest.mark.parametrize("kind", KINDS)
def test_every_schema_is_valid_2020_12_and_versioned(kind):
    doc = schema(kind)
    Draft202012Validator.check_schema(doc)
    assert doc["$id"].endswith(f"{kind}.v1.json")
    assert doc["properties"]["schema"]["const"] == f"bansos.{kind}/1"


@pytest.fixture
def event(make_ledger):
    """A real accepted payout event, signed by a real ledger."""
    return pay(make_ledger(device_id="edge-a01"), "KPM-1", "2026-11", 600_000)


MUTATIONS = [
    ("drop hash", lambda e: e.pop("hash")),
    ("unknown field", lambda e: e.update(note="x")),
    ("negative seq", lambda e: e.update(seq=-1)),
    ("seq as text", lambda e: e.update(seq="7")),
    ("bad outcome", lambda e: e.update(outcome="paid")),
    ("accepted without amount", lambda e: e.update(amount=None)),
    ("local time", lambda e: e.update(ts="2026-11-23T10:00:00+07:00")),
    ("short sig", lambda e: e.update(sig="abc==")),
    ("upper-case hash", lambda e: e.update(hash=e["hash"].upper())),
    ("bad regency", lambda e: e.update(regency="31")),
]


def test_a_real_ledger_event_is_valid(event):
    assert errors("event", event) == []
    validate("event", event)


@pytest.mark.parametrize("name, mutate", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_malformed_events_are_refused_by_both_validators(event, name, mutate):
    bad = copy.deepcopy(event)
    mutate(bad)
    assert errors("event", bad), f"reference validator accepted: {name}"
    with pytest.raises(PayloadError):
        validate("event", bad)


def test_parse_refuses_non_json_and_oversized_payloads():
    with pytest.raises(PayloadError, match="not JSON"):
        parse("status", b"\x00\x01")
    with pytest.raises(PayloadError, match="too large"):
        parse("status", b" " * 2_000_000)


def test_topics():
    t = topics.Topics("3171", "edge-a01")
    assert t.event == "bansos/v1/3171/edge-a01/event"
    assert t.command("config") == "bansos/v1/3171/edge-a01/cmd/config"
    assert topics.result_topic(t.command("config")) == "bansos/v1/3171/edge-a01/cmd/config/result"
    assert t.regency_events == "bansos/v1/3171/+/event"
    assert topics.shared("g1", topics.all_events()) == "$share/g1/bansos/v1/+/+/event"
    assert topics.split(t.event) == ("3171", "edge-a01", "event")
    assert topics.split("other/3171/edge-a01/event") is None
    with pytest.raises(ValueError):
        topics.shared("a/b", "x")
