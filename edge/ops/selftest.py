"""`edge selftest`: is this terminal ready to pay out? One line per check and a verdict.

Run by the technician after provisioning and after any repair, with the service stopped (the
camera and the printer serve one process at a time)::

    sudo systemctl stop edge
    sudo -u edge /opt/edge/venv/bin/edge --config /etc/edge/config.toml selftest
    sudo systemctl start edge

Each check catches its own failure, including a part of the terminal that is not installed,
so one broken piece never hides the state of the others.
"""

from __future__ import annotations

import logging
import platform
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import __version__
from edge.ops.health import collect

if TYPE_CHECKING:
    from edge.keys import DeviceIdentity
    from edge.modelstore import ModelStore
    from edge.vision.pipeline import FaceEngine

log = logging.getLogger(__name__)

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
SLIP_COLUMNS = 32
SIGNAL_CYCLE = (
    "ready", "busy", "accepted", "refused", "already_paid", "spoof", "fault", "no_network", "off",
)  # fmt: skip


@dataclass
class Check:
    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"  {self.status:<4}  {self.name:<8} {self.detail}"


@dataclass
class SelftestReport:
    """Every check in order; ``facts`` feed the diagnostic receipt."""

    device_id: str
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def verdict(self) -> str:
        failed = [c.name for c in self.checks if c.status == FAIL]
        warned = sum(c.status == WARN for c in self.checks)
        if failed:
            return f"SELFTEST FAIL {self.device_id}: {', '.join(failed)} failed"
        return f"SELFTEST PASS {self.device_id}: {len(self.checks)} checks, {warned} warning(s)"

    def render(self) -> str:
        return "\n".join([self.verdict(), *(c.line() for c in self.checks)])

    def get(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)


