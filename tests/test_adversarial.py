"""Issue 12, "every parser total": fuzz every parser that reads what an attacker controls.

Each parser must answer any input with a value or its one documented error (or, for the
message handlers, a recorded rejection), never another exception, a stalled thread or a
retry loop: the consumer, claims sync, the command handler, the bundle opener, the receipt
verifier, the config loader, the claim QR decoder and the schema parser under them all.

Inputs are random bytes, random JSON (with NaN, huge integers, lone surrogates, deep nesting)
and genuine messages with one field replaced, both left as they are (hash and signature
break) and signed again by the device or by central (so the checks after the signature are
reached too). hypothesis runs derandomized with modest example counts, so CI is repeatable
and quick; the concrete attacks of the review are in test_adversarial_attacks.py.
"""

from __future__ import annotations

import json
import string

from forge import MODEL, NOW, body_of, genuine_bundle, raw_event, resign_event, sign_body
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import pay

from edge.config import Config, load_config
from edge.enrolment.bundle import Bundle, verify_and_open
from edge.errors import BundleError, ClaimError, ConfigError, LedgerError, PayloadError
from edge.events import canonical, receipt_payload, verify_receipt_payload
from edge.mqtt.claims import ClaimsSync
from edge.mqtt.client import BrokerSettings
from edge.mqtt.commands import COMMAND_NAMES, sign_command
from edge.mqtt.consumer import Consumer, DeviceRegistry
from edge.mqtt.processor import CommandProcessor
from edge.mqtt.remote_config import apply_config_changes
from edge.mqtt.schemas import KINDS, errors, parse
from edge.mqtt.store import EventStore
from edge.payout.claim import Claim, decode_claim, encode_claim
from edge.registry import DeviceEntry, RegistryStore, sign_registry

DEVICE = "edge-test-0001"
EVENT_TOPIC = f"bansos/v1/3171/{DEVICE}/event"
CMD_TOPIC = f"bansos/v1/3171/{DEVICE}/cmd/"

# Deterministic and modest: the whole file runs in seconds, the same way every time.
FUZZ = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Any code point, lone surrogates (category Cs) and NUL included; and, because a random code
# point is rarely a surrogate, the known poisons themselves.
POISON_TEXT = st.sampled_from(
    ["\ud800", "a\udfffb", "\x00", "KPM-1\n", "edge-test-0001\n", "3171\n", "\u202e", "|"]
)
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=24) | POISON_TEXT
LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([2**53, 2**63 - 1, 2**63, -1, 0, 10**15])
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_TEXT
)
ANY_JSON = st.recursive(
    LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)


def dumps(obj) -> bytes:
    # As an attacker writes it: NaN allowed, lone surrogates as \\u escapes.
    return json.dumps(obj, ensure_ascii=True, allow_nan=True).encode()


def mutations(genuine: dict):
    """Strategy: ``genuine`` with one field (or a new one) replaced by any JSON, or removed."""
    keys = sorted(genuine) + ["unknown_field"]
    value = ANY_JSON | POISON_TEXT  # half the time a known poison, so it is surely tried
    replace = st.tuples(st.sampled_from(keys), value).map(lambda kv: {**genuine, kv[0]: kv[1]})
    remove = st.sampled_from(sorted(genuine)).map(
        lambda k: {x: v for x, v in genuine.items() if x != k}
    )
    return replace | remove


def byte_edits(genuine: bytes):
    """Strategy: ``genuine`` with a few bytes inserted or overwritten somewhere."""
    return st.tuples(st.integers(0, len(genuine)), st.binary(min_size=1, max_size=4)).map(
        lambda pe: genuine[: pe[0]] + pe[1] + genuine[pe[0] + len(pe[1]) :]
    )


def payloads(genuine: dict):
    return (
        st.binary(max_size=200)
        | ANY_JSON.map(dumps)
        | mutations(genuine).map(dumps)
        | byte_edits(dumps(genuine))
    )


# -- the schema parser under every handler ----------------------------------------------------


def test_schema_parse_returns_a_valid_dict_or_payload_error(make_ledger, central_key):
    event = pay(make_ledger())
    command = json.loads(sign_command(central_key, DEVICE, "health", {}))

    @settings(FUZZ, max_examples=300)  # parsing alone is cheap: try more
    @given(
        pair=st.tuples(st.sampled_from(KINDS), st.binary(max_size=300) | ANY_JSON.map(dumps))
        | mutations(event).map(lambda e: ("event", dumps(e)))
        | mutations(command).map(lambda c: ("command", dumps(c)))
    )
    def run(pair):
        kind, payload = pair
        try:
            obj = parse(kind, payload)
        except PayloadError:
            return
        assert isinstance(obj, dict) and errors(kind, obj) == []
        canonical(obj)  # whatever is accepted has a canonical form (no lone surrogate)

    run()


# -- consumer (central) ----------------------------------------------------------------------


