"""Central side: the reference consumer of terminal events.

It joins an MQTT 5 shared subscription (``$share/<group>/bansos/v1/+/+/event``): the broker
hands each event to one member of the group, so central scales by starting more consumers.
Each event is schema-checked, its hash and device signature verified against the registry of
device public keys, then stored once (``event_id`` is the primary key). The store is written
before paho sends the PUBACK, so a consumer that dies mid-message gets the event again.
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
from edge.events import check_event
from edge.keys import load_device_public
from edge.mqtt.client import BrokerSettings, connect_async, make_client
from edge.mqtt.commands import MAX_RESEND, sign_command
from edge.mqtt.schemas import parse
from edge.mqtt.store import EventStore
from edge.mqtt.topics import DEFAULT_PREFIX, Topics, all_events, shared, split

log = logging.getLogger(__name__)


class DeviceRegistry:
    """Device id -> Ed25519 public PEM, from a folder or a JSON file.

    A folder holds ``<device_id>.pem`` (bare public key) or ``<device_id>.json`` (device card
    from ``edge keys``); a file is a JSON object ``{"device_id": "PEM", ...}``. An unknown id
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
        registry: DeviceRegistry,
        *,
        group: str | None = "central",
        prefix: str = DEFAULT_PREFIX,
        client_id: str | None = None,
        session_expiry_s: int = 3600,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self._settings = settings
        self._store = store
        self._registry = registry
        self._prefix = prefix
        # group=None: a plain subscription, for a single consumer (see docs/mqtt.md: Mosquitto
        # 2.0 does not restore shared subscriptions after a broker restart).
        self._filter = shared(group, all_events(prefix)) if group else all_events(prefix)
        # Health reports too: the fleet's running versions and update progress.
        health = f"{prefix}/+/+/health"
        self._health_filter = shared(group, health) if group else health
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

    def stop(self, leave_group: bool = False) -> None:
        """Disconnect and stop the network thread.

        The session survives a plain stop, and with it this member's share of the group: the
        broker keeps queueing events for it until it returns. ``leave_group=True`` unsubscribes
        first, for a consumer that is being retired.
        """
        self._stopping = True
        if leave_group and self._connected:
            self._client.unsubscribe([self._filter, self._health_filter])
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
        client.subscribe(
            [
                (self._filter, SubscribeOptions(qos=1)),
                (self._health_filter, SubscribeOptions(qos=0)),
            ]
        )

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
        # Acknowledged by hand, and only once stored: an event the database could not take
        # stays unacknowledged and the broker delivers it again after a reconnect.
        for attempt in range(3):
            try:
                # paho types the payload bytes | bytearray; bytes() of bytes is the same object
                self.handle(msg.topic, bytes(msg.payload))
            except Exception:
                log.exception(
                    "could not store an event from %s (attempt %d)", msg.topic, attempt + 1
                )
                time.sleep(0.2 * (attempt + 1))
                continue
            client.ack(msg.mid, msg.qos)
            return
        self.unacked += 1
        log.error("event on %s left unacknowledged; the broker re-sends it", msg.topic)

    def handle(self, topic: str, payload: bytes) -> str:
        """Verify and store one event: ``stored``, ``duplicate`` or ``rejected: <why>``."""
        if topic.endswith("/health"):
            return self.handle_health(topic, payload)
        try:
            event = parse("event", payload)
        except PayloadError as exc:
            return self._reject(topic, str(exc), payload)
        problem = self._problem(topic, event)
        if problem:
            return self._reject(topic, problem, payload)
        if self._store.add(event):
            self.stored += 1
            return "stored"
        self.duplicates += 1
        return "duplicate"

    def handle_health(self, topic: str, payload: bytes) -> str:
        """Keep the versions of a health report: ``fleet`` or ``ignored: <why>``.

        Health is not signed (the broker's ACL lets a terminal publish only under its own id),
        so a report that names another device than its topic is dropped, not stored.
        """
        try:
            report = parse("health", payload)
        except PayloadError as exc:
            return f"ignored: {exc}"
        where = split(topic, self._prefix)
        if where is None or (where[0], where[1]) != (report["regency"], report["device_id"]):
            return "ignored: health does not belong to the topic it came on"
        self._store.record_health(report)
        return "fleet"

    def _problem(self, topic: str, event: dict) -> str | None:
        """Why a well-formed event may not be stored: wrong topic, unknown device, not intact."""
        where = split(topic, self._prefix)
        if where is None or (where[0], where[1]) != (event["regency"], event["device_id"]):
            return "event does not belong to the topic it came on"
        key = self._registry.get(event["device_id"])
        return "unknown device" if key is None else check_event(event, key)

    def _reject(self, topic: str, problem: str, payload: bytes) -> str:
        self.rejected += 1
        log.warning("rejected a message on %s: %s", topic, problem)
        self._store.reject(topic, problem, payload)
        return f"rejected: {problem}"


def resend_requests(
    store: EventStore,
    central_private_key,
    prefix: str = DEFAULT_PREFIX,
    heads: dict[str, int] | None = None,
) -> list[tuple[str, bytes]]:
    """Signed ``resend`` commands (topic, payload) for every sequence gap in the store.

    ``heads`` (device id -> last seq, e.g. from health reports) also covers events missing at
    the end of a device's stream, which no gap can show.
    """
    devices = store.devices()
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
                out.append((topic, sign_command(central_private_key, device_id, "resend", args)))
    return out
