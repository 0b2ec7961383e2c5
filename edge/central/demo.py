"""Demo data for the dashboard: a few regencies of terminals with real, signed ledgers.

``seed`` makes terminals in three provinces, registers their manifests, records payouts and
refusals over the last hours in each terminal's own ledger, and feeds every event through the
reference consumer's checks (signature, chain), exactly as events from a broker would be. One
terminal is offline with a full outbox and an untrusted clock; one household is paid twice.
``make run`` (edge/demo.py) and the screenshot (``edge.central.snapshot``) use it.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from edge.central.auth import add_user
from edge.central.manifest import FORMAT, register_manifest
from edge.central.store import CentralStore
from edge.events import canonical
from edge.keys import DeviceIdentity
from edge.ledger.store import Ledger
from edge.mqtt.client import BrokerSettings
from edge.mqtt.consumer import Consumer, DeviceRegistry
from edge.privacy import household_ref

log = logging.getLogger(__name__)

ROUND = "2026-12"
AMOUNT = 300_000
DEMO_PASSWORD = "demo-password"
# regency -> [(distribution point, terminals, households per terminal)]
COUNTRY = {
    "3171": [("Kantor Pos Tebet", 2, 60), ("Balai Desa Cipete", 1, 45)],
    "3172": [("Kantor Pos Jatinegara", 2, 55)],
    "3273": [("Kantor Pos Bandung", 1, 70), ("Kelurahan Cibeunying", 1, 40)],
    "3578": [("Kantor Pos Surabaya", 2, 50)],
}
REFUSALS = ("no_match", "no_face", "poor_quality", "spoof", "already_paid", "bad_qr")


class _Clock:
    """A wall clock the seeding moves forward, so the demo's payouts spread over hours."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def demo_users(store: CentralStore) -> dict[str, str]:
    """Logins for the demo: user -> what it may see. The password is ``DEMO_PASSWORD``."""
    users = {
        "demo": ("national", None, True),
        "dki": ("province", "31", False),
        "jaksel": ("regency", "3171", False),
    }
    for name, (role, scope, ids) in users.items():
        add_user(store, name, DEMO_PASSWORD, role, scope, ids)
    return {name: f"{role} {scope or ''}".strip() for name, (role, scope, _) in users.items()}


def seed(
    store: CentralStore,
    root: Path,
    now: float | None = None,
    seed_: int = 7,
    registry: DeviceRegistry | None = None,
) -> Consumer:
    """Fill ``store`` with the demo country; returns the consumer that fed it (``registry``,
    if given, learns every demo terminal's key, so more terminals can be added later)."""
    now = time.time() if now is None else now
    rng = random.Random(seed_)
    root.mkdir(parents=True, exist_ok=True)
    registry = registry if registry is not None else DeviceRegistry()
    consumer = Consumer(BrokerSettings(tls=False), store, registry)
    terminals = []
    for regency, points in COUNTRY.items():
        for p, (point, count, households) in enumerate(points):
            for t in range(count):
                device_id = f"edge-{regency}-{p + 1}{t + 1}"
                ids = [f"KPM-{regency}-{p + 1}{t + 1:03d}-{n:04d}" for n in range(households)]
                register_manifest(store, _manifest(device_id, regency, point, ids))
                terminals.append((device_id, regency, ids))
    for i, (device_id, regency, ids) in enumerate(terminals):
        # The second terminal also pays the first one's first household: a double payout.
        also = terminals[0][2][:1] if i == 1 else []
        _run_terminal(consumer, registry, root, (device_id, regency, ids, also), now, rng)
    _health(store, terminals, now)
    return consumer


# The demo country's household reference key, one for every regency and the round (a real
# central keeps one per regency and round: edge.enrolment.refkeys).
DEMO_REF_KEY = bytes(range(32))


def _ref(household_id: str) -> str:
    return household_ref(DEMO_REF_KEY, ROUND, household_id)


def _manifest(device_id: str, regency: str, point: str, ids: list[str]) -> dict:
    return {
        "format": FORMAT,
        "round_id": ROUND,
        "device_id": device_id,
        "regency": regency,
        "point_name": point,
        "bundle_id": f"demo-{device_id}",
        "households": [
            {
                "household_id": h,
                "household_ref": _ref(h),
                "amount": AMOUNT,
                "masked_name": f"WARGA {h[-4:]} D***",
            }
            for h in ids
        ],
    }


