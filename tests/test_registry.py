"""The device registry signed by central, and everything that believes a device on its word:
claims sync, central's consumer, ``edge audit --receipt`` and the generated broker ACL."""

from __future__ import annotations

import base64
import json

import pytest
from support import REGENCY, ROUND, pay, ref_of

from edge.__main__ import main
from edge.errors import LedgerError, RegistryError
from edge.events import canonical, receipt_payload
from edge.keys import DevicePublic, generate_central_key, write_card
from edge.ledger.audit import check_receipt
from edge.mqtt.claims import ClaimsSync
from edge.mqtt.client import BrokerSettings
from edge.mqtt.consumer import Consumer, DeviceRegistry
from edge.mqtt.store import EventStore
from edge.registry import (
    DeviceEntry,
    RegistryStore,
    event_problem,
    mosquitto_acl,
    open_registry,
    revoke,
    sign_registry,
)

HOUSEHOLD = "KPM-3172-0001-0001"


@pytest.fixture
def devices(make_identity):
    """edge-a01 in 3171 (this test suite's REGENCY), edge-b01 and edge-b02 in 3172."""
    return {
        "edge-a01": ("3171", make_identity()),
        "edge-b01": ("3172", make_identity()),
        "edge-b02": ("3172", make_identity()),
    }


def entries(devices) -> list[DeviceEntry]:
    return [DeviceEntry(d, r, i.device_public_pem()) for d, (r, i) in devices.items()]


@pytest.fixture
def v1(devices, central_key, central_pem):
    return open_registry(sign_registry(central_key, entries(devices), 1), central_pem)


def body_of(blob: bytes) -> dict:
    doc = json.loads(blob)
    doc.pop("sig")
    return doc


def resign(central_key, body: dict) -> bytes:
    return canonical({**body, "sig": base64.b64encode(central_key.sign(canonical(body))).decode()})


# -- the document -------------------------------------------------------------------------------


def test_a_signed_registry_opens_and_says_who_is_where(v1, devices):
    assert v1.version == 1 and sorted(v1.devices) == sorted(devices)
    a01 = v1.lookup("edge-a01")
    assert a01.regency == "3171" and not a01.revoked
    assert a01.public_pem == devices["edge-a01"][1].device_public_pem()
    assert v1.lookup("edge-zz9") is None


def test_a_registry_not_signed_by_central_or_altered_is_refused(
    devices, central_key, central_pem, rogue_key
):
    with pytest.raises(RegistryError, match="not signed by central"):
        open_registry(sign_registry(rogue_key, entries(devices), 1), central_pem)
    blob = sign_registry(central_key, entries(devices), 1)
    moved = blob.replace(b'"regency":"3171"', b'"regency":"3172"')
    with pytest.raises(RegistryError, match="not signed by central"):
        open_registry(moved, central_pem)
    with pytest.raises(RegistryError, match="unsigned"):
        open_registry(canonical(body_of(blob)), central_pem)
    doc = json.loads(blob)
    doc["sig"] = "!" + doc["sig"]  # junk a lenient base64 decoder would skip
    with pytest.raises(RegistryError, match="not base64"):
        open_registry(json.dumps(doc).encode(), central_pem)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda b: b.update(version=0), "version must be an integer"),
        (lambda b: b.update(version=True), "version must be an integer"),
        (lambda b: b["devices"][0].update(device_id="edge-a01\n"), "not a device id"),
        (lambda b: b["devices"][0].update(regency="31710"), "4-digit BPS code"),
        (lambda b: b["devices"][0].update(public_pem="garbage"), "not a public key PEM"),
        (lambda b: b["devices"][0].update(status="revoked"), "ISO 8601"),
        (lambda b: b["devices"][0].update(revoked_at="2026-12-01T00:00:00Z"), "status must be"),
        (lambda b: b["devices"].append(dict(b["devices"][0])), "listed twice"),
        (lambda b: b.update(extra=1), "not a bansos.registry/1 document"),
        (lambda b: b["devices"][0].update(device_id="edge-\ud800"), "UTF-8"),
    ],
)
def test_signed_nonsense_is_refused_with_a_reason(devices, central_key, central_pem, change, why):
    body = body_of(sign_registry(central_key, entries(devices), 1))
    change(body)
    try:
        blob = resign(central_key, body)
    except UnicodeEncodeError:  # a lone surrogate cannot even be signed as UTF-8: send escaped
        body_text = json.dumps(body)
        blob = body_text[:-1].encode() + b',"sig":"AAAA"}'
    with pytest.raises(RegistryError, match=why):
        open_registry(blob, central_pem)


