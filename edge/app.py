"""Wiring: build every part from the config, run the frame loop, stop cleanly.

No decisions and no policies live here: `edge.payout.flow` decides and records,
`edge.devices.signals.Indicator` chooses what the LED shows, `edge.ops.health.ClockPause`
pauses payouts on an untrusted clock, `edge.mqtt.actions.terminal_actions` holds the remote
commands, `edge.payout.receipts` prints, the reporter drains the ledger outbox. This module only
connects them and keeps time.
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge.config import Config
from edge.devices.camera import open_camera
from edge.devices.camera_stream import CameraStream
from edge.devices.printer import make_printer
from edge.devices.signals import Indicator, make_signals
from edge.enrolment.store import BundleStore
from edge.keys import DeviceIdentity, load_central_public_pem
from edge.ledger.store import Ledger
from edge.modelstore import ModelStore
from edge.ops import health, sdnotify
from edge.ops.clock import TimeKeeper
from edge.ota.agent import UpdateAgent
from edge.payout.decision import Decision
from edge.payout.flow import PayoutFlow
from edge.payout.receipts import ReceiptDesk
from edge.ports import CropSink, Liveness, Printer, Signals
from edge.vision.pipeline import FaceEngine, embedder_name

if TYPE_CHECKING:
    from edge.mqtt.reporter import Reporter
    from edge.payout.evidence import EvidenceStore
    from edge.payout.override import SupervisedOverride

log = logging.getLogger(__name__)

PENDING_RETRY_S = 10.0
STATUS_EVERY_S = 5.0

DecisionListener = Callable[[Decision], None]


class App:
    """The terminal daemon.

    ``on_decision(listener)`` subscribes to every decision after it was signalled, printed
    and handed to the reporter (tests and the demo listen; the daemon keeps only a count).
    """

    def __init__(self, cfg: Config, *, exit_at_end: bool = True, pin_factory: Any = None) -> None:
        self.cfg = cfg
        self.exit_at_end = exit_at_end
        self.stop_event = threading.Event()
        self.decided = 0
        self._listeners: list[DecisionListener] = []
        state = cfg.state_path
        state.mkdir(parents=True, exist_ok=True)
        # Models first: a missing or corrupt model must stop start-up before anything else opens.
        needed = ["detector", "landmarks", embedder_name(cfg)]
        if cfg.liveness.enabled:
            needed += ["pad_v2", "pad_v1se"]
        self.store = ModelStore.load(cfg.models.dir, required=needed)
        self.engine = FaceEngine(self.store, cfg)
        self.identity = DeviceIdentity.load_or_create(state / "keys")
        # Which time each event is signed with, and why (edge/ops/clock.py).
        self.time_keeper = TimeKeeper(state, cfg.device.max_clock_skew_s)
        self.ledger = Ledger(
            state / "ledger.sqlite",
            self.identity,
            cfg.device.id,
            cfg.device.regency,
            stamp=self.time_keeper.ledger_stamp,
        )
        self.time_keeper.last_event = self.ledger.last_ts
        self.bundles = self._make_bundle_store()
        self.evidence: EvidenceStore | None = None
        self.override = self._make_override()
        self.time_keeper.central_time = self._bundle_issued_at
        self.flow = PayoutFlow(
            cfg,
            self.engine,
            self.bundles.current,
            self.ledger,
            self._make_liveness(),
            crops=self._make_crop_sink(),
            override=self.override,
        )
        self.signals: Signals = make_signals(cfg.signals, pin_factory=pin_factory)
        self.indicator = Indicator(self.signals, cooldown_s=self._cooldown_s)
        self.printer: Printer = make_printer(cfg.printer, state)
        self.desk = ReceiptDesk(cfg, self.printer, self.ledger, self._masked_name)
        self.stream = CameraStream(
            open_camera(cfg.camera),
            cfg.camera.queue_size,
            on_fault=self._camera_fault,
            stall_s=cfg.camera.stall_s,
        )
        self.ota = UpdateAgent(cfg)
        self._ota_pause: str | None = None
        self.clock_guard = self.time_keeper
        self.clock_pause = health.ClockPause(self.time_keeper, self.flow)
        self.reporter = self._make_reporter()

    # -- construction helpers ----------------------------------------------------------------

    def _make_liveness(self) -> Liveness | None:
        if not self.cfg.liveness.enabled:
            log.warning("liveness is off: a photo of a recipient would be accepted")
            return None
        from edge.vision.liveness import LivenessChecker

        return LivenessChecker(self.store, self.cfg.liveness, threads=self.cfg.models.threads)

    def _make_bundle_store(self) -> BundleStore:
        central = load_central_public_pem(self.cfg.bundle.central_public_key)
        if central is None:
            log.warning("no central public key configured: enrolment bundles cannot be verified")
        return BundleStore(
            self.cfg.state_path,
            central or b"",
            self.identity,
            self.engine.model_id,
            self.engine.model_sha256,
            device_id=self.cfg.device.id,
            # validity windows on the defended time: a wall clock days slow after an outage
            # must not make the round's bundle look "not yet valid"
            clock=self.time_keeper.now,
        )

    def _make_override(self) -> SupervisedOverride | None:
        central = load_central_public_pem(self.cfg.bundle.central_public_key)
        if not self.cfg.override.enabled or central is None:
            return None  # without central's key no badge can be checked
        from edge.payout.evidence import EvidenceStore
        from edge.payout.override import SupervisedOverride

        if self.cfg.override.evidence:
            self.evidence = EvidenceStore(
                self.cfg.state_path / "evidence", self.cfg.override.evidence_retention_days
            )
            self.evidence.purge()
        return SupervisedOverride(
            self.cfg.override, self.ledger, central, self.bundles.current, evidence=self.evidence
        )

    def _make_crop_sink(self) -> CropSink | None:
        if not self.cfg.flow.store_debug_images:
            return None
        from edge.payout.debug_crops import DebugCrops

        return DebugCrops(self.cfg.state_path / "debug")

    def _make_reporter(self) -> Reporter | None:
        if not self.cfg.mqtt.enabled:
            log.info("mqtt off: events wait in the ledger outbox")
            return None
        from edge.mqtt.actions import terminal_actions
        from edge.mqtt.reporter import Reporter

        actions = terminal_actions(self.cfg, self.bundles, self.desk, self.ledger)
        if self.evidence is not None:
            actions["evidence"] = self.evidence.command
        actions["update"] = self.ota.action
        try:
            return Reporter.from_config(
                self.cfg,
                self.ledger,
                self.identity,
                actions,
                health_source=self.health,
                clock_guard=self.clock_guard,
            )
        except (OSError, ssl.SSLError) as exc:
            # A terminal provisioned before its client certificate arrived must still pay out:
            # events wait in the ledger outbox and the LED shows "no network" until a restart
            # with the TLS files in place.
            log.error("mqtt not started, events wait in the outbox: %s", exc)
            return None

    # -- what the parts ask of each other ----------------------------------------------------

    def _cooldown_s(self) -> float:
        return self.cfg.flow.cooldown_s

    def _bundle_issued_at(self) -> float | None:
        # A verified bundle's issued_at was signed by central: a lower bound of the true time.
        bundle = self.bundles.current()
        return bundle.issued_at.timestamp() if bundle else None

    def _masked_name(self, household_id: str) -> str | None:
        bundle = self.bundles.current()
        household = bundle.households.get(household_id) if bundle else None
        return household.masked_name if household else None

    def _camera_fault(self, faulted: bool) -> None:
        # Called on the camera thread: the LED follows at the loop's next turn (<= 0.5 s);
        # central hears of it now rather than at the next periodic health report.
        log.warning("camera %s", "fault" if faulted else "recovered")
        if self.reporter is not None:
            self.reporter.publish_health({"reason": "camera fault" if faulted else "camera back"})

    def faults(self) -> list[str]:
        """The parts that stop payouts or receipts now: camera, printer, clock."""
        found = []
        if self.stream.faulted:
            found.append("camera")
        if self.desk.faulted:
            found.append("printer")
        if self.flow.paused and self.flow.paused != self._ota_pause:
            found.append("clock")
        if getattr(self.signals, "fault", None):  # FaultedSignals: GPIO could not be set up
            found.append("signals")
        return found

    @property
    def online(self) -> bool:
        """False while MQTT is on and the broker is out of reach, or its client did not start."""
        if self.reporter is None:
            return not self.cfg.mqtt.enabled
        return self.reporter.connected

    def health(self) -> dict[str, Any]:
        """The app's part of the periodic health report."""
        bundle = self.bundles.current()
        return {
            **health.collect(self.cfg, self.clock_guard).as_dict(),
            "model_id": self.engine.model_id,
            "bundle_id": bundle.bundle_id if bundle else None,
            "round_id": bundle.round_id if bundle else None,
            "faults": self.faults(),
            "camera_dropped": self.stream.dropped,
            "decisions": self.decided,
            **self.ota.health(),
        }

    def status_line(self) -> str:
        bundle = self.bundles.current()
        return (
            f"{self.flow.state} decisions={self.decided} "
            f"outbox={self.ledger.outbox_depth()} bundle={bundle.bundle_id if bundle else '-'}"
        )

    # -- loop --------------------------------------------------------------------------------

    def on_decision(self, listener: DecisionListener) -> None:
        """Call ``listener(decision)`` after each decision has been handled."""
        self._listeners.append(listener)

    def handle(self, decision: Decision) -> None:
        """After the ledger commit: signal, print, report, tell the listeners."""
        self.decided += 1
        self.indicator.outcome(decision.outcome)
        self.desk.handle(decision.event)
        if self.reporter is not None:
            self.reporter.wake()
        for listener in self._listeners:
            listener(decision)

    def _refresh_signal(self) -> None:
        guide = self.override.guide if self.override is not None else None
        self.indicator.refresh(
            busy=self.flow.busy, faults=self.faults(), online=self.online, guide=guide
        )

    def _start(self) -> None:
        self._install_signal_handlers()
        self.stream.start()
        if self.reporter is not None:
            self.reporter.start()
        self.clock_pause.check()
        self.desk.retry_pending()
        self._refresh_signal()
        if self.ota.news and self.reporter is not None:
            self.reporter.publish_health({"reason": "update"})
        sdnotify.ready()
        sdnotify.status(self.status_line())
        log.info("ready in %.2f s (since the process started)", sdnotify.process_age_s())

    def run(self) -> int:
        """Run until stopped (SIGTERM/SIGINT) or, for a file source, until it ends."""
        self._start()
        last_retry = last_status = last_ping = time.monotonic()
        interval = sdnotify.watchdog_interval()
        ping_every = interval / 2 if interval else 1.0
        try:
            while not self.stop_event.is_set():
                frame = self.stream.get(timeout=0.5)
                if frame is not None:
                    decision = self.flow.on_frame(frame.rgb)
                    if decision is not None:
                        self.handle(decision)
                elif self.stream.finished and not self.flow.busy and self.exit_at_end:
                    log.info("camera source ended")
                    break
                now = time.monotonic()
                self._update_pause()
                self._refresh_signal()
                # Pinging only from here means a stuck frame loop stops the pings and systemd
                # restarts us; a faulted camera does not, since the stream retries on its own.
                if now - last_ping >= ping_every:
                    sdnotify.watchdog()
                    last_ping = now
                if now - last_status >= STATUS_EVERY_S:
                    self.clock_pause.check()
                    sdnotify.status(self.status_line())
                    last_status = now
                if self.desk.faulted and now - last_retry >= PENDING_RETRY_S:
                    self.desk.retry_pending()
                    last_retry = now
        finally:
            self.close()
        return 0

    def _update_pause(self) -> None:
        # A staged release is handed to the installer only between captures; claims then
        # pause until the installer stops the daemon (see edge/ota/agent.py).
        reason = self.ota.poll(self.flow.busy)
        if reason and self.flow.paused != reason:
            self.flow.pause(reason)  # also after a clock check changed the pause
        elif not reason and self._ota_pause:
            self.flow.pause(self.clock_pause.reason)
        self._ota_pause = reason

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def close(self) -> None:
        sdnotify.stopping()
        self.ota.close()
        self.stream.stop()
        if self.reporter is not None:
            self.reporter.stop()
        self.signals.show("off")
        self.signals.close()
        self.printer.close()
        depth = self.ledger.outbox_depth()
        self.ledger.close()
        log.info("stopped: %d decision(s), outbox depth %d", self.decided, depth)