def test_consumer_records_every_message_it_cannot_store(tmp_path, make_ledger, identity):
    ledger = make_ledger()
    genuine = pay(ledger)
    store = EventStore(tmp_path / "central.sqlite")
    registry = DeviceRegistry(keys={DEVICE: identity.device_public_pem()})
    consumer = Consumer(BrokerSettings(tls=False), store, registry)
    seen = {"n": 0}

    @FUZZ
    @given(
        payload=payloads(genuine)
        | mutations(genuine).map(lambda e: raw_event(resign_event(e, identity))),
        topic=st.sampled_from([EVENT_TOPIC, "bansos/v1/3172/edge-x/event", "x"]) | ANY_TEXT,
    )
    def run(payload, topic):
        outcome = consumer.handle(topic, payload)  # never raises: the store is healthy
        seen["n"] += 1
        assert outcome in ("stored", "duplicate") or outcome.startswith("rejected: ")
        assert consumer.stored + consumer.duplicates + consumer.rejected == seen["n"]
        assert store.rejected_count() == consumer.rejected

    try:
        run()
        # Whatever got stored is a well-formed event.
        assert all(errors("event", e) == [] for e in store.events(DEVICE))
    finally:
        store.close()


# -- claims sync (terminal) ------------------------------------------------------------------


def test_claims_sync_answers_every_message_with_true_or_false(
    make_ledger, identity, make_identity, tmp_path, central_key, central_pem
):
    other = make_ledger(tmp_path / "other.sqlite", device_id="edge-b02")
    genuine = pay(make_ledger())
    devices = [
        DeviceEntry(DEVICE, "3171", identity.device_public_pem()),
        DeviceEntry("edge-b02", "3171", make_identity().device_public_pem()),
    ]
    registry = RegistryStore(tmp_path / "registry.json", central_pem)
    registry.install(sign_registry(central_key, devices, 1))
    sync = ClaimsSync(other, "edge-b02", "3171", registry=registry)

    @FUZZ
    @given(
        payload=payloads(genuine)
        | mutations(genuine).map(lambda e: raw_event(resign_event(e, identity))),
        topic=st.sampled_from([EVENT_TOPIC]) | ANY_TEXT,
    )
    def run(payload, topic):
        assert sync.handle(topic, payload) in (True, False)

    run()
    assert sync.rejected > 0 and other.stats()["remote_payouts"] == sync.recorded


# -- command handler (terminal) --------------------------------------------------------------


def _signed_command(central_key, name: str, args: dict) -> bytes:
    try:
        return sign_command(central_key, DEVICE, name, args)
    except (UnicodeEncodeError, ValueError):  # central cannot sign what has no canonical form
        return dumps({"name": name, "args": args, "sig": "A" * 86 + "=="})


def test_command_handler_answers_every_payload_with_a_valid_result(
    tmp_path, central_key, central_pem
):
    cfg = Config()
    limits = {"vision.match_threshold": (0.5, 0.9), "liveness.threshold": (0.5, 0.9)}
    actions = {
        "config": lambda a: apply_config_changes(cfg, a["set"], limits=limits),
        "reprint": lambda a: {"printed": True},
        "health": lambda a: {},
        "resend": lambda a: {"resent": 0},
        "bundle": lambda a: {"installed": a["bundle_id"]},
    }
    proc = CommandProcessor(central_pem, DEVICE, tmp_path / "commands.sqlite", actions)
    genuine = json.loads(sign_command(central_key, DEVICE, "health", {}))
    names = st.sampled_from(COMMAND_NAMES) | st.text(string.ascii_lowercase, max_size=6)
    # Signed by central with any args: the checks after the signature must hold too.
    signed = st.tuples(names, st.dictionaries(ANY_TEXT, ANY_JSON, max_size=3)).map(
        lambda na: _signed_command(central_key, na[0], na[1])
    )
    config_sets = st.dictionaries(
        st.sampled_from(
            ["vision.match_threshold", "liveness.threshold", "liveness.enabled", "flow.cooldown_s"]
        ),
        LEAF,
        min_size=1,
        max_size=3,
    ).map(lambda s: _signed_command(central_key, "config", {"set": s}))

    @FUZZ
    @given(payload=payloads(genuine) | signed | config_sets, name=names)
    def run(payload, name):
        result = proc.handle(CMD_TOPIC + name, payload)
        assert errors("command_result", result) == [], result
        canonical(result)  # the reporter signs it
        assert result["status"] in ("applied", "partial", "refused", "failed")
        # Verification is never loosened, whatever got through.
        assert cfg.liveness.enabled and cfg.liveness.threshold >= 0.5
        assert cfg.vision.match_threshold >= Config().vision.match_threshold

    try:
        run()
    finally:
        proc.close()


# -- bundle opener ---------------------------------------------------------------------------


def _paths(obj, prefix=()):
    """Every path into a JSON value (to replace what sits there)."""
    yield prefix
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    )
    for key, value in items:
        yield from _paths(value, (*prefix, key))


