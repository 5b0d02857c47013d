"""Screenshot the MLflow run list of a sweep in headless Chromium: how docs/mlflow_runs.png was made.

It does what README's "Then open the MLflow UI" steps say, by hand: switch the sidebar to **Model
training**, open the experiment, show the `rayexp.verdict` tags as columns, expand the parent run.
Not part of the test suite (it needs a browser): install Debian's Chromium and Playwright's Python
package, whose own browser download needs a network this project does not assume, then run

    apt-get install chromium && pip install playwright
    python docs/screenshot_runs.py --backend-store-uri sqlite:///mlflow.db --experiment quickstart

It starts ``mlflow ui`` on loopback itself and stops it afterwards.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request

import mlflow
from playwright.sync_api import sync_playwright

# Chromium on a machine without a network: no background connections, no sandbox as root
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TAGS = ("rayexp.verdict", "rayexp.verdict.score", "rayexp.verdict.margin")


def _serve(store: str, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        ["mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(120):
        if server.poll() is not None:  # it could not bind: something else holds the port
            sys.exit(f"mlflow ui exited (is 127.0.0.1:{port} taken? try --port)")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    sys.exit(f"mlflow ui did not answer on 127.0.0.1:{port}")


def _widen(page, header: str, by: int) -> None:
    """Drag the right edge of a column header: names and tag keys are cut at ~16 characters."""
    cell = page.get_by_text(header, exact=True).first.locator("xpath=ancestor::*[@role='columnheader'][1]")
    box = cell.bounding_box()
    x, y = box["x"] + box["width"] - 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + by, y, steps=10)
    page.mouse.up()


def shoot(store: str, experiment: str, out: str, port: int, chromium: str) -> None:
    found = mlflow.MlflowClient(store).get_experiment_by_name(experiment)
    if found is None:
        sys.exit(f"no experiment {experiment!r} in {store}")
    server = _serve(store, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1600, "height": 430})
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{found.experiment_id}")
            page.wait_for_timeout(5000)
            tip = page.get_by_role("button", name="Got it")  # MLflow 3's GenAI tour, over everything
            if tip.count():
                tip.first.click()
            page.get_by_text("Model training", exact=True).first.click()
            page.wait_for_timeout(3000)
            page.get_by_role("button", name="Close").first.click()  # the assistant panel
            page.get_by_role("button", name="Columns").click()
            page.wait_for_timeout(800)
            for name in ("Dataset", "Source", "Models"):  # empty for every rayexp run
                page.get_by_text(name, exact=True).last.click()
            for name in TAGS:
                page.get_by_placeholder("Search columns").fill(name)
                page.wait_for_timeout(500)
                page.get_by_text(name, exact=True).last.click()
            page.keyboard.press("Escape")
            page.wait_for_timeout(800)
            parent = page.get_by_text(f"{experiment}__", exact=False).first.bounding_box()
            page.mouse.click(parent["x"] - 30, parent["y"] + parent["height"] / 2)  # expand the trials
            page.wait_for_timeout(2000)
            _widen(page, "Run Name", 200)
            for name in TAGS[1:]:
                _widen(page, name, 60)
            page.wait_for_timeout(500)
            page.screenshot(path=out)
            browser.close()
    finally:
        server.terminate()
        server.wait()
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend-store-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--out", default="docs/mlflow_runs.png")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    shoot(args.backend_store_uri, args.experiment, args.out, args.port, args.chromium)


if __name__ == "__main__":
    main()
