"""Device side: the ledger outbox goes to the broker; commands and claims come back.

The ledger is the durable outbox (paho keeps unacknowledged messages in RAM only). One worker
thread owns every ledger call: it publishes outbox rows in seq order at QoS 1, keeps the
``MQTTMessageInfo`` of each, and marks a row sent only once that info reports the PUBACK. A
message whose PUBACK never came (broker down, network lost, daemon restarted) stays unsent in
the ledger and goes out again; the consumer drops duplicates by ``event_id``.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.errors import PayloadError
from edge.events import canonical, iso_utc
from edge.mqtt.claims import ClaimsSync
from edge.mqtt.client import BrokerSettings, connect_async, make_client
from edge.mqtt.reports import health_report, status_message
from edge.mqtt.schemas import validate
from edge.mqtt.topics import Topics, result_topic, split
from edge.registry import FILE_NAME as REGISTRY_FILE
from edge.registry import RegistryStore, registry_topic

log = logging.getLogger(__name__)

DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600
REJECTED_RETRY_S = 30.0


class Reporter:
    """Publishes the ledger outbox, status and health; receives commands and claims.

    ``commands`` is an optional ``CommandProcessor``; ``health_source`` an optional callable
    returning the app's part of the health report (model and bundle ids, faults, ...);
    ``registry`` the installed device registry claims sync checks synced payouts against.
    """

    def __init__(
        self,
        cfg,
        ledger,
        identity,
        commands=None,
        *,
        health_source=None,
        window: int = 64,
        reconnect_max_s: float = 60.0,
        session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
        clock=time.time,
        registry: RegistryStore | None = None,
    ) -> None:
        self._cfg = cfg
        self._ledger = ledger
        self._identity = identity
        self._commands = commands
        self._health_source = health_source
        self._window = window
        self._session_expiry_s = session_expiry_s
        self._clock = clock
        self.topics = Topics(cfg.device.regency, cfg.device.id, cfg.mqtt.topic_prefix)
        self._claims = ClaimsSync(
            ledger, cfg.device.id, cfg.device.regency, cfg.mqtt.topic_prefix, registry
        )
        self._settings = BrokerSettings.from_config(cfg.mqtt)
        self._client = make_client(
            cfg.device.id,
            self._settings,
            reconnect_max_s=reconnect_max_s,
            # No head in the will: it is written now and published whenever the link drops.
            will=(self.topics.status, self._status("offline", "lost", head=False)),
        )
        # As many PUBACKs outstanding as the window (the broker's Receive Maximum still caps it).
        self._client.max_inflight_messages_set(window)
        if commands is not None:
            commands.register("resend", self.resend_action)
            commands.register("health", self.health_action)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._connected = False
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # event_id -> MQTTMessageInfo; the info object, not the mid, tells us about the PUBACK
        # (the PUBACK can arrive before publish() has even returned the mid).
        self._inflight: dict[str, mqtt.MQTTMessageInfo] = {}
        self._failed_acks: dict[int, object] = {}
        self._held: dict[str, float] = {}
        self._started = time.monotonic()
        self._next_health = 0.0
        self.published = 0
        self.acked = 0

    @classmethod
    def from_config(
        cls,
        cfg,
        ledger,
        identity,
        actions: dict | None = None,
        health_source=None,
        clock_guard=None,
    ) -> Reporter:
        """The reporter the daemon runs: commands enabled when central's public key is known.

        ``actions`` are the app's command actions (``bundle``, ``config``, ``reprint``);
        ``health`` and ``resend`` are the reporter's own. Central's key is the file
        ``bundle.central_public_key``; without it every command is ignored (nothing to verify
        with). A configured key file that cannot be read is a KeyFileError. While
        ``clock_guard`` distrusts the clock, every command is refused.
        """
        from edge.keys import load_central_public_pem

        commands = registry = None
        pem = load_central_public_pem(cfg.bundle.central_public_key)
        if pem is not None:
            from edge.mqtt.processor import CommandProcessor

            commands = CommandProcessor(
                pem, cfg.device.id, cfg.state_path, dict(actions or {}), clock_guard=clock_guard
            )
            registry = RegistryStore(cfg.state_path / REGISTRY_FILE, pem)
        else:
            log.warning("no central public key configured: remote commands are disabled")
        return cls(cfg, ledger, identity, commands, health_source=health_source, registry=registry)

    # -- public API -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the broker has accepted our connection."""
        return self._connected

    @property
    def claims(self) -> ClaimsSync:
        """Claims sync (its counters and the reasons of its last refusals)."""
        return self._claims

    def start(self) -> None:
        """Connect in the background (retrying with back-off) and start the worker thread."""
        if self._thread is not None:
            return
        self._started = time.monotonic()
        self._next_health = time.monotonic() + self._cfg.mqtt.health_interval_s
        connect_async(self._client, self._settings, self._session_expiry_s)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-reporter", daemon=True)
        self._thread.start()
        log.info("reporter started for %s:%s", self._settings.host, self._settings.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Say ``offline``, stop the worker and disconnect; unsent rows stay in the ledger."""
        # Give PUBACKs already on their way a moment, so a clean stop re-sends little.
        deadline = time.monotonic() + timeout / 2
        while self._connected and self._inflight and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._connected:
            info = self._client.publish(
                self.topics.status, self._status("offline", "stopped"), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=min(timeout, 2.0))
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        self._connected = False
        log.info("reporter stopped, %d event(s) acknowledged", self.acked)

    def wake(self) -> None:
        """Tell the reporter that new outbox rows are waiting (called after Ledger.record)."""
        self._wake.set()

    def publish_health(self, payload: dict | None = None) -> None:
        """Queue a health report now; ``payload`` overrides or adds fields."""
        self._inbox.put(("health", None, dict(payload or {})))
        self._wake.set()

    def health_action(self, args: dict) -> dict:
        """A ``health`` command action for CommandProcessor: report health right away."""
        self.publish_health({"reason": "requested"})
        return {"queued": True}

    def resend_action(self, args: dict) -> dict:
        """A ``resend`` command action: publish ledger events ``from_seq..to_seq`` again.

        Central asks for this when it sees a sequence gap (a message the broker acknowledged
        but lost, e.g. a broker restart that dropped a shared subscription). The events are
        already marked sent, so these re-sends are RAM-only; central asks again if needed.
        Runs on the worker thread, like every ledger call.
        """
        lo, hi = int(args["from_seq"]), int(args["to_seq"])
        sent = 0
        for event in self._ledger.events():
            if event["seq"] > hi:
                break
            if event["seq"] >= lo and not event.get("pruned"):
                # A pruned event (edge prune) has only its chain fields left to give.
                self._client.publish(self.topics.event, canonical(event), qos=1)
                sent += 1
        log.info("re-sent %d event(s) of seq %d..%d on request", sent, lo, hi)
        return {"resent": sent}

    # -- paho callbacks (paho's network thread) --------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        self._connected = True
        log.info("connected to broker (session present: %s)", flags.session_present)
        client.publish(self.topics.status, self._status("online"), qos=1, retain=True)
        # Subscriptions are (re)made on every connect, as paho advises; noLocal keeps our own
        # events from coming back to us through the regency filter.
        subs = [(self.topics.regency_events, SubscribeOptions(qos=1, noLocal=True))]
        if self._commands is not None:
            subs.append((self.topics.commands, SubscribeOptions(qos=1, noLocal=True)))
        if self._claims.registry is not None:
            # Retained: a terminal that connects gets the newest registry at once.
            subs.append((registry_topic(self.topics.prefix), SubscribeOptions(qos=1)))
        client.subscribe(subs)
        self._next_health = 0.0  # a fresh health report on every (re)connection
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected and not self._stopping.is_set():
            log.warning("disconnected from broker: %s", reason_code)
        self._connected = False

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if reason_code.is_failure:
            if len(self._failed_acks) > 1000:
                self._failed_acks.clear()
            self._failed_acks[mid] = reason_code
        self._wake.set()

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic.endswith("/event"):
            self._inbox.put(("claim", msg.topic, msg.payload))
        elif msg.topic == registry_topic(self.topics.prefix):
            self._inbox.put(("registry", msg.topic, msg.payload))
        elif msg.topic.startswith(self.topics.base + "/cmd/"):
            if msg.retain:
                log.warning("ignoring a retained command on %s", msg.topic)
                return
            self._inbox.put(("cmd", msg.topic, msg.payload))
        self._wake.set()

    # -- worker thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            try:
                self._step()
            except Exception:  # keep reporting alive whatever one step hit
                log.exception("reporter step failed")
                self._stopping.wait(1.0)
        try:
            self._collect_acks()
        except Exception:
            log.exception("reporter could not record the last acknowledgements")

    def _step(self) -> None:
        self._drain_inbox()
        self._collect_acks()
        if self._connected:
            self._fill_window()
            now = time.monotonic()
            if now >= self._next_health:
                self._next_health = now + self._cfg.mqtt.health_interval_s
                self._send_health({})

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, topic, data = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "claim":
                self._claims.handle(topic, data)
            elif kind == "cmd":
                self._handle_command(topic, data)
            elif kind == "health":
                self._send_health(data)
            elif kind == "registry":
                self._claims.install_registry(data)

    def _collect_acks(self) -> None:
        for event_id, info in list(self._inflight.items()):
            if not info.is_published():
                continue
            del self._inflight[event_id]
            failure = self._failed_acks.pop(info.mid, None)
            if failure is not None:
                # Said once per event: an ACL mistake would otherwise repeat every 30 s.
                level = logging.DEBUG if event_id in self._held else logging.ERROR
                log.log(level, "broker refused event %s: %s; retrying later", event_id, failure)
                self._held[event_id] = time.monotonic() + REJECTED_RETRY_S
                continue
            self._ledger.mark_sent(event_id)
            self._held.pop(event_id, None)
            self.acked += 1

    def _fill_window(self) -> None:
        room = self._window - len(self._inflight)
        if room <= 0:
            return
        now = time.monotonic()
        for item in self._ledger.outbox(limit=self._window + len(self._inflight)):
            if room <= 0:
                break
            if item.event_id in self._inflight or self._held.get(item.event_id, 0) > now:
                continue
            info = self._client.publish(self.topics.event, item.payload, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                # Not queued by paho at all: the row stays unsent and is tried on the next step.
                log.warning("publish of event %s failed: %s", item.event_id, info.rc)
                break
            self._inflight[item.event_id] = info
            self.published += 1
            room -= 1

    def _handle_command(self, topic: str, payload: bytes) -> None:
        where = split(topic, self.topics.prefix)
        if where is None or self._commands is None:
            return
        result = self._commands.handle(topic, payload)
        result["sig"] = base64.b64encode(self._identity.sign(canonical(result))).decode("ascii")
        self._client.publish(result_topic(topic), canonical(result), qos=1)

    def _send_health(self, extra: dict) -> None:
        report = health_report(
            self._cfg,
            self._ledger,
            ts=iso_utc(self._clock()),
            uptime_s=time.monotonic() - self._started,
            registry_version=self._claims.registry_version(),
        )
        if self._health_source is not None:
            report.update(self._health_source())
        report.update(extra)
        try:
            # The compiled validator; the reference one (and its imports) only words a failure.
            validate("health", report)
        except PayloadError as exc:
            log.error("health report not sent, it breaks the schema: %s", exc)
            return
        if self._connected:
            self._client.publish(self.topics.health, canonical(report), qos=0)

    def _status(self, state: str, reason: str | None = None, head: bool = True) -> bytes:
        ts = iso_utc(self._clock())
        return status_message(self._cfg, self._ledger, state, ts, reason, head)