def test_duplicate_json_keys_are_refused(devices, central_key, central_pem):
    blob = sign_registry(central_key, entries(devices), 1)
    with pytest.raises(RegistryError, match="duplicate JSON key"):
        open_registry(b'{"version":9,' + blob[1:], central_pem)


# -- installing: never an older one ----------------------------------------------------------


def test_the_store_keeps_the_newest_and_refuses_an_older_one(
    tmp_path, devices, central_key, central_pem, v1
):
    store = RegistryStore(tmp_path / "registry.json", central_pem)
    assert store.current() is None
    assert store.install(v1.blob) == (store.current(), True)
    v2 = sign_registry(central_key, revoke(v1, "edge-b02", at=1_796_000_000), 2)
    assert store.install(v2)[1] is True
    with pytest.raises(RegistryError, match="older than the installed 2"):
        store.install(v1.blob)
    assert store.install(v2)[1] is False  # the same again: nothing to do
    other = sign_registry(central_key, entries(devices), 2)
    with pytest.raises(RegistryError, match="differs from the installed one"):
        store.install(other)
    again = RegistryStore(tmp_path / "registry.json", central_pem)  # a restart
    assert again.current().version == 2
    assert again.lookup("edge-b02").revoked_at == "2026-11-30T00:53:20.000Z"


def test_a_revocation_written_by_central_reaches_a_running_consumer(
    tmp_path, central_key, central_pem, v1
):
    path = tmp_path / "registry.json"
    path.write_bytes(v1.blob)
    store = RegistryStore(path, central_pem, reload_s=0.0)
    assert not store.lookup("edge-a01").revoked
    path.write_bytes(sign_registry(central_key, revoke(v1, "edge-a01"), 2))
    assert store.lookup("edge-a01").revoked and store.current().version == 2
    path.write_bytes(v1.blob)  # an older file put back: the newer one stays
    assert store.lookup("edge-a01").revoked


def test_a_registry_file_edited_on_the_card_is_not_believed(tmp_path, central_pem, v1):
    path = tmp_path / "registry.json"
    RegistryStore(path, central_pem).install(v1.blob)
    path.write_bytes(path.read_bytes().replace(b'"3171"', b'"3172"'))
    assert RegistryStore(path, central_pem).current() is None


# -- believing an event on the registry's word --------------------------------------------


def test_event_problem_names_each_reason(v1, devices, make_ledger, central_key, central_pem):
    _, b01 = devices["edge-b01"]
    ev = pay(make_ledger(device_id="edge-b01", identity=b01, regency="3172"), HOUSEHOLD)
    entry = v1.lookup("edge-b01")
    assert event_problem(entry, ev, topic_regency="3172", own_regency="3172") is None
    assert event_problem(None, ev) == "unknown device"
    assert event_problem(entry, ev, topic_regency="3171") == (
        "device is registered in regency 3172, not the topic's 3171"
    )
    assert event_problem(entry, ev, own_regency="3171") == (
        "device is registered in regency 3172, not this terminal's 3171"
    )
    assert event_problem(entry, {**ev, "sig": ev["sig"][::-1]}) == "bad signature"
    revoked = open_registry(
        sign_registry(central_key, revoke(v1, "edge-b01", at=0), 2), central_pem
    )
    assert event_problem(revoked.lookup("edge-b01"), ev) == (
        "device revoked at 1970-01-01T00:00:00.000Z"
    )


