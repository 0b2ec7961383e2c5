"""A small country for the central tests: terminals with real ledgers, manifests, a consumer.

Every event reaches central the way it does in production, signed by a real ledger and
verified by the reference consumer (``Consumer.handle``); only the broker is left out, which
``test_central_browser.py`` adds back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from support import MATCH, T0, FakeClock, ref_of

from edge.central.manifest import FORMAT, register_manifest
from edge.central.store import CentralStore
from edge.events import canonical
from edge.keys import DeviceIdentity
from edge.ledger.store import Ledger
from edge.mqtt.client import BrokerSettings
from edge.mqtt.consumer import Consumer, DeviceRegistry

ROUND = "2026-12"
AMOUNT = 300_000
# device -> (regency, distribution point, households)
TERMINALS = {
    "edge-a01": ("3171", "Kantor Pos Tebet", 4),
    "edge-a02": ("3171", "Kantor Pos Tebet", 2),
    "edge-b01": ("3171", "Balai Desa Cipete", 3),
    "edge-c01": ("3172", "Kantor Pos Jatinegara", 3),
    "edge-c02": ("3172", "Kantor Pos Jatinegara", 1),
    "edge-d01": ("3273", "Kantor Pos Bandung", 2),
}


def household(device_id: str, n: int) -> str:
    regency = TERMINALS[device_id][0]
    return f"KPM-{regency}-{device_id[-3:]}-{n:04d}"


@dataclass
class World:
    """Central store + consumer, and one real ledger per terminal."""

    store: CentralStore
    root: object
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0, step=1.0))
    ledgers: dict = field(default_factory=dict)
    identities: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.registry = DeviceRegistry()
        self.consumer = Consumer(BrokerSettings(tls=False), self.store, self.registry)

    def terminal(self, device_id: str, register: bool = True) -> Ledger:
        regency, point, count = TERMINALS[device_id]
        identity = DeviceIdentity.generate()
        self.identities[device_id] = identity
        self.registry.add(device_id, identity.device_public_pem())
        self.ledgers[device_id] = Ledger(
            self.root / f"{device_id}.sqlite", identity, device_id, regency, clock=self.clock
        )
        if register:
            register_manifest(self.store, self.manifest(device_id))
        return self.ledgers[device_id]

    def manifest(self, device_id: str, round_id: str = ROUND) -> dict:
        regency, point, count = TERMINALS[device_id]
        return {
            "format": FORMAT,
            "round_id": round_id,
            "device_id": device_id,
            "regency": regency,
            "point_name": point,
            "bundle_id": f"b-{device_id}",
            "households": [
                {
                    "household_id": household(device_id, i),
                    "household_ref": ref_of(household(device_id, i), round_id),
                    "amount": AMOUNT,
                    "masked_name": f"WARGA {i} D***",
                }
                for i in range(1, count + 1)
            ],
        }

    def all_terminals(self) -> None:
        for device_id in TERMINALS:
            self.terminal(device_id)

    def feed(self, event: dict) -> str:
        topic = f"bansos/v1/{event['regency']}/{event['device_id']}/event"
        return self.consumer.handle(topic, canonical(event))

    def pay(
        self, device_id: str, n: int, *, feed: bool = True, round_id: str = ROUND, hh: str = ""
    ) -> dict:
        """Pay household ``n`` of the terminal's manifest (or ``hh``) and feed the event."""
        hid = hh or household(device_id, n)
        ev = self.ledgers[device_id].record(
            "accepted",
            household_id=hid,
            household_ref=ref_of(hid, round_id),
            round_id=round_id,
            amount=AMOUNT,
            **MATCH,
        )
        if feed:
            assert self.feed(ev) == "stored"
        return ev

    def refuse(self, device_id: str, outcome: str = "no_match", n: int = 1) -> dict:
        ev = self.ledgers[device_id].record(
            outcome,
            household_id=household(device_id, n),
            household_ref=ref_of(household(device_id, n)),
            round_id=ROUND,
            score=0.2,
        )
        assert self.feed(ev) == "stored"
        return ev

    def close(self) -> None:
        for led in self.ledgers.values():
            led.close()
        self.store.close()
