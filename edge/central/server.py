"""Serving the dashboard: uvicorn on a thread, and the live feed every open page shares."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool

from edge.central.store import CentralStore
from edge.errors import CentralError

log = logging.getLogger(__name__)


class ChangeFeed:
    """One poll of the store's change token per process, shared by every open page.

    However many pages are open, the store sees one cheap query every ``poll_s``; each page's
    stream waits on a condition for the version to move.
    """

    def __init__(self, store: CentralStore, poll_s: float) -> None:
        self.store = store
        self.poll_s = poll_s
        self.version = 0
        self._changed: asyncio.Condition | None = None
        self._task: asyncio.Task | None = None

    async def current(self) -> int:
        """The version now; starts the poller on the server's event loop at first use."""
        if self._task is None:
            self._changed = asyncio.Condition()
            token = await run_in_threadpool(self.store.change_token)
            self._task = asyncio.create_task(self._poll(token))
        return self.version

    async def wait(self, seen: int, timeout: float) -> int:
        """The version once it differs from ``seen``, or after ``timeout`` seconds."""
        changed = self._changed
        assert changed is not None, "current() first"
        async with changed:
            try:
                await asyncio.wait_for(changed.wait_for(lambda: self.version != seen), timeout)
            except TimeoutError:
                pass
        return self.version

    async def _poll(self, token: tuple) -> None:
        changed = self._changed
        assert changed is not None
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                now = await run_in_threadpool(self.store.change_token)
            except Exception as exc:  # the database is down: pages keep their last view
                log.warning("live feed: %s", exc)
                continue
            if now != token:
                token = now
                async with changed:
                    self.version += 1
                    changed.notify_all()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving the dashboard on a background thread (``make run``, tests)."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 8080) -> None:
        import uvicorn

        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="dashboard", daemon=True)
        self.url = f"http://{host}:{port}/"

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; raise CentralError when it is not up within ``timeout`` seconds."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise CentralError(f"the dashboard did not start on {self.url}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Ask uvicorn to exit (open live streams are closed after a second) and wait."""
        self._server.should_exit = True
        self._thread.join(10)