def test_claims_sync_believes_only_registered_devices_of_its_regency(
    v1, devices, make_ledger, tmp_path, central_pem
):
    """The issue's forgery without a broker: edge-a01 of 3171 publishes into 3172, with a
    garbage signature and with its own (stolen, valid) key; neither turns the household away."""
    _, a01 = devices["edge-a01"]
    _, b01 = devices["edge-b01"]
    here = make_ledger(tmp_path / "b02.sqlite", devices["edge-b02"][1], "edge-b02", "3172")
    store = RegistryStore(tmp_path / "registry.json", central_pem)
    store.install(v1.blob)
    sync = ClaimsSync(here, "edge-b02", "3172", registry=store)
    forged = pay(make_ledger(tmp_path / "x.sqlite", a01, "edge-a01", "3172"), HOUSEHOLD)
    garbage = {**forged, "sig": base64.b64encode(bytes(64)).decode()}
    topic = "bansos/v1/3172/edge-a01/event"
    assert not sync.handle(topic, canonical(garbage))
    assert not sync.handle(topic, canonical(forged))
    genuine = pay(make_ledger(tmp_path / "b01.sqlite", b01, "edge-b01", "3172"), "KPM-3172-0002")
    assert not sync.handle("bansos/v1/3172/edge-b01/event", canonical({**genuine, "amount": 1}))
    assert sync.handle("bansos/v1/3172/edge-b01/event", canonical(genuine))
    assert sync.refusals == [
        "device is registered in regency 3171, not the event's 3172",
        "device is registered in regency 3171, not the event's 3172",
        "hash does not match the event",
    ]
    assert here.is_paid(HOUSEHOLD, ROUND, ref_of(HOUSEHOLD)) is None
    assert here.is_paid("KPM-3172-0002", ROUND, ref_of("KPM-3172-0002"))["device_id"] == "edge-b01"


def test_claims_sync_without_a_registry_syncs_nothing(devices, make_ledger, tmp_path):
    _, b01 = devices["edge-b01"]
    here = make_ledger(tmp_path / "b02.sqlite", devices["edge-b02"][1], "edge-b02", "3172")
    sync = ClaimsSync(here, "edge-b02", "3172")
    ev = pay(make_ledger(tmp_path / "b01.sqlite", b01, "edge-b01", "3172"), HOUSEHOLD)
    assert not sync.handle("bansos/v1/3172/edge-b01/event", canonical(ev))
    assert sync.refusals == ["no device registry installed"]


def test_the_consumer_refuses_revoked_and_misplaced_devices(
    tmp_path, v1, devices, make_ledger, central_key, central_pem
):
    path = tmp_path / "registry.json"
    store = RegistryStore(path, central_pem)
    store.install(sign_registry(central_key, revoke(v1, "edge-b02"), 2))
    events = EventStore(tmp_path / "central.sqlite")
    consumer = Consumer(BrokerSettings(tls=False), events, store, group=None)
    try:
        _, a01 = devices["edge-a01"]
        _, b02 = devices["edge-b02"]
        ok = pay(make_ledger(tmp_path / "a.sqlite", a01, "edge-a01", "3171"), "KPM-3171-0001")
        assert consumer.handle("bansos/v1/3171/edge-a01/event", canonical(ok)) == "stored"
        away = pay(make_ledger(tmp_path / "x.sqlite", a01, "edge-a01", "3172"), HOUSEHOLD)
        assert consumer.handle("bansos/v1/3172/edge-a01/event", canonical(away)) == (
            "rejected: device is registered in regency 3171, not the event's 3172"
        )
        stolen = pay(make_ledger(tmp_path / "b.sqlite", b02, "edge-b02", "3172"), HOUSEHOLD)
        assert consumer.handle("bansos/v1/3172/edge-b02/event", canonical(stolen)).startswith(
            "rejected: device revoked at "
        )
        # The old unsigned registry still works during the migration, keys only.
        legacy = DeviceRegistry(keys={"edge-a01": a01.device_public_pem()})
        assert legacy.lookup("edge-a01").regency is None and legacy.lookup("edge-a02") is None
    finally:
        consumer.stop()
        events.close()


