"""Central side: the reference consumer of terminal events.

It joins an MQTT 5 shared subscription (``$share/<group>/bansos/v1/+/+/event``): the broker
hands each event to one member of the group, so central scales by starting more consumers.
Each event is schema-checked, its device looked up in the device registry (signed by central,
:mod:`edge.registry`: known, not revoked, registered in the regency of the event and its
topic), its hash and signature verified against the registered key, then stored once
(``event_id`` is the primary key). The store is written before paho sends the PUBACK, so a
consumer that dies mid-message gets the event again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.errors import KeyFileError, PayloadError
from edge.keys import load_device_public
from edge.mqtt.client import BrokerSettings, connect_async, make_client
from edge.mqtt.commands import MAX_RESEND, sign_command
from edge.mqtt.heads import HeadBook, head_seqs
from edge.mqtt.recovery import Recovery, RecoveryPolicy, record_answer
from edge.mqtt.schemas import parse, safe_text
from edge.mqtt.store import EventStore
from edge.mqtt.topics import DEFAULT_PREFIX, Topics, all_events, all_reports, shared, split
from edge.registry import DeviceEntry, RegistryStore, event_problem

log = logging.getLogger(__name__)


class DeviceRegistry:
    """The old, unsigned registry: device id -> Ed25519 public PEM, from a folder or a JSON file.

    Kept for migration only: it knows keys but neither regencies nor revocations, so events
    are checked for hash and signature alone. Central signs a real registry with ``edge
    registry build`` and gives the consumer that file with ``--central-pub``
    (:class:`edge.registry.RegistryStore`, which has the same ``lookup``). A folder holds
    ``<device_id>.pem`` (bare public key) or ``<device_id>.json`` (device card from
    ``edge keys``); a file is a JSON object ``{"device_id": "PEM", ...}``. An unknown id
    triggers a re-read (at most every few seconds), so a newly provisioned terminal needs no
    consumer restart.
    """

    def __init__(self, path: Path | str | None = None, keys: dict[str, bytes] | None = None):
        self._path = Path(path) if path else None
        self._keys: dict[str, bytes] = dict(keys or {})
        self._loaded_at = 0.0
        self._lock = threading.Lock()
        if self._path is not None:
            self._reload()

    def _reload(self) -> None:
        self._loaded_at = time.monotonic()
        path = self._path
        if path is None or not path.exists():
            return
        if path.is_file():
            data = json.loads(path.read_text("utf-8"))
            self._keys.update({k: v.encode() for k, v in data.items()})
            return
        for item in sorted(path.iterdir()):
            if item.suffix not in (".pem", ".json"):
                continue
            try:
                pub = load_device_public(item)
            except KeyFileError as exc:
                log.warning("registry: skipping %s: %s", item.name, exc)
                continue
            self._keys[pub.device_id or item.stem] = pub.sign_public_pem

    def add(self, device_id: str, public_pem: bytes) -> None:
        """Register one device's public key."""
        with self._lock:
            self._keys[device_id] = public_pem

    def lookup(self, device_id: str) -> DeviceEntry | None:
        """The device as an entry of no known regency, or None when it is not provisioned."""
        pem = self.get(device_id)
        return None if pem is None else DeviceEntry(device_id, None, pem)

    def get(self, device_id: str) -> bytes | None:
        """The device's public PEM, or None when it is not provisioned."""
        with self._lock:
            pem = self._keys.get(device_id)
            if pem is None and time.monotonic() - self._loaded_at > 5.0:
                self._reload()
                pem = self._keys.get(device_id)
            return pem


