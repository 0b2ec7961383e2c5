"""CameraStream: one thread that owns a camera, keeps only the newest frames and survives faults.

The face pipeline is slower than the camera, so frames must never pile up: the queue is
bounded and drops the oldest frame (counted in ``dropped``). A camera that cannot be opened,
raises, or gives no frame for ``stall_s`` is closed and reopened with exponential back-off;
``on_fault(True)`` is called once when that starts and ``on_fault(False)`` once the first frame
arrives again, so the app can light the fault pattern and report it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.devices.camera import Camera, Frame

log = logging.getLogger(__name__)

# How often an open camera that gave no frame is asked again, until ``stall_s`` has passed.
POLL_S = 0.005


class CameraStream:
    """Reads ``camera`` on a daemon thread into a drop-oldest queue of ``queue_size`` frames.

    ``clock`` (monotonic seconds) times the stall; the reader pauses (polls, backs off) on its
    stop event, so :meth:`stop` cuts a back-off short. A test may pass ``sleep`` (such as
    ``FakeClock.sleep``) to pause on a fake clock instead: the stop is then seen after it.
    """

    def __init__(
        self,
        camera: Camera,
        queue_size: int = 2,
        on_fault: Callable[[bool], None] | None = None,
        *,
        stall_s: float = 3.0,
        backoff_s: tuple[float, float] = (0.5, 10.0),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.camera = camera
        self.on_fault = on_fault
        self.stall_s = stall_s
        self.backoff_min, self.backoff_max = backoff_s
        self.dropped = 0
        self.frames = 0
        self.faults = 0
        self.faulted = False
        self.finished = False
        self.last_error = ""
        self._queue: deque[Frame] = deque(maxlen=queue_size)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clock = clock
        self._sleep = sleep

    def start(self) -> CameraStream:
        """Start the reader thread (it opens the camera); returns self."""
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="camera-stream", daemon=True)
        self._thread.start()
        return self

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest frame still queued, waiting up to ``timeout``; None if none came."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._queue or self.finished or self._stop.is_set(), timeout
            )
            return self._queue.popleft() if self._queue else None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the camera."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("camera: reader thread did not stop in %.1f s", timeout)
            self._thread = None

    def __enter__(self) -> CameraStream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- reader thread --------------------------------------------------------------------

    def _push(self, frame: Frame) -> None:
        with self._cond:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1  # deque(maxlen) drops the oldest on append
            self._queue.append(frame)
            self.frames += 1
            self._cond.notify()

    def _set_fault(self, faulted: bool, why: str = "") -> None:
        if faulted:
            self.last_error = why
        if faulted == self.faulted:
            return
        self.faulted = faulted
        if faulted:
            self.faults += 1
            log.warning("camera: %s fault: %s", self.camera.name, why)
        else:
            log.info("camera: %s recovered", self.camera.name)
        if self.on_fault is not None:
            try:
                self.on_fault(faulted)
            except Exception:  # a broken callback must not kill the camera thread
                log.exception("camera: on_fault callback failed")

    def _close_camera(self) -> None:
        try:
            self.camera.close()
        except Exception as exc:
            log.warning("camera: close failed: %s", exc)

    def _pause(self, seconds: float) -> bool:
        """Pause ``seconds`` (cut short by :meth:`stop` unless a ``sleep`` was given); True if stopped."""
        if self._sleep is None:
            return self._stop.wait(seconds)
        self._sleep(seconds)
        return self._stop.is_set()

    def _run(self) -> None:
        backoff = self.backoff_min
        is_open = False
        last_frame = self._clock()
        while not self._stop.is_set():
            problem = ""
            if not is_open:
                try:
                    self.camera.open()
                    is_open = True
                    last_frame = self._clock()
                except Exception as exc:
                    problem = f"cannot open: {exc}"
            if is_open and not problem:
                try:
                    frame = self.camera.read()
                except Exception as exc:
                    problem = f"read failed: {exc}"
                else:
                    if frame is not None:
                        last_frame = self._clock()
                        backoff = self.backoff_min
                        self._set_fault(False)
                        self._push(frame)
                        continue
                    if self.camera.finished:
                        break
                    if self._clock() - last_frame <= self.stall_s:
                        self._pause(POLL_S)
                        continue
                    problem = f"no frame for {self.stall_s:.1f} s"
            self._set_fault(True, problem)
            if is_open:
                self._close_camera()
                is_open = False
            if self._pause(backoff):
                break
            backoff = min(backoff * 2, self.backoff_max)
        self._close_camera()
        with self._cond:
            self.finished = self.camera.finished
            self._cond.notify_all()