# -- receipts ------------------------------------------------------------------------------------


def test_a_receipt_verifies_only_with_the_key_registered_for_its_device(
    v1, devices, make_ledger, central_key, central_pem, tmp_path
):
    _, a01 = devices["edge-a01"]
    _, b01 = devices["edge-b01"]
    text = receipt_payload(pay(make_ledger(tmp_path / "a.sqlite", a01, "edge-a01", REGENCY)))
    assert check_receipt(text, registry=v1)["device_id"] == "edge-a01"
    # Signed by edge-b01's key but naming edge-a01: any key verifies what it signed itself.
    posing = receipt_payload(pay(make_ledger(tmp_path / "b.sqlite", b01, "edge-a01", REGENCY)))
    with pytest.raises(LedgerError, match="does not verify"):
        check_receipt(posing, registry=v1)
    with pytest.raises(LedgerError, match="not the one registered"):
        check_receipt(posing, registry=v1, device=DevicePublic(None, b01.device_public_pem(), None))
    with pytest.raises(LedgerError, match="another device than the card"):
        check_receipt(posing, device=DevicePublic("edge-b01", b01.device_public_pem(), None))
    with pytest.raises(LedgerError, match="bare public key"):
        check_receipt(posing, device=DevicePublic(None, b01.device_public_pem(), None))
    unknown = receipt_payload(pay(make_ledger(tmp_path / "z.sqlite", a01, "edge-zz9", REGENCY)))
    with pytest.raises(LedgerError, match="not in the registry"):
        check_receipt(unknown, registry=v1)
    v2 = open_registry(sign_registry(central_key, revoke(v1, "edge-a01"), 2), central_pem)
    with pytest.raises(LedgerError, match="was revoked at"):
        check_receipt(text, registry=v2)


# -- the command line and the broker ACL ------------------------------------------------------


def test_registry_cli_builds_revokes_shows_installs_and_makes_the_acl(tmp_path, devices, capsys):
    key = tmp_path / "central.pem"
    generate_central_key(key)
    pub = tmp_path / "central.pem.pub"
    rows = ["device_id,regency,card"]
    for device_id, (regency, ident) in devices.items():
        write_card(ident, device_id, tmp_path / f"{device_id}.json")
        rows.append(f"{device_id},{regency},{device_id}.json")
    (tmp_path / "devices.csv").write_text("\n".join(rows) + "\n")
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[device]\nstate_dir = "{tmp_path / "state"}"\n[bundle]\ncentral_public_key = "{pub}"\n'
    )

    def edge(*args) -> int:
        return main(["-c", str(cfg), *map(str, args)])

    v1, v2, v3 = (tmp_path / f"v{n}.json" for n in (1, 2, 3))
    assert (
        edge("registry", "build", "--devices", tmp_path / "devices.csv", "--key", key, "--out", v1)
        == 0
    )
    assert edge("registry", "revoke", v1, "--device", "edge-b02", "--key", key, "--out", v2) == 0
    # A later build from the same CSV keeps the revocation: a CSV cannot bring a stolen one back.
    assert (
        edge(
            "registry",
            "build",
            "--devices",
            tmp_path / "devices.csv",
            "--key",
            key,
            "--previous",
            v2,
            "--out",
            v3,
        )
        == 0
    )
    capsys.readouterr()
    assert edge("registry", "show", v3) == 0
    shown = capsys.readouterr().out
    assert "registry version 3" in shown and "edge-b02" in shown and "REVOKED" in shown
    assert edge("registry", "install", v3) == 0
    assert edge("registry", "install", v1) == 1  # older
    assert "older than the installed 3" in capsys.readouterr().err
    assert edge("registry", "acl", v3, "--out", tmp_path / "acl") == 0
    acl = (tmp_path / "acl").read_text()
    assert "user edge-b01\ntopic write bansos/v1/3172/edge-b01/event\n" in acl
    assert "topic read bansos/v1/3172/+/event" in acl and "edge-b02" not in acl
    assert "topic read bansos/v1/+/+/event" not in acl
    forged = tmp_path / "forged.json"
    forged.write_bytes(v3.read_bytes().replace(b'"3171"', b'"3172"'))
    assert edge("registry", "show", forged) == 1


