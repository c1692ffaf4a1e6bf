"""/metrics and the dashboard's JSON on real daemons: parsed with prometheus_client's own
parser, the counters move by exactly the work done; the token guards a non-loopback
dashboard; a non-loopback dashboard without a token refuses to start."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.client import Client, DaemonError
from tests.daemons import run_cli, wait_for

TOKEN = "metrics-token-0123456789abcdef"


def fetch(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(url: str, token: str | None = None) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from a parsed /metrics page."""
    status, text = fetch(url + "metrics", token)
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("sedma_"), family.name
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of ``name`` over the series whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items()
               if n == name and set(labels.items()) <= set(lab))


def test_counters_move_with_the_work_done(cluster, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    n1 = cluster.add("n1", extra=["--capacity", "10", "--http", "0.0.0.0:0",
                                  "--http-token", str(token)])
    n2 = cluster.add("n2", extra=["--capacity", "10"])
    cluster.wait_converged(alive=1)
    shown = n1.status()["dashboard"]
    assert shown.startswith("http://127.0.0.1:")     # a wildcard bind shows an openable address
    port = shown.rstrip("/").rsplit(":", 1)[1]
    url1 = f"http://127.0.0.1:{port}"
    url2 = n2.status()["dashboard"]

    # Not loopback: the token is required on every path, including unknown ones.
    assert fetch(url1 + "/metrics")[0] == 401
    assert fetch(url1 + "/api/snapshot")[0] == 401
    assert fetch(url1 + "/no/such/page")[0] == 401
    assert fetch(url1 + "/no/such/page", TOKEN)[0] == 404
    assert fetch(url2 + "no/such/page")[0] == 404            # loopback: no token needed
    url1 += "/"

    wait_for(lambda: total(scrape(url1, TOKEN), "sedma_members", state="alive") == 2, 20,
             "both members alive in n1's metrics")
    before = [scrape(url1, TOKEN), scrape(url2)]
    w = np.random.default_rng(0).standard_normal((512, 128)).astype(np.float32)
    a = np.ones((64, 32), np.float32)
    with Client(n1.socket) as c:
        job = c.deploy("w", w, replicas=2)
        blocks = len(job["placement"])
        for seed in range(5):
            c.infer("w", np.ones((128, 2), np.float32), seed)
        with pytest.raises(DaemonError):
            c.infer("nothing-here", np.ones((128, 2), np.float32))
        c.matmul(a, np.ones((32, 8), np.float32))
    after = [scrape(url1, TOKEN), scrape(url2)]

    def moved(name: str, node: int = 0, **labels: str) -> float:
        return total(after[node], name, **labels) - total(before[node], name, **labels)

    assert moved("sedma_requests_total", kind="infer", outcome="ok") == 5
    assert moved("sedma_requests_total", kind="infer", outcome="error") == 1
    assert moved("sedma_requests_total", kind="deploy", outcome="ok") == 1
    assert moved("sedma_request_duration_seconds_count", kind="infer") == 6
    assert moved("sedma_request_duration_seconds_bucket", kind="infer", le="+Inf") == 6
    assert moved("sedma_request_duration_seconds_sum", kind="infer") > 0
    assert total(after[0], "sedma_jobs_total", kind="deploy", state="done") == 1
    assert total(after[0], "sedma_jobs_total", kind="matmul", state="done") == 1
    assert total(after[0], "sedma_job_duration_seconds_count", kind="matmul") == 1
    # Every block is programmed on two holders and read once per infer, somewhere.
    assert moved("sedma_crossbar_programs_total") + moved("sedma_crossbar_programs_total", 1) \
        == 2 * blocks
    assert moved("sedma_crossbar_reads_total") + moved("sedma_crossbar_reads_total", 1) \
        == 5 * blocks
    assert moved("sedma_crossbar_programmed_bytes_total") > 0
    assert moved("sedma_compute_busy_seconds_total") > 0
    assert moved("sedma_compute_tasks_total") > 0
    assert moved("sedma_link_bytes_total", direction="sent") > w.nbytes / 2
    assert moved("sedma_link_messages_total", direction="received") > 0
    # gossip is counted apart from the work the links also carried
    assert total(before[0], "sedma_gossip_messages_total", direction="sent") > 0
    assert total(before[1], "sedma_gossip_messages_total", direction="received") > 0
    assert moved("sedma_gossip_messages_total", direction="received") \
        < moved("sedma_link_messages_total", direction="received")
    assert total(after[0], "sedma_memory_used_bytes") > 0
    assert total(after[0], "sedma_memory_budget_bytes") == 2 << 30
    assert total(after[0], "sedma_links", kind="tcp") == 1

    # The dashboard's JSON shows the same deployment and work.
    import json
    snap = json.loads(fetch(url1 + "api/snapshot", TOKEN)[1])
    (dep,) = snap["deployments"]
    assert dep["name"] == "w" and dep["replicas_live"] == dep["replicas_wanted"] == 2
    assert [b["index"] for b in dep["blocks"]] == sorted(int(i) for i in job["placement"])
    assert {m["name"] for m in snap["members"]} == {"n1", "n2"}
    assert snap["jobs"]["jobs_by_state"] == {"done": 2}
    assert snap["jobs"]["request_failures"] == 1
    wait_for(lambda: json.loads(fetch(url1 + "api/history", TOKEN)[1]), 5, "a history point")


def test_non_loopback_dashboard_without_token_refuses_to_start(tmp_path):
    r = run_cli("daemon", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
                "--http", "0.0.0.0:0", timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--http-token" in r.stderr
    assert not (tmp_path / "d" / "sedma.sock").exists()


def test_status_prints_the_url_and_an_explicit_address_in_use_fails_the_start(cluster, tmp_path):
    n1 = cluster.add("n1", extra=["--capacity", "10"])
    status = n1.status()
    url = status["dashboard"]
    assert status["loops"]["dashboard"]["running"]        # its sampler is supervised
    printed = run_cli("status", "--socket", str(n1.socket))
    assert f"dashboard {url}\n" in printed.stdout
    taken = url.removeprefix("http://").rstrip("/")
    r = run_cli("daemon", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d2"),
                "--capacity", "10", "--http", taken, timeout=60)
    assert r.returncode == 1
    assert "cannot serve the dashboard on" in r.stderr and "Traceback" not in r.stderr
