"""LED and buzzer signals per outcome, on gpiozero.

One RGB LED (or three separate LEDs on the same three pins) and an active buzzer tell the
recipient and the officer what happened without a screen. ``show(pattern)`` never blocks: LED
blinking runs on a small thread, the buzzer uses gpiozero's own background ``beep``.

kind "gpiozero" drives real pins (lgpio on a Pi 4/5); kind "mock" runs the same code on
gpiozero's ``MockFactory`` so every path runs on a laptop; kind "log" only keeps a history.
Histories are bounded (the last ``HISTORY`` patterns or pin changes): the daemon runs for months.

:class:`Indicator` is the policy on top: which pattern an outcome gets, how long it stays, and
what shows between recipients.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from edge.errors import DeviceError

log = logging.getLogger(__name__)

Colour = tuple[int, int, int]
OFF: Colour = (0, 0, 0)
RED: Colour = (1, 0, 0)
GREEN: Colour = (0, 1, 0)
BLUE: Colour = (0, 0, 1)
YELLOW: Colour = (1, 1, 0)
MAGENTA: Colour = (1, 0, 1)


@dataclass(frozen=True)
class Pattern:
    """LED steps (colour, seconds) played once and held on the last step, or repeated; and an
    optional buzzer code (on seconds, off seconds, count)."""

    steps: tuple[tuple[Colour, float], ...]
    repeat: bool = False
    beep: tuple[float, float, int] | None = None


def _steady(colour: Colour, beep: tuple[float, float, int] | None = None) -> Pattern:
    return Pattern(((colour, 0.0),), False, beep)


def _blink(colour: Colour, on: float, off: float, beep=None) -> Pattern:
    return Pattern(((colour, on), (OFF, off)), True, beep)


# Colours carry the meaning for sighted people and beep codes for everyone else: one short
# beep is the only "good" sound, anything longer or repeated means "see the officer".
PATTERNS: dict[str, Pattern] = {
    "off": _steady(OFF),
    "ready": _steady(BLUE),
    "busy": _blink(BLUE, 0.15, 0.15),
    "accepted": _steady(GREEN, beep=(0.2, 0.0, 1)),
    "refused": _steady(RED, beep=(0.2, 0.2, 2)),
    "already_paid": _steady(YELLOW, beep=(0.1, 0.1, 3)),
    "spoof": _blink(RED, 0.1, 0.1, beep=(1.0, 0.0, 1)),
    # The letter was tried too often: the officer, not the camera, decides what happens next.
    "too_many_attempts": _blink(YELLOW, 0.3, 0.3, beep=(0.6, 0.2, 3)),
    "fault": _blink(RED, 0.5, 0.5, beep=(0.6, 0.3, 2)),
    "no_network": _blink(MAGENTA, 1.0, 1.0),
    # Supervised override (edge/payout/override.py): yellow means "staff at work"; each step
    # that needs the next card has its own rhythm, and one short beep per card accepted.
    "override_claim": Pattern(((YELLOW, 0.5), (BLUE, 0.5)), True, (0.1, 0.0, 1)),
    "override_second": _blink(YELLOW, 0.5, 0.5, beep=(0.1, 0.0, 1)),
    "override_reason": _blink(YELLOW, 0.15, 0.15, beep=(0.1, 0.1, 2)),
}


HISTORY = 256  # patterns (and mock pin changes) remembered, for tests, selftest and the demo


class Signals:
    """History-only signals (kind "log"); the base of the gpiozero implementation."""

    def __init__(self) -> None:
        self._recent: deque[str] = deque(maxlen=HISTORY)
        self.current: str | None = None

    @property
    def history(self) -> list[str]:
        """The last ``HISTORY`` patterns shown, oldest first."""
        return list(self._recent)

    def show(self, pattern: str) -> None:
        """Switch to ``pattern`` (see ``PATTERNS``); returns at once."""
        if pattern not in PATTERNS:
            raise ValueError(f"unknown signal pattern {pattern!r}")
        self._recent.append(pattern)
        self.current = pattern
        log.debug("signal %s", pattern)
        self._play(PATTERNS[pattern])

    def _play(self, p: Pattern) -> None:
        pass

    def close(self) -> None:
        """Turn everything off and release the pins."""


class GpioSignals(Signals):
    """RGB LED (or three LEDs) and a buzzer on gpiozero devices."""

    def __init__(
        self,
        red_pin: int,
        green_pin: int,
        blue_pin: int,
        buzzer_pin: int,
        *,
        separate: bool = False,
        active_high: bool = True,
        pin_factory=None,
    ) -> None:
        super().__init__()
        self.led: Any = None
        self.buzzer: Any = None
        try:
            # Inside the try: with GPIOZERO_PIN_FACTORY=lgpio the backend is imported by the
            # first device, and lgpio's import itself can fail (see lgpio_workdir).
            from gpiozero import RGBLED, Buzzer, LEDBoard

            if separate:
                self.led = LEDBoard(
                    red_pin,
                    green_pin,
                    blue_pin,
                    pwm=False,
                    active_high=active_high,
                    pin_factory=pin_factory,
                )
            else:
                # on/off colours only: software PWM would cost CPU the face pipeline needs
                self.led = RGBLED(
                    red_pin,
                    green_pin,
                    blue_pin,
                    pwm=False,
                    active_high=active_high,
                    pin_factory=pin_factory,
                )
            self.buzzer = Buzzer(buzzer_pin, pin_factory=pin_factory)
        except Exception as exc:  # GPIOZeroError, and OSError/ImportError from the backend
            if self.led is not None:
                self.led.close()
            raise DeviceError(
                f"signals: cannot use GPIO pins: {type(exc).__name__}: {exc}"
            ) from exc
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _set(self, colour: Colour) -> None:
        self.led.value = colour

    def _halt_led(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(2.0)
            if self._thread.is_alive():
                log.warning("signals: LED thread did not stop")
            self._thread = None
        self._stop = threading.Event()

    def _run(self, steps: tuple[tuple[Colour, float], ...], repeat: bool, stop) -> None:
        while True:
            for colour, seconds in steps:
                self._set(colour)
                if stop.wait(seconds):
                    return
            if not repeat:
                return

    def _play(self, p: Pattern) -> None:
        with self._lock:
            self._halt_led()
            if len(p.steps) == 1 and not p.repeat:
                self._set(p.steps[0][0])
            else:
                self._thread = threading.Thread(
                    target=self._run, args=(p.steps, p.repeat, self._stop), daemon=True
                )
                self._thread.name = "signals-led"
                self._thread.start()
            if p.beep is None:
                self.buzzer.off()  # also stops a beep code still sounding from before
            else:
                on, off, n = p.beep
                self.buzzer.beep(on_time=on, off_time=off, n=n, background=True)

    def close(self) -> None:
        with self._lock:
            self._halt_led()
            for dev in (self.led, self.buzzer):
                try:
                    dev.off()
                    dev.close()
                except Exception as exc:  # closing must not fail a shutdown
                    log.warning("signals: close failed: %s", exc)


def _mock_factory():
    """A ``MockFactory`` whose pins remember only their last ``HISTORY`` changes.

    gpiozero's mock pins append every change to a list for ever; a blinking LED on a daemon
    that runs for months would grow without bound.
    """
    from gpiozero.pins.mock import MockFactory, MockPin, PinState

    class BoundedMockPin(MockPin):
        def clear_states(self) -> None:
            self._last_change = time.monotonic()
            self.states = deque([PinState(0.0, self._state)], maxlen=HISTORY)

    return MockFactory(pin_class=BoundedMockPin)


class FaultedSignals(Signals):
    """Stands in for LED and buzzer that could not be set up: keeps the history, and says why
    in ``fault`` so the daemon reports it (health, selftest) instead of dying in a restart loop.
    """

    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault


def lgpio_workdir(runtime_dir: str | os.PathLike[str] | None = None) -> str:
    """Point lgpio at a writable directory before it is imported, and return it.

    Importing lgpio creates its notification FIFO (``.lgd-nfy*``) in ``$LG_WD``, else in the
    working directory, which is ``/`` and read-only under edge.service (ProtectSystem=strict):
    the import then raises FileNotFoundError. The unit sets LG_WD itself; this covers a daemon
    started any other way. Order: LG_WD, systemd's RUNTIME_DIRECTORY, ``runtime_dir``, /tmp.
    """
    if not os.environ.get("LG_WD"):
        rt = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        os.environ["LG_WD"] = rt or str(runtime_dir or "/tmp")
    return os.environ["LG_WD"]


def make_signals(cfg, pin_factory=None, runtime_dir=None) -> Signals:
    """Build the signals chosen by ``cfg.signals`` (a SignalsConfig).

    ``pin_factory`` overrides gpiozero's; kind "mock" makes a fresh mock factory if none.
    GPIO that cannot be used (pins taken, no gpiochip, the backend fails to import) gives a
    :class:`FaultedSignals` with the reason, logged as an error: a terminal without its LED
    still pays out, and the fault shows in health and selftest.
    """
    if cfg.kind == "log":
        return Signals()
    if cfg.kind == "mock" and pin_factory is None:
        pin_factory = _mock_factory()
    if pin_factory is None:
        lgpio_workdir(runtime_dir)
    try:
        return GpioSignals(
            cfg.red_pin,
            cfg.green_pin,
            cfg.blue_pin,
            cfg.buzzer_pin,
            separate=cfg.led_kind == "separate",
            active_high=cfg.active_high,
            pin_factory=pin_factory,
        )
    except DeviceError as exc:
        log.error("%s; LED and buzzer are off, payouts continue", exc)
        return FaultedSignals(str(exc))


# The outcomes with a pattern of their own; every other outcome is a refusal.
OUTCOME_PATTERNS = {
    "accepted": "accepted",
    "accepted_override": "accepted",
    "already_paid": "already_paid",
    "spoof": "spoof",
    "too_many_attempts": "too_many_attempts",
}
OUTCOME_HOLD_S = 3.0  # an outcome's pattern stays at least this long before idle again


def outcome_pattern(outcome: str) -> str:
    """The pattern that tells the recipient and the officer about ``outcome``."""
    return OUTCOME_PATTERNS.get(str(outcome), "refused")


def idle_pattern(faults: Collection[str], online: bool) -> str:
    """What shows between recipients: ready, or why the terminal is degraded."""
    if faults:
        return "fault"
    if not online:
        return "no_network"
    return "ready"


class Indicator:
    """The LED policy of the daemon, over any ``Signals``.

    An outcome is shown at once and held for the cool-down (at least ``OUTCOME_HOLD_S``), so
    the recipient sees it; then the LED blinks busy during a capture, or shows the idle pattern.
    ``cooldown_s`` is read at each refresh, since central may change it.
    """

    def __init__(
        self,
        signals: Signals,
        cooldown_s: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.signals = signals
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._decided_at = -1e9

    def outcome(self, outcome: str) -> None:
        """Show a decision's pattern, even the same one again: two refusals both beep."""
        self._decided_at = self._clock()
        self.signals.show(outcome_pattern(outcome))

    def refresh(
        self, *, busy: bool, faults: Collection[str], online: bool, guide: str | None = None
    ) -> None:
        """Follow the terminal's state; called at every turn of the frame loop.

        ``guide`` is the step of a supervised override (``claim``, ``second``, ``reason``):
        its pattern shows at once, even over an outcome still held, so staff see each card
        was taken.
        """
        if busy:
            self._switch("busy")
        elif guide is not None:
            self._switch(f"override_{guide}")
        elif self._clock() - self._decided_at >= max(self._cooldown_s(), OUTCOME_HOLD_S):
            self._switch(idle_pattern(faults, online))

    def _switch(self, pattern: str) -> None:
        # Only transitions: re-showing a blink pattern every frame would restart it.
        if self.signals.current != pattern:
            self.signals.show(pattern)