def test_acl_lists_each_active_device_with_its_own_topics_only(v1):
    acl = mosquitto_acl(v1, prefix="bansos/v1")
    block = acl.split("user edge-a01\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block == [
        "topic write bansos/v1/3171/edge-a01/event",
        "topic write bansos/v1/3171/edge-a01/status",
        "topic write bansos/v1/3171/edge-a01/health",
        "topic write bansos/v1/3171/edge-a01/cmd/+/result",
        "topic read bansos/v1/3171/edge-a01/cmd/+",
        "topic read bansos/v1/3171/+/event",
        "topic read bansos/v1/registry",
    ]
    assert "user central\ntopic readwrite bansos/v1/#" in acl


def test_the_daemon_reporter_reads_the_installed_registry(
    tmp_path, v1, devices, make_ledger, central_pem
):
    """Reporter.from_config (what the app builds) checks synced payouts against
    state_dir/registry.json, verified with the configured central key."""
    from edge.config import parse_config
    from edge.mqtt.reporter import Reporter

    (tmp_path / "central.pub").write_bytes(central_pem)
    RegistryStore(tmp_path / "registry.json", central_pem).install(v1.blob)
    _, b02 = devices["edge-b02"]
    cfg = parse_config(
        {
            "device": {"id": "edge-b02", "regency": "3172", "state_dir": str(tmp_path)},
            "mqtt": {"tls": False},
            "bundle": {"central_public_key": str(tmp_path / "central.pub")},
        }
    )
    here = make_ledger(tmp_path / "ledger.sqlite", b02, "edge-b02", "3172")
    reporter = Reporter.from_config(cfg, here, b02)
    _, b01 = devices["edge-b01"]
    ev = pay(make_ledger(tmp_path / "b01.sqlite", b01, "edge-b01", "3172"), HOUSEHOLD)
    assert reporter.claims.handle("bansos/v1/3172/edge-b01/event", canonical(ev))
    assert here.is_paid(HOUSEHOLD, ROUND, ref_of(HOUSEHOLD))["device_id"] == "edge-b01"


def test_consume_takes_the_signed_registry_or_the_old_folder(tmp_path, v1, central_pem, devices):
    from edge.cli.mqtt import _consumer_registry

    (tmp_path / "central.pub").write_bytes(central_pem)
    (tmp_path / "registry.json").write_bytes(v1.blob)
    signed = _consumer_registry(str(tmp_path / "registry.json"), str(tmp_path / "central.pub"))
    assert isinstance(signed, RegistryStore) and signed.lookup("edge-b01").regency == "3172"
    (tmp_path / "forged.json").write_bytes(v1.blob.replace(b'"3171"', b'"3172"'))
    with pytest.raises(RegistryError, match="no valid signed device registry"):
        _consumer_registry(str(tmp_path / "forged.json"), str(tmp_path / "central.pub"))
    with pytest.raises(RegistryError, match="give --central-pub"):
        _consumer_registry(str(tmp_path / "registry.json"), None)
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "edge-a01.pem").write_bytes(devices["edge-a01"][1].device_public_pem())
    legacy = _consumer_registry(str(folder), None)
    assert isinstance(legacy, DeviceRegistry) and legacy.lookup("edge-a01").regency is None
