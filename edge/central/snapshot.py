"""Take the README's screenshot of the dashboard: ``python -m edge.central.snapshot``.

Seeds the demo country (:mod:`edge.central.demo`) into a temporary store, serves the dashboard
on a free port, logs in with headless chromium (selenium, Debian's ``chromium`` and
``chromium-driver``) and saves the page as a PNG. Needs the ``dev`` extra.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from edge.central import demo
from edge.central.server import ServerThread, free_port
from edge.central.store import CentralStore
from edge.central.web import create_app


def chromium(width: int, height: int):
    """Headless chromium driven through Debian's chromium-driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.central.snapshot", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--path", default="/?round=2026-12", help="page to capture")
    parser.add_argument("--size", default="1440x820", help="window size WxH")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory(prefix="edge-snapshot-") as tmp:
        store = CentralStore(Path(tmp) / "central.sqlite")
        demo.seed(store, Path(tmp) / "terminals")
        demo.demo_users(store)
        server = ServerThread(create_app(store), port=free_port())
        server.start()
        driver = chromium(width, height)
        try:
            driver.get(server.url + "login")
            driver.find_element(By.ID, "username").send_keys("demo")
            driver.find_element(By.ID, "password").send_keys(demo.DEMO_PASSWORD)
            driver.find_element(By.ID, "submit").click()
            driver.get(server.url.rstrip("/") + args.path)
            time.sleep(1.0)  # let the live indicator connect
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
            server.stop()
            store.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
