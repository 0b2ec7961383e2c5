"""Terminal health at central: a subscription to every terminal's ``health`` and ``status``.

The consumer stores events only. This monitor keeps, per terminal, the latest health report
(outbox depth, newest ledger seq, clock trusted, faults) and presence (``online``, or the last
will ``offline``) in ``c_terminals``, which the dashboard's terminal page reads. It is a plain
(not shared) subscription: every dashboard instance wants every report, and ``status`` is
retained, so a fresh start knows every terminal's presence at once. Health and status are not
signed; the broker's ACL lets a terminal publish only under its own id, and a payload whose
``device_id`` is not the topic's is dropped.
"""

from __future__ import annotations

import json
import logging
import os
import threading

from edge.central.store import CentralStore
from edge.errors import PayloadError
from edge.mqtt.client import BrokerSettings, connect_async, make_client
from edge.mqtt.schemas import parse
from edge.mqtt.topics import DEFAULT_PREFIX, split

log = logging.getLogger(__name__)


class HealthMonitor:
    """Stores the latest ``health`` and ``status`` of every terminal."""

    def __init__(
        self,
        settings: BrokerSettings,
        store: CentralStore,
        *,
        prefix: str = DEFAULT_PREFIX,
        client_id: str | None = None,
    ) -> None:
        self._store = store
        self._prefix = prefix
        cid = client_id or f"central-health-{os.uname().nodename}-{os.getpid()}"[:64]
        self._settings = settings
        self.subscribed = threading.Event()
        self._client = make_client(cid, settings)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self.subscribed.set()
        self._client.on_message = self._on_message
        self.stored = 0
        self.dropped = 0

    def start(self) -> None:
        """Connect in the background (paho retries) and start its network thread."""
        connect_async(self._client, self._settings, 0)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the health monitor: %s", reason_code)
            return
        client.subscribe([(f"{self._prefix}/+/+/health", 0), (f"{self._prefix}/+/+/status", 1)])

    def _on_message(self, client, userdata, msg) -> None:
        try:
            self.handle(msg.topic, bytes(msg.payload))
        except Exception:  # a database hiccup must not stop the network thread
            log.exception("could not store a report from %s", msg.topic)

    def handle(self, topic: str, payload: bytes) -> bool:
        """Store one health or status message; False when it was dropped."""
        where = split(topic, self._prefix)
        if where is None or where[2] not in ("health", "status"):
            return self._drop(topic, "not a health or status topic")
        regency, device_id, leaf = where
        try:
            body = parse(leaf, payload)
        except (PayloadError, json.JSONDecodeError) as exc:
            return self._drop(topic, str(exc))
        if body["device_id"] != device_id:
            return self._drop(topic, "device id is not the topic's")
        if leaf == "health":
            self._store.record_terminal_health(regency, body)
        else:
            self._store.record_status(regency, body)
        self.stored += 1
        return True

    def _drop(self, topic: str, why: str) -> bool:
        self.dropped += 1
        log.warning("dropped a report on %s: %s", topic, why)
        return False
