"""Wiring: build every part from the config, run the frame loop, stop cleanly.

No decisions are taken here: `edge.payout.flow` decides and records, the devices signal and print,
the reporter drains the ledger outbox. This module only connects them and keeps time.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from edge.config import Config
from edge.devices.camera import open_camera
from edge.devices.camera_stream import CameraStream
from edge.devices.printer import make_printer
from edge.devices.signals import make_signals
from edge.enrolment.store import BundleStore
from edge.keys import DeviceIdentity, load_central_public_pem
from edge.ledger.store import Ledger
from edge.modelstore import ModelStore
from edge.ops import health, sdnotify
from edge.payout.flow import Decision, Outcome, PayoutFlow
from edge.payout.receipts import ReceiptDesk
from edge.vision.pipeline import FaceEngine, embedder_name

log = logging.getLogger(__name__)

PATTERNS = {
    Outcome.ACCEPTED: "accepted",
    Outcome.ALREADY_PAID: "already_paid",
    Outcome.SPOOF: "spoof",
}
PENDING_RETRY_S = 10.0
OUTCOME_HOLD_S = 3.0  # an outcome's LED stays this long (or the cool-down) before idle again


class App:
    """The terminal daemon."""

    def __init__(self, cfg: Config, *, exit_at_end: bool = True, pin_factory: Any = None) -> None:
        self.cfg = cfg
        self.exit_at_end = exit_at_end
        self.stop_event = threading.Event()
        self.decisions: list[Decision] = []
        state = cfg.state_path
        state.mkdir(parents=True, exist_ok=True)
        # Models first: a missing or corrupt model must stop start-up before anything else opens.
        needed = ["detector", "landmarks", embedder_name(cfg)]
        if cfg.liveness.enabled:
            needed += ["pad_v2", "pad_v1se"]
        self.store = ModelStore.load(cfg.models.dir, required=needed)
        self.engine = FaceEngine(self.store, cfg)
        self.liveness = self._make_liveness()
        self.identity = DeviceIdentity.load_or_create(state / "keys")
        self.ledger = Ledger(
            state / "ledger.sqlite", self.identity, cfg.device.id, cfg.device.regency
        )
        central = load_central_public_pem(cfg.bundle.central_public_key)
        if central is None:
            log.warning("no central public key configured: enrolment bundles cannot be verified")
        self.bundles = BundleStore(
            state,
            central or b"",
            self.identity,
            self.engine.model_id,
            self.engine.model_sha256,
            device_id=cfg.device.id,
        )
        self.flow = PayoutFlow(cfg, self.engine, self.bundles.current, self.ledger, self.liveness)
        self.signals = make_signals(cfg.signals, pin_factory=pin_factory)
        self.printer = make_printer(cfg.printer, state)
        self.desk = ReceiptDesk(cfg, self.printer, self.ledger, self._masked_name)
        self.stream = CameraStream(
            open_camera(cfg.camera),
            cfg.camera.queue_size,
            on_fault=self._camera_fault,
            stall_s=cfg.camera.stall_s,
        )
        self.reporter = self._make_reporter()
        self.clock_guard = health.ClockGuard(cfg.state_path, cfg.device.max_clock_skew_s)
        self.started_at = time.monotonic()
        self._decided_at = -1e9

    # -- construction helpers ----------------------------------------------------------------

    def _make_liveness(self) -> Any:
        if not self.cfg.liveness.enabled:
            log.warning("liveness is off: a photo of a recipient would be accepted")
            return None
        from edge.vision.liveness import LivenessChecker

        return LivenessChecker(self.store, self.cfg.liveness, threads=self.cfg.models.threads)

    def _make_reporter(self) -> Any:
        if not self.cfg.mqtt.enabled:
            log.info("mqtt off: events wait in the ledger outbox")
            return None
        from edge.mqtt.commands import apply_config_changes, bundle_action
        from edge.mqtt.reporter import Reporter

        actions = {
            "bundle": bundle_action(self.bundles),
            "config": lambda args: apply_config_changes(self.cfg, args["set"]),
            "reprint": lambda args: {"printed": self.desk.reprint(args["event_id"])},
        }
        return Reporter.from_config(
            self.cfg, self.ledger, self.identity, actions, health_source=self.health
        )

    def health(self) -> dict[str, Any]:
        """The app's part of the periodic health report."""
        bundle = self.bundles.current()
        faults = []
        if self.stream.faulted:
            faults.append("camera")
        if self.desk.faulted:
            faults.append("printer")
        if self.flow.paused:
            faults.append("clock")
        return {
            **health.collect(self.cfg, self.clock_guard).as_dict(),
            "model_id": self.engine.model_id,
            "bundle_id": bundle.bundle_id if bundle else None,
            "round_id": bundle.round_id if bundle else None,
            "faults": faults,
            "camera_dropped": self.stream.dropped,
            "decisions": len(self.decisions),
        }

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

    def _signal(self, pattern: str) -> None:
        # Only transitions: re-showing a blink pattern every frame would restart it.
        if self.signals.current != pattern:
            self.signals.show(pattern)

    def idle_pattern(self) -> str:
        """What the LED shows between recipients: ready, or why the terminal is degraded."""
        if self.stream.faulted or self.desk.faulted or self.flow.paused:
            return "fault"
        if self.reporter is not None and not self.reporter.connected:
            return "no_network"
        return "ready"

    def _refresh_signal(self) -> None:
        held = time.monotonic() - self._decided_at < max(self.cfg.flow.cooldown_s, OUTCOME_HOLD_S)
        if self.flow.busy:
            self._signal("busy")
        elif not held:
            self._signal(self.idle_pattern())

    # -- loop --------------------------------------------------------------------------------

    def handle(self, decision: Decision) -> None:
        """After the ledger commit: signal, print, report."""
        self.decisions.append(decision)
        self._decided_at = time.monotonic()
        # show(), not _signal(): two refusals in a row must both beep
        self.signals.show(PATTERNS.get(decision.outcome, "refused"))
        self.desk.handle(decision.event)
        if self.flow.debug_crop is not None:
            self._store_debug_crop(decision.event["event_id"], self.flow.debug_crop)
            self.flow.debug_crop = None
        if self.reporter is not None:
            self.reporter.wake()

    def _store_debug_crop(self, event_id: str, crop) -> None:
        import cv2

        folder = self.cfg.state_path / "debug"
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{event_id}.png"
        cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        path.chmod(0o600)
        log.info("debug face crop kept for event %s (flow.store_debug_images is on)", event_id)

    def status_line(self) -> str:
        bundle = self.bundles.current()
        return (
            f"{self.flow.state} decisions={len(self.decisions)} "
            f"outbox={self.ledger.outbox_depth()} bundle={bundle.bundle_id if bundle else '-'}"
        )

    def check_clock(self) -> None:
        """Pause claims while the wall clock cannot be trusted for signing; resume when it can."""
        reading = self.clock_guard.check()
        paused = None if reading.ok else reading.reason
        if paused != self.flow.paused:
            if paused:
                log.error("clock not trusted, payouts paused: %s", paused)
            else:
                log.info("clock trusted again, payouts resumed")
            self.flow.paused = paused

    def run(self) -> int:
        """Run until stopped (SIGTERM/SIGINT) or, for a file source, until it ends."""
        self._install_signal_handlers()
        self.stream.start()
        if self.reporter is not None:
            self.reporter.start()
        self.check_clock()
        self.desk.retry_pending()
        self._signal(self.idle_pattern())
        sdnotify.ready()
        sdnotify.status(self.status_line())
        log.info("ready in %.2f s", time.monotonic() - self.started_at)
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
                self._refresh_signal()
                # Pinging only from here means a stuck frame loop stops the pings and systemd
                # restarts us; a faulted camera does not, since the stream retries on its own.
                if now - last_ping >= ping_every:
                    sdnotify.watchdog()
                    last_ping = now
                if now - last_status >= 5.0:
                    if not self.flow.busy:
                        self.check_clock()
                    sdnotify.status(self.status_line())
                    last_status = now
                if self.desk.faulted and now - last_retry >= PENDING_RETRY_S:
                    self.desk.retry_pending()
                    last_retry = now
        finally:
            self.close()
        return 0

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def close(self) -> None:
        sdnotify.stopping()
        self.stream.stop()
        if self.reporter is not None:
            self.reporter.stop()
        self.signals.show("off")
        self.signals.close()
        self.printer.close()
        depth = self.ledger.outbox_depth()
        self.ledger.close()
        log.info("stopped: %d decision(s), outbox depth %d", len(self.decisions), depth)