class Selftest:
    """The checks, sharing what earlier ones loaded (models, identity)."""

    def __init__(
        self,
        cfg,
        *,
        print_receipt: bool = True,
        camera_timeout: float = 10.0,
        dwell: float = 0.4,
        pin_factory: Any = None,
        store: Any = None,
        hw_paths: Any = None,
    ) -> None:
        self.cfg = cfg
        self.print_receipt = print_receipt
        self.camera_timeout = camera_timeout
        self.dwell = dwell
        self.pin_factory = pin_factory
        self.hw_paths = hw_paths  # edge.ops.hardware.Paths: a fake Pi's files in tests
        self.report = SelftestReport(cfg.device.id)
        self._given_store = store  # an already loaded ModelStore (tests, the daemon)
        self.store: ModelStore | None = None
        self.identity: DeviceIdentity | None = None
        self.engine: FaceEngine | None = None

    def run(self) -> SelftestReport:
        steps: list[tuple[str, Callable[[], tuple[str, str]]]] = [
            ("health", self.check_health),
            ("models", self.check_models),
            ("camera", self.check_camera),
            ("signals", self.check_signals),
            ("keys", self.check_keys),
            ("ledger", self.check_ledger),
            ("bundle", self.check_bundle),
            ("broker", self.check_broker),
            ("printer", self.check_printer),  # last: its slip lists every other result
        ]
        steps[-1:-1] = self.hardware_steps()
        for name, step in steps:
            try:
                status, detail = step()
            except ModuleNotFoundError as exc:
                status, detail = FAIL, f"part not installed: {exc.name}"
            except Exception as exc:  # a check must report, never crash the others
                log.debug("selftest %s failed", name, exc_info=True)
                status, detail = FAIL, f"{type(exc).__name__}: {exc}".splitlines()[0]
            self.report.checks.append(Check(name, status, detail))
            log.debug("selftest %s %s", name, status)
        return self.report

    def hardware_steps(self) -> list[tuple[str, Callable[[], tuple[str, str]]]]:
        """The rows of the hardware matrix (edge/ops/hardware.py) that apply here."""
        from edge.ops.hardware import hardware_checks

        def done(status: str, detail: str) -> Callable[[], tuple[str, str]]:
            return lambda: (status, detail)

        try:
            rows = hardware_checks(self.cfg, self.hw_paths)
        except Exception as exc:  # reading /proc or /boot must not stop the selftest
            return [("hardware", done(FAIL, f"{type(exc).__name__}: {exc}"))]
        return [(name, done(status, detail)) for name, status, detail in rows]

    # -- checks --------------------------------------------------------------------------------

    def check_health(self) -> tuple[str, str]:
        h = collect(self.cfg)
        free_mb = h.disk.free_bytes // (1024 * 1024)
        self.report.facts["clock"] = h.clock.now_iso + (" ntp" if h.clock.synced else "")
        self.report.facts["disk"] = f"{free_mb} MB free"
        temp = f", CPU {h.cpu_temp_c:.0f} C" if h.cpu_temp_c is not None else ""
        detail = f"clock {h.clock.now_iso}, {free_mb} MB free{temp}"
        if not h.ok:
            return FAIL, "; ".join(h.problems)
        if h.clock.source not in ("ntp", "rtc"):
            # payouts go on under the stated rule (docs/operations.md, "Time"), but say so
            return (
                WARN,
                f"{detail}, clock not verified ({h.clock.reason}): connect NTP or fit an RTC",
            )
        return PASS, detail

    def check_models(self) -> tuple[str, str]:
        store = self._given_store
        if store is None:
            from edge.modelstore import ModelStore

            store = ModelStore.load(self.cfg.models.dir)
        self.store = store
        name = "embedder_int8" if self.cfg.models.embedder == "int8" else "embedder_dynamic"
        self.report.facts["model"] = store.model_id(name)
        return PASS, f"{len(store.names())} models verified, embedder {store.model_id(name)}"

    def _camera_config(self, tmp: Path):
        """The configured camera; the default folder camera gets a public test portrait."""
        cam = self.cfg.camera
        if cam.kind != "folder" or cam.source:
            return cam, False
        from PIL import Image
        from skimage import data  # public-domain astronaut portrait (NASA), shipped with skimage

        Image.fromarray(data.astronaut()).save(tmp / "astronaut.png")
        return cam.model_copy(update={"source": str(tmp), "loop": True}), True

    def check_camera(self) -> tuple[str, str]:
        from edge.devices.camera import open_camera

        if self.store is not None:
            from edge.vision.pipeline import FaceEngine

            self.engine = FaceEngine(self.store, self.cfg)
        frames = faces = 0
        shape: tuple[int, ...] = ()
        with tempfile.TemporaryDirectory(prefix="edge-selftest-") as tmp:
            cam_cfg, test_image = self._camera_config(Path(tmp))
            camera = open_camera(cam_cfg)
            camera.open()
            focus = ", autofocus continuous" if getattr(camera, "autofocus", False) else ""
            deadline = time.monotonic() + self.camera_timeout
            try:
                while time.monotonic() < deadline:
                    frame = camera.read()
                    if frame is None:
                        if getattr(camera, "finished", False):
                            break
                        continue
                    frames += 1
                    shape = frame.rgb.shape
                    if self.engine is None:
                        break
                    faces = len(self.engine.detect(frame.rgb))
                    if faces:
                        break
            finally:
                camera.close()
        source = "test image" if test_image else cam_cfg.kind
        if frames == 0:
            return FAIL, f"{source}: no frames in {self.camera_timeout:.0f} s"
        seen = f"{source}: {frames} frame(s) {shape[1]}x{shape[0]}{focus}"
        if self.engine is None:
            return FAIL, f"{seen}, no face check: models not verified"
        if not faces:
            return FAIL, f"{seen}, no face found (face the camera)"
        return PASS, f"{seen}, face found"

    def check_signals(self) -> tuple[str, str]:
        from edge.devices.signals import make_signals

        signals = make_signals(self.cfg.signals, pin_factory=self.pin_factory)
        fault = getattr(signals, "fault", None)
        if fault:
            return FAIL, (
                f"{fault}: check the pins in [signals], that the user is in group gpio, "
                "and that LG_WD points to a writable directory"
            )
        try:
            start = len(signals.history)
            for pattern in SIGNAL_CYCLE:
                signals.show(pattern)
                time.sleep(self.dwell)
            shown = signals.history[start:]
        finally:
            signals.close()
        if shown != list(SIGNAL_CYCLE):
            return FAIL, f"patterns shown {shown}"
        watch = " (watch LED, listen for buzzer)" if self.cfg.signals.kind == "gpiozero" else ""
        return PASS, f"{len(shown)} patterns on {self.cfg.signals.kind}{watch}"

    def check_keys(self) -> tuple[str, str]:
        from edge.keys import SIGN_KEY_FILE, DeviceIdentity

        keys = self.cfg.state_path / "keys"
        if not (keys / SIGN_KEY_FILE).is_file():
            # Never create keys here: a terminal without keys was not provisioned.
            return FAIL, f"no device key in {keys}: run provisioning"
        self.identity = identity = DeviceIdentity.load_or_create(keys)
        return PASS, f"device key {identity.sign_fingerprint()}"

    def check_ledger(self) -> tuple[str, str]:
        from edge.ledger.audit import audit_ledger
        from edge.ledger.store import Ledger

        if self.identity is None:
            return FAIL, "no device key to verify with"
        path = self.cfg.state_path / "ledger.sqlite"
        if not path.exists():
            # What the daemon does at its first start; the ledger is empty until then.
            Ledger(path, self.identity, self.cfg.device.id, self.cfg.device.regency).close()
        audit = audit_ledger(path, self.identity.device_public_pem())
        if not audit.ok:
            problems = audit.errors + [f"gap {a}-{b}" for a, b in audit.gaps]
            return FAIL, f"{audit.count} events, {len(problems)} problem(s): {problems[0]}"
        return PASS, f"{audit.count} events verified"

    def check_bundle(self) -> tuple[str, str]:
        from edge.enrolment.store import BundleStore

        if self.identity is None or self.engine is None:
            return FAIL, "needs the device key and the models"
        from edge.keys import load_central_public_pem

        central = load_central_public_pem(self.cfg.bundle.central_public_key)
        if central is None:
            self.report.facts["bundle"] = "-"
            return WARN, "no central public key: bundles cannot be verified"
        store = BundleStore(
            self.cfg.state_path,
            central,
            self.identity,
            self.engine.model_id,
            self.engine.model_sha256,
            device_id=self.cfg.device.id,
        )
        bundle = store.current()
        if bundle is None:
            self.report.facts["bundle"] = "-"
            return WARN, "no valid enrolment bundle installed yet"
        self.report.facts["bundle"] = bundle.bundle_id
        return PASS, f"bundle {bundle.bundle_id}, round {bundle.round_id}"

    def check_broker(self) -> tuple[str, str]:
        m = self.cfg.mqtt
        if not m.enabled:
            self.report.facts["broker"] = "off"
            return SKIP, "mqtt off: events wait in the outbox"
        where = f"{m.host}:{m.port}"
        try:
            with socket.create_connection((m.host, m.port), timeout=3.0):
                pass
        except OSError as exc:
            self.report.facts["broker"] = f"{where} unreachable"
            # The terminal works offline; a missing network is for the technician to know.
            return WARN, f"{where} unreachable: {exc.strerror or exc}"
        self.report.facts["broker"] = f"{where} reachable"
        tls = "" if not m.tls or Path(m.cert_file).is_file() else ", no client certificate yet"
        return (WARN if tls else PASS), f"{where} reachable{tls}"

    def check_printer(self) -> tuple[str, str]:
        from edge.devices.printer import make_printer

        if self.cfg.printer.kind == "none":
            return SKIP, "no printer configured"
        printer = make_printer(self.cfg.printer, self.cfg.state_path)
        try:
            status = printer.status()
            if not status.online:
                return FAIL, f"{self.cfg.printer.kind} printer offline"
            if not self.print_receipt:
                return PASS, f"online, paper {status.paper} (no slip: --no-print)"
            printer.print_diagnostic(self.diagnostic_lines())
        finally:
            printer.close()
        return PASS, f"diagnostic slip printed, paper {status.paper}"

    def diagnostic_lines(self) -> list[str]:
        """What the slip says: identity, versions, what decides, connectivity, clock, disk."""
        from edge.vision.runtime import RUNTIME

        f = self.report.facts
        pairs = [
            ("device", self.cfg.device.id),
            ("regency", self.cfg.device.regency),
            ("edge", f"{__version__} py {platform.python_version()}"),
            ("runtime", RUNTIME),
            ("model", f.get("model", "-")),
            ("bundle", f.get("bundle", "-")),
            ("broker", f.get("broker", "-")),
            ("clock", f.get("clock", "-")),
            ("disk", f.get("disk", "-")),
        ]
        lines = ["SELFTEST"]
        for label, value in pairs:
            # A 58 mm slip has 32 columns: a long value goes on its own line, not wrapped.
            one = f"{label} {value}"
            lines += [one] if len(one) <= SLIP_COLUMNS else [f"{label}:", value]
        lines += [f"{c.status} {c.name}" for c in self.report.checks]
        return lines


def run_selftest(cfg, **kwargs) -> SelftestReport:
    """Run every check for the terminal configured by ``cfg``; see :class:`Selftest`."""
    return Selftest(cfg, **kwargs).run()
