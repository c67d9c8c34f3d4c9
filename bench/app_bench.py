"""Dashboard benchmark: time from ``python app.py`` to a usable page, and from clicking Merge to rendered plots.

Starts ``python app.py`` as a subprocess (pinned to ``--cpus``, default the first two cores, with a fresh data
folder so nothing is cached), then drives headless Chromium (playwright):

* start → page interactive (``page_rendered_s``: the UI is rendered; a Merge clicked now waits for the zoo) and
  → page usable (``usable_page_s``: the zoo is loaded and listed, a merge starts at once); the time the server
  first answers is reported too.  The browser is started before the app (a user's browser is already open);
* Merge → plots: from the click until every figure of the run (agreement histogram, per-layer heatmap, Jaccard,
  density, accuracy, normalized accuracy) shows drawn traces; repeated ``--merges`` times (the first after start
  may also wait for the baseline evaluation running in the background).

    python bench/app_bench.py                        # demo zoo, 2 CPU cores, targets 10 s and 5 s
    python bench/app_bench.py --zoo path/to/zoo --merges 5 --method ties
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ("histogram", "layers", "jaccard", "density", "accuracy", "normalized")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
RENDERED = ("(ids => ids.every(id => document.querySelectorAll(`#plot-${id} .js-plotly-plot .trace, "
            "#plot-${id} .js-plotly-plot .hm image`).length > 0))")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def choose_method(page, title: str) -> None:
    page.click("#method input")
    page.locator("#method").get_by_role("option", name=title, exact=True).click()


def run(args) -> dict:
    from playwright.sync_api import sync_playwright

    data = Path(tempfile.mkdtemp(prefix="mergescope-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--zoo", args.zoo, "--data-dir", str(data)]
    if args.cpus and shutil.which("taskset"):
        command = ["taskset", "-c", args.cpus] + command
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    out: dict = {"zoo": args.zoo, "cpus": args.cpus, "method": args.method}
    with sync_playwright() as pw:  # the user's browser is already open: start it before the app
        browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(args.timeout * 1000)
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(url, process, args.timeout)
            out["server_up_s"] = time.perf_counter() - start
            page.goto(url)
            page.wait_for_selector("#merge-btn")
            out["page_rendered_s"] = time.perf_counter() - start
            page.wait_for_function("document.querySelector('#status')?.innerText.includes('Loaded')")
            out["usable_page_s"] = time.perf_counter() - start
            if args.method:
                choose_method(page, args.method)
            merges = []
            for _ in range(args.merges):
                before = page.inner_text("#run-summary")
                tic = time.perf_counter()
                page.click("#merge-btn")
                page.wait_for_function(f"document.querySelector('#run-summary').innerText !== {before!r}")
                page.wait_for_function(RENDERED, arg=list(PLOTS))
                merges.append(time.perf_counter() - tic)
            if args.screenshot:
                page.screenshot(path=args.screenshot, full_page=True)
            out["merge_to_plots_s"] = merges
            out["merge_to_plots_median_s"] = statistics.median(merges)
            out["run_summary"] = page.inner_text("#run-summary").splitlines()[0]
            browser.close()
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
            shutil.rmtree(data, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default=str(ROOT / "assets" / "demo-zoo"))
    parser.add_argument("--cpus", default="0,1", help="taskset CPU list for the app ('' for no pinning)")
    parser.add_argument("--merges", type=int, default=3)
    parser.add_argument("--method", default="", help="method title in the dropdown (default: the app's default)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--screenshot", default="", help="save a full-page screenshot after the last merge")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=1))
    verdict = [f"interactive page {result['page_rendered_s']:.2f} s, zoo loaded {result['usable_page_s']:.2f} s "
               "(target < 10 s)",
               f"merge → plots median {result['merge_to_plots_median_s']:.2f} s, first "
               f"{result['merge_to_plots_s'][0]:.2f} s (target < 5 s)"]
    print("; ".join(verdict))


if __name__ == "__main__":
    main()