def _replaced(body: dict, path: tuple, value) -> dict:
    out = json.loads(json.dumps(body))
    if not path:
        return value
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def test_bundle_opener_answers_a_bundle_or_bundle_error(central_key, central_pem, identity):
    body = body_of(genuine_bundle(central_key, identity))
    paths = sorted(set(_paths(body)), key=str)

    def open_(blob):
        return verify_and_open(blob, central_pem, identity, *MODEL, NOW.timestamp(), None)

    @FUZZ
    @given(
        blob=st.binary(max_size=300)
        | ANY_JSON.map(dumps)
        | st.tuples(st.sampled_from(paths), ANY_JSON).map(
            lambda pv: sign_body(_replaced(body, *pv), central_key)
        )
        | ANY_JSON.map(lambda v: sign_body(dumps(v), central_key))
    )
    def run(blob):
        try:
            bundle = open_(blob)
        except BundleError:
            return
        assert isinstance(bundle, Bundle)
        assert all(1 <= h.amount <= 10**9 for h in bundle.households.values())
        labels, _ = bundle.templates()
        assert all(label.split("/")[0] in bundle.households for label in labels)

    run()


# -- receipt verifier ------------------------------------------------------------------------


def test_receipt_verifier_refuses_every_altered_record(make_ledger, identity):
    record = receipt_payload(pay(make_ledger()))
    pem = identity.device_public_pem()
    assert verify_receipt_payload(record, pem)["amount"] == 300_000
    printable = st.characters(codec="ascii", categories=["L", "N", "P", "S"])

    @FUZZ
    @given(
        pos=st.integers(0, len(record) - 1),
        char=printable | st.characters(codec=None, exclude_categories=()),
        insert=st.booleans(),
    )
    def altered(pos, char, insert):
        text = record[:pos] + char + record[pos + (0 if insert else 1) :]
        if text == record:
            return
        try:
            verify_receipt_payload(text, pem)
        except LedgerError:
            return
        raise AssertionError(f"altered receipt verified: {text!r}")

    @FUZZ
    @given(text=ANY_TEXT | st.text(max_size=300) | st.binary(max_size=50) | st.none())
    def anything(text):
        try:
            assert isinstance(verify_receipt_payload(text, pem), dict)
        except LedgerError:
            pass

    altered()
    anything()


# -- config loader ---------------------------------------------------------------------------

TOML_VALUE = st.recursive(
    st.sampled_from(["1", "-1", "0.5", "nan", "inf", "true", '"x"', '""', "1979-05-27", "0x10"])
    | st.text(string.printable, max_size=8).map(json.dumps),
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda v: "[" + ", ".join(v) + "]")
        | st.lists(st.tuples(st.sampled_from(["a", "b", "id"]), inner), max_size=2).map(
            lambda kv: "{" + ", ".join(f"{k} = {v}" for k, v in dict(kv).items()) + "}"
        )
    ),
    max_leaves=6,
)
SECTION = st.sampled_from([*Config.model_fields, "nope", "vision.quality"])
KEY = st.sampled_from(["threshold", "match_threshold", "id", "enabled", "port", "x"])


def test_config_loader_answers_a_config_or_config_error(tmp_path):
    path = tmp_path / "config.toml"

    @FUZZ
    @given(
        text=st.binary(max_size=200)
        | st.lists(st.tuples(SECTION, KEY, TOML_VALUE), max_size=4).map(
            lambda rows: "".join(f"[{s}]\n{k} = {v}\n" for s, k, v in rows).encode()
        )
        | st.integers(1, 3000).map(lambda n: ("a = " + "[" * n + "]" * n).encode())
        | st.integers(1, 3000).map(lambda n: ("a = " + "{b = " * n + "1" + "}" * n).encode())
    )
    def run(text):
        path.write_bytes(text)
        try:
            assert isinstance(load_config(path), Config)
        except ConfigError as exc:
            assert str(exc).startswith(str(path))

    run()


# -- claim QR decoder ------------------------------------------------------------------------

HOUSEHOLD = st.from_regex(r"[A-Z0-9][A-Z0-9-]{2,39}", fullmatch=True)
ROUND = st.from_regex(r"[0-9]{4}-[0-9]{2}[A-Z0-9-]{0,16}", fullmatch=True)


@FUZZ
@given(text=ANY_TEXT | st.text(max_size=80) | st.none() | st.integers())
def test_claim_decoder_answers_a_claim_or_claim_error(text):
    try:
        claim = decode_claim(text)
    except ClaimError:
        return
    assert isinstance(claim, Claim)


@FUZZ
@given(household=HOUSEHOLD, round_id=ROUND, junk=st.sampled_from(["\n", " ", "\x00", "\ud800"]))
def test_claims_round_trip_and_nothing_else_decodes(household, round_id, junk):
    assert decode_claim(encode_claim(household, round_id)) == Claim(household, round_id)
    head, _, check = encode_claim(household, round_id).rpartition(":")
    try:
        decode_claim(f"{head}{junk}:{check}")
    except ClaimError:
        return
    raise AssertionError("a claim with a junk character decoded")