class Consumer:
    """Subscribes to every terminal's events in a shared group and stores them verified."""

    def __init__(
        self,
        settings: BrokerSettings,
        store: EventStore,
        registry: DeviceRegistry | RegistryStore,
        *,
        group: str | None = "central",
        prefix: str = DEFAULT_PREFIX,
        client_id: str | None = None,
        session_expiry_s: int = 3600,
        reconnect_max_s: float = 30.0,
        central_key=None,
        recovery: RecoveryPolicy | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._registry = registry
        self._prefix = prefix
        # group=None: a plain subscription, for a single consumer (see docs/mqtt.md: Mosquitto
        # 2.0 does not restore shared subscriptions after a broker restart).
        self._filter = shared(group, all_events(prefix)) if group else all_events(prefix)
        # Health and status carry each device's head (edge.mqtt.heads), in the same group.
        self._report_filters = [shared(group, f) if group else f for f in all_reports(prefix)]
        self.heads = HeadBook(store, registry, prefix)
        self._session_expiry_s = session_expiry_s
        # A stable id per host and group keeps the session (and its queued events) across
        # consumer restarts.
        cid = client_id or f"consumer-{group or 'solo'}-{os.uname().nodename}"[:64]
        self._client = make_client(cid, settings, reconnect_max_s=reconnect_max_s)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.manual_ack_set(True)
        # With central's key the consumer asks terminals for what it lacks (edge.mqtt.recovery);
        # in a group, the members elect one to do it through the database.
        self.recovery = None
        if central_key is not None:
            holder = f"{cid}-{os.getpid()}"
            self.recovery = Recovery(
                store, self.publish, central_key, recovery, prefix=prefix, holder=holder
            )
        self._connected = False
        self._stopping = False
        self.subscribed = threading.Event()
        self.stored = 0
        self.duplicates = 0
        self.rejected = 0
        self.unacked = 0

    @property
    def connected(self) -> bool:
        """True while connected to the broker."""
        return self._connected

    def start(self) -> None:
        """Connect in the background (with retries) and start paho's network thread."""
        connect_async(self._client, self._settings, self._session_expiry_s)
        self._client.loop_start()
        if self.recovery is not None:
            self.recovery.start()

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish at QoS 1 (the recovery loop's resend commands); False when not connected."""
        if not self._connected:
            return False
        return self._client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS

    def stop(self, leave_group: bool = False) -> None:
        """Disconnect and stop the network thread.

        The session survives a plain stop, and with it this member's share of the group: the
        broker keeps queueing events for it until it returns. ``leave_group=True`` unsubscribes
        first, for a consumer that is being retired.
        """
        self._stopping = True
        if self.recovery is not None:
            self.recovery.stop()
        if leave_group and self._connected:
            self._client.unsubscribe([self._filter, *self._report_filters])
            time.sleep(0.2)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected = False

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the consumer: %s", reason_code)
            return
        self._connected = True
        log.info("consumer connected, subscribing to %s", self._filter)
        filters = [self._filter, *self._report_filters]
        client.subscribe([(f, SubscribeOptions(qos=1)) for f in filters])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("subscription refused: %s", [str(rc) for rc in reason_codes])
            return
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected and not self._stopping:
            log.warning("consumer disconnected: %s", reason_code)
        self._connected = False
        self.subscribed.clear()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/cmd/resend/result"):
            record_answer(self._store, self._registry, msg.topic, bytes(msg.payload), self._prefix)
            client.ack(msg.mid, msg.qos)
            return
        if not msg.topic.endswith("/event"):
            # A health or status report: its head is recorded (HeadBook never raises), and
            # a health report's versions and update progress (fleet view).
            self.heads.observe(msg.topic, bytes(msg.payload), retained=bool(msg.retain))
            if msg.topic.endswith("/health"):
                try:
                    self.handle_health(msg.topic, bytes(msg.payload))
                except Exception:  # the fleet view is best effort; never stall the thread
                    log.warning("fleet view not updated from %s", safe_text(msg.topic))
            client.ack(msg.mid, msg.qos)
            return
        # Acknowledged by hand, and only once stored: an event the database could not take
        # stays unacknowledged and the broker delivers it again after a reconnect.
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # brokers check topics are UTF-8; do not trust that
            topic = safe_text(bytes(msg._topic).decode("utf-8", "replace"))
        for attempt in range(3):
            try:
                # paho types the payload bytes | bytearray; bytes() of bytes is the same object
                self.handle(topic, bytes(msg.payload))
            except Exception:
                log.exception("could not store an event from %s (attempt %d)", topic, attempt + 1)
                time.sleep(0.2 * (attempt + 1))
                continue
            client.ack(msg.mid, msg.qos)
            return
        self.unacked += 1
        log.error("event on %s left unacknowledged; the broker re-sends it", topic)

    def handle(self, topic: str, payload: bytes) -> str:
        """Verify and store one event: ``stored``, ``duplicate`` or ``rejected: <why>``.

        Total: whatever the message holds, it is stored or recorded as rejected (and then
        acknowledged); only a store that cannot write raises, so the broker sends it again.
        """
        event, problem = self._parse(topic, payload)
        if event is None:
            return self._reject(topic, problem or "unreadable event", payload)
        # Outside the parser's guard: a registry that cannot be read is an outage, not poison.
        problem = self._problem(topic, event)
        if problem:
            return self._reject(topic, problem, payload)
        try:
            added = self._store.add(event)
        except (OverflowError, TypeError, ValueError, UnicodeError) as exc:
            # What the database cannot hold is poison, not an outage: retrying cannot help.
            return self._reject(topic, f"event not storable ({exc.__class__.__name__})", payload)
        if added:
            self.stored += 1
            return "stored"
        self.duplicates += 1
        return "duplicate"

    def _parse(self, topic: str, payload: bytes) -> tuple[dict | None, str | None]:
        """The event, or None and why it cannot be read; never raises."""
        try:
            return parse("event", payload), None
        except PayloadError as exc:
            return None, str(exc)
        except Exception as exc:  # a parser bug must not stall the network thread
            log.debug("event on %s broke a parser", safe_text(topic), exc_info=True)
            return None, f"unreadable event ({exc.__class__.__name__})"

    def handle_health(self, topic: str, payload: bytes) -> str:
        """Keep the versions of a health report: ``fleet`` or ``ignored: <why>``.

        Health is not signed (the broker's ACL lets a terminal publish only under its own id),
        so a report that names another device than its topic, or a device the registry does
        not list as active, is dropped, not stored.
        """
        try:
            report = parse("health", payload)
        except PayloadError as exc:
            return f"ignored: {exc}"
        where = split(topic, self._prefix)
        if where is None or (where[0], where[1]) != (report["regency"], report["device_id"]):
            return "ignored: health does not belong to the topic it came on"
        entry = self._registry.lookup(report["device_id"])
        if entry is None or entry.revoked:
            return "ignored: unknown or revoked device"
        self._store.record_health(report)
        return "fleet"

    def _problem(self, topic: str, event: dict) -> str | None:
        """Why a well-formed event may not be stored: wrong topic, unknown or revoked device,
        registered in another regency, not intact."""
        where = split(topic, self._prefix)
        if where is None or (where[0], where[1]) != (event["regency"], event["device_id"]):
            return "event does not belong to the topic it came on"
        entry = self._registry.lookup(event["device_id"])
        return event_problem(entry, event, topic_regency=where[0])

    def _reject(self, topic: str, problem: str, payload: bytes) -> str:
        self.rejected += 1
        topic, problem = safe_text(topic), safe_text(problem)
        log.warning("rejected a message on %s: %s", topic, problem)
        self._store.reject(topic, problem, bytes(payload))
        return f"rejected: {problem}"


def resend_requests(
    store: EventStore,
    central_private_key,
    prefix: str = DEFAULT_PREFIX,
    heads: dict[str, int] | None = None,
    counter=None,
) -> list[tuple[str, bytes]]:
    """Signed ``resend`` commands (topic, payload) for every sequence gap in the store.

    ``heads`` (device id -> last seq) also covers events missing at the end of a device's
    stream, which no gap can show; by default the heads the consumer recorded from health and
    status reports (``edge.mqtt.heads``). ``counter`` (a
    ``edge.mqtt.counter.CommandCounter``) allocates each command's replay counter.
    """
    known = head_seqs(store)
    if heads is None:
        heads = {d: seq for d, (_, seq) in known.items()}
    devices = {d: r for d, (r, _) in known.items() if r}
    devices.update(store.devices())
    gaps = store.gaps()
    for device_id, head in (heads or {}).items():
        last = store.last_seq(device_id)
        if head > last and device_id in devices:
            gaps.setdefault(device_id, []).append((last + 1, head))
    out = []
    for device_id, spans in gaps.items():
        topic = Topics(devices[device_id], device_id, prefix).command("resend")
        for lo, hi in spans:
            for start in range(lo, hi + 1, MAX_RESEND):
                args = {"from_seq": start, "to_seq": min(hi, start + MAX_RESEND - 1)}
                signed = sign_command(
                    central_private_key, device_id, "resend", args, counter=counter
                )
                out.append((topic, signed))
    return out