def _run_terminal(consumer, registry, root, terminal, now, rng) -> None:
    device_id, regency, ids, also = terminal
    identity = DeviceIdentity.generate()
    registry.add(device_id, identity.device_public_pem())
    clock = _Clock(now - 10 * 3600 + rng.uniform(0, 1800))
    share = rng.uniform(0.45, 0.95)
    path = root / f"{device_id}.sqlite"
    path.unlink(missing_ok=True)
    with Ledger(path, identity, device_id, regency, clock=clock) as ledger:
        for household in ids[: int(len(ids) * share)] + also:
            clock.t += rng.uniform(120, 900)
            if clock.t >= now:
                break
            if rng.random() < 0.12:
                ledger.record(
                    rng.choice(REFUSALS),
                    household_id=household,
                    household_ref=_ref(household),
                    round_id=ROUND,
                )
            ledger.record(
                "accepted",
                household_id=household,
                household_ref=_ref(household),
                round_id=ROUND,
                amount=AMOUNT,
                score=0.8,
            )
        for ev in ledger.events():
            consumer.handle(f"bansos/v1/{regency}/{device_id}/event", canonical(ev))


def _health(store: CentralStore, terminals, now: float) -> None:
    for i, (device_id, regency, _) in enumerate(terminals):
        offline = i == len(terminals) - 1
        store.record_status(
            regency, {"device_id": device_id, "state": "offline" if offline else "online"}, now
        )
        report = {
            "device_id": device_id,
            "outbox_depth": 37 if offline else 0,
            "last_seq": None,
            "clock": {"ok": not offline},
            "faults": ["printer", "clock"] if offline else [],
            # A rollout in progress: a third on the new release, one rolled back from it.
            "version": "0.2.0" if i % 3 == 0 else "0.1.0",
            "update": _update(i),
        }
        store.record_terminal_health(regency, report, now - (3600 if offline else 60))


def _update(i: int) -> dict | None:
    if i % 3 == 0:
        return {"version": "0.2.0", "state": "confirmed"}
    if i == 1:
        return {"version": "0.2.0", "state": "rolled_back", "error": "selftest failed: camera"}
    return {"version": "0.2.0", "state": "staged"} if i == 2 else None


def feed_ledger(consumer: Consumer, path: Path, after_seq: int = 0) -> int:
    """Feed a terminal ledger's events newer than ``after_seq``; returns the newest seq fed."""
    from edge.ledger.audit import read_events

    last = after_seq
    for ev in read_events(path):
        if ev["seq"] > after_seq:
            topic = f"bansos/v1/{ev['regency']}/{ev['device_id']}/event"
            consumer.handle(topic, canonical(ev))
            last = ev["seq"]
    return last


class DemoDashboard:
    """The dashboard of ``make run``: the demo country plus the demo terminal, served live."""

    def __init__(self, root: Path, port: int = 8080) -> None:
        from edge.central.server import ServerThread, free_port
        from edge.central.web import create_app

        root.mkdir(parents=True, exist_ok=True)
        (root / "central.sqlite").unlink(missing_ok=True)
        self.store = CentralStore(root / "central.sqlite")
        self.registry = DeviceRegistry()
        self.consumer = seed(self.store, root / "terminals", registry=self.registry)
        self.users = demo_users(self.store)
        self._followed: dict[Path, int] = {}
        app = create_app(self.store)
        try:
            self.server = ServerThread(app, port=port)
            self.server.start()
        except Exception:  # the port is taken: any free one will do for a demo
            self.server = ServerThread(app, port=free_port())
            self.server.start()

    @property
    def url(self) -> str:
        return self.server.url

    def add_terminal(self, bundle: Path, central_pub: Path, device_id: str, device_pub: bytes):
        """Register a terminal's bundle (its entitlements) and trust its device key."""
        from edge.central.manifest import load_manifest

        register_manifest(self.store, load_manifest(bundle, central_pub.read_bytes()))
        self.registry.add(device_id, device_pub)

    def follow(self, ledger: Path) -> None:
        """Feed the ledger's new events, as the terminal's reporter would over MQTT."""
        self._followed[ledger] = feed_ledger(self.consumer, ledger, self._followed.get(ledger, 0))

    def stop(self) -> None:
        self.server.stop()
        self.store.close()


def start_demo_dashboard(root: Path, device_id: str, device_public_pem: bytes, port: int):
    """Serve the dashboard over the demo country and the demo terminal (``make run``)."""
    dashboard = DemoDashboard(root / "central", port)
    dashboard.add_terminal(
        root / "central" / "bundle.json",
        root / "central" / "central_private.pem.pub",
        device_id,
        device_public_pem,
    )
    print(f"\n=== Central dashboard: {dashboard.url} ===")
    logins = ", ".join(f"{name} ({scope})" for name, scope in dashboard.users.items())
    print(f"    log in as {logins}; password {DEMO_PASSWORD}")
    print("    payouts of this demo appear on it live, beside the demo country's terminals")
    return dashboard
