"""Shared fixtures: the real test faces and models, and one way to make each test double.

Clocks, identities, central's key, ledgers and gpiozero's mock pins are made here and nowhere
else; plain helpers (``pay``, ``FakeClock``, ``unavailable``) live in ``support.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero import Device
from gpiozero.pins.mock import MockFactory
from support import DEVICE_ID, FACES_DIR, MODELS_DIR, REGENCY, T0, VIDEO, FakeClock

from edge.keys import DeviceIdentity, public_pem
from edge.ledger.store import Ledger


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """The labelled face photos of ../shared/faces; tests skip when they are absent."""
    if not (FACES_DIR / "manifest.csv").is_file():
        pytest.skip(f"test faces not found at {FACES_DIR} (set EDGE_FACES_DIR)")
    return FACES_DIR


@pytest.fixture(scope="session")
def face_video() -> Path:
    """A real clip of a live face (bona fide sequence); skip when absent."""
    if not VIDEO.is_file():
        pytest.skip(f"test video not found at {VIDEO}")
    return VIDEO


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Models built by `make models`; a missing build is an error, not a skip."""
    if not (MODELS_DIR / "manifest.json").is_file():
        pytest.fail(f"models not built at {MODELS_DIR}: run `make models`")
    return MODELS_DIR


@pytest.fixture(scope="session")
def engine(models_dir: Path):
    """The real face engine on the built models, one thread, loaded once for the session."""
    from edge.config import Config
    from edge.vision.pipeline import FaceEngine

    cfg = Config()
    cfg.models.threads = 1
    cfg.models.dir = str(models_dir)
    return FaceEngine.from_config(cfg)


# -- clocks, keys, ledgers and pins every test builds the same way ---------------------------


@pytest.fixture
def clock() -> FakeClock:
    """A fake wall clock standing still at :data:`support.T0` until the test moves it."""
    return FakeClock(T0)


@pytest.fixture(scope="session")
def identity() -> DeviceIdentity:
    """The device identity tests share when any key will do (made once, in memory)."""
    return DeviceIdentity.generate()


@pytest.fixture
def make_identity():
    """Make another device identity: in memory, or loaded/created in ``keys_dir`` on disk
    (for code that reads the keys itself, e.g. the daemon or a child process)."""

    def make(keys_dir: Path | None = None) -> DeviceIdentity:
        if keys_dir is None:
            return DeviceIdentity.generate()
        return DeviceIdentity.load_or_create(keys_dir)

    return make


@pytest.fixture(scope="session")
def central_key() -> Ed25519PrivateKey:
    """Central's Ed25519 key, the one that signs bundles and commands."""
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def central_pem(central_key) -> bytes:
    """The public half of :func:`central_key` as the terminal is given it (PEM)."""
    return public_pem(central_key.public_key())


@pytest.fixture
def registry_of(tmp_path, central_key, central_pem):
    """``registry_of({device_id: (regency, identity)})``: a RegistryStore with central's signed
    registry of those devices installed, as claims sync and the consumer are given one."""
    from edge.registry import DeviceEntry, RegistryStore, sign_registry

    def make(devices: dict, path=None) -> RegistryStore:
        entries = [DeviceEntry(d, r, i.device_public_pem()) for d, (r, i) in devices.items()]
        store = RegistryStore(path or tmp_path / "registry.json", central_pem)
        store.install(sign_registry(central_key, entries, 1))
        return store

    return make


@pytest.fixture
def rogue_key() -> Ed25519PrivateKey:
    """An Ed25519 key nobody trusts: whatever it signs must be refused."""
    return Ed25519PrivateKey.generate()


@pytest.fixture
def make_ledger(tmp_path, identity, clock):
    """Open a real :class:`Ledger`; every ledger opened through it is closed after the test.

    Defaults: ``tmp_path/ledger.sqlite``, the shared identity, ``edge-test-0001`` in regency
    3171 and the test's fake clock. Opening the same path again is a restart.
    """
    opened: list[Ledger] = []

    def make(
        path: Path | None = None,
        identity: DeviceIdentity = identity,
        device_id: str = DEVICE_ID,
        regency: str = REGENCY,
        clock=clock,
    ) -> Ledger:
        led = Ledger(path or tmp_path / "ledger.sqlite", identity, device_id, regency, clock=clock)
        opened.append(led)
        return led

    yield make
    for led in opened:
        led.close()  # closing twice is harmless: a test may have closed it already


@pytest.fixture
def ledger(make_ledger) -> Ledger:
    """A fresh ledger with every default of :func:`make_ledger`."""
    return make_ledger()


@pytest.fixture
def mock_factory():
    """gpiozero's MockFactory as the default pin factory for one test, as gpiozero's own
    tests do it: the real default path (``Device.pin_factory``) on mock pins, reset after."""
    saved = Device.pin_factory
    Device.pin_factory = MockFactory()
    try:
        yield Device.pin_factory
    finally:
        Device.pin_factory.reset()
        Device.pin_factory = saved
