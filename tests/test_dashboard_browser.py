"""The dashboard in a real headless Chromium: a 3-node mesh, its block map, a crash.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/system-deps`` installs them);
selenium drives the packaged chromedriver directly, so nothing is downloaded. Set
``SEDMA_SCREENSHOT=PATH`` to also save a screenshot of the healthy mesh under load
(``make screenshots`` does, for the README).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from node.client import Client
from protocol.membership import MembershipConfig
from tests.daemons import wait_for

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (run .ci/system-deps as root)")

#: Worst case from crash to "dead" on every member's view (3 nodes: log10(3) < 1, so the
#: suspicion timeout is at most suspicion_max_timeout_mult x suspicion_mult probe
#: intervals), plus one probe period to notice (stretched up to awareness_max_multiplier
#: times by Lifeguard on a node that finds itself slow: chromium, three daemons and a load
#: thread share two cores here), one dashboard poll, and slack for a loaded machine.
_CFG = MembershipConfig()
FAILURE_DETECTION_BOUND = (_CFG.suspicion_max_timeout_mult * _CFG.suspicion_mult
                           * _CFG.probe_interval + _CFG.awareness_max_multiplier
                           * (2 * _CFG.probe_interval + _CFG.probe_timeout) + 1.0 + 5.0)
HOSTILE_NAME = "<script>window.pwned=1</script>n3"


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1440,1100", "--hide-scrollbars", "--no-proxy-server",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", "--no-first-run",
                "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


def member_rows(driver) -> dict[str, dict]:
    """Member id -> what its table row shows (name, state), read from the rendered DOM in
    one script call (the page redraws every second, so element handles go stale)."""
    return driver.execute_script("""
        const out = {};
        for (const row of document.querySelectorAll('#members tbody tr[data-member-id]')) {
            const cells = row.querySelectorAll('td');
            out[row.dataset.memberId] = {name: cells[0].firstChild.textContent,
                                         state: row.dataset.state, pill: cells[2].innerText};
        }
        return out;""")


def block_map(driver, name: str) -> dict[int, set[str]]:
    """Block index -> names of the nodes the block map marks as holding it."""
    raw = driver.execute_script("""
        const out = {};
        for (const dep of document.querySelectorAll('[data-deployment]')) {
            if (dep.dataset.deployment !== arguments[0]) continue;
            for (const row of dep.querySelectorAll('tr[data-block]'))
                out[row.dataset.block] = [...row.querySelectorAll('td[data-holder]')]
                    .map((c) => c.dataset.holder);
        }
        return out;""", name)
    return {int(k): set(v) for k, v in raw.items()}


def text_of(driver, selector: str) -> str:
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
        selector)


@needs_browser
def test_dashboard_shows_members_block_map_and_a_crash(cluster, tmp_path):
    n1 = cluster.add("n1", extra=["--capacity", "20"])
    n2 = cluster.add("n2", extra=["--capacity", "10"])
    n3 = cluster.add("n3", extra=["--capacity", "10", "--name", HOSTILE_NAME])
    cluster.wait_converged(alive=2, timeout=60)
    ids = {n.id: name for n, name in ((n1, "n1"), (n2, "n2"), (n3, HOSTILE_NAME))}
    w = np.random.default_rng(1).standard_normal((768, 256)).astype(np.float32)
    with Client(n1.socket) as c:
        job = c.deploy("w", w, replicas=2)
        placement = {int(i): {ids[n] for n in nodes} for i, nodes in job["placement"].items()}
        for seed in range(20):
            c.infer("w", np.ones((256, 4), np.float32), seed)
        url = c.status()["dashboard"]
    assert url and url.startswith("http://127.0.0.1:")

    stop = threading.Event()
    load = threading.Thread(target=steady_load, args=(n1.socket, stop), daemon=True)
    load.start()
    driver = browser()
    try:
        driver.get(url)
        rows = wait_for(lambda: (r := member_rows(driver)) and len(r) == 3
                        and all(v["state"] == "alive" for v in r.values()) and r, 30,
                        "three alive members on the dashboard")
        assert {v["name"] for v in rows.values()} == {"n1", "n2", HOSTILE_NAME}
        assert rows[n3.id]["name"] == HOSTILE_NAME        # shown as text...
        assert driver.execute_script("return window.pwned === undefined")   # ...never run
        assert driver.execute_script("return document.scripts.length") == 1   # only app.js
        shown = wait_for(lambda: block_map(driver, "w"), 10, "the block map of w")
        assert shown == placement
        assert text_of(driver, '[data-deployment="w"] .replicas') == "replicas 2/2 live"
        # The jobs table lists the deploy, and the steady load shows up as a rate.
        wait_for(lambda: "deploy" in text_of(driver, "#job-table tbody")
                 and "done" in text_of(driver, "#job-table tbody"), 10, "the deploy job listed")
        wait_for(lambda: float(driver.execute_script(
            "return document.querySelector('#summary .tile:nth-child(3) .v').textContent")
            or 0) > 0, 15, "a non-zero work request rate")

        wanted = os.environ.get("SEDMA_SCREENSHOT")
        if wanted:   # for the README: let the plot fill with a few seconds of load first
            time.sleep(12)
            Path(wanted).parent.mkdir(parents=True, exist_ok=True)
            assert driver.save_screenshot(wanted)

        victim = n3.id
        n3.kill9()
        killed = time.monotonic()
        wait_for(lambda: member_rows(driver)[victim]["state"] == "dead",
                 FAILURE_DETECTION_BOUND, "the dashboard to mark n3 dead")
        took = time.monotonic() - killed
        print(f"n3 marked dead on the dashboard {took:.1f}s after kill -9 "
              f"(bound {FAILURE_DETECTION_BOUND:.0f}s)")
        assert member_rows(driver)[victim]["pill"] == "dead"
        time.sleep(1.5)   # one more poll so the plot and tiles are current
        shot = tmp_path / "dashboard-after-crash.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        stop.set()
        driver.quit()
        load.join(30)


def steady_load(socket: Path, stop: threading.Event) -> None:
    """A few infers a second, so the rates and the plot have something to show."""
    x = np.ones((256, 8), np.float32)
    with Client(socket) as c:
        while not stop.wait(0.15):
            try:
                c.infer("w", x)
            except Exception:   # a holder dying mid-request: the dashboard shows it
                pass
