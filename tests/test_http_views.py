"""The dashboard's pure parts with fakes: the time series, link totals that survive closed
links, the deployments view's replica health, and percentiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from compute.partition import Block, PartitionPlan
from node.http import views
from node.http.collector import LinkTotals
from node.http.history import History
from node.metrics import Histogram, Metrics, LATENCY_BUCKETS
from node.net.session import SessionStats


def test_history_points_count_what_happened_since_the_last_point():
    m = Metrics()
    h = History(points=3)
    for t in (10.2, 10.4, 10.6):
        m.request_done("infer", 0.002, True)
        m.recent_requests[-1].at = t
    m.request_done("status", 5.0, True)          # polls are not work: not plotted
    m.completions.extend([10.1, 10.9])
    p = h.sample(m, now_mono=11.0, now_wall=1000.0)
    assert p.requests_per_s == 3 and p.completions_per_s == 2 and p.latency_p50_ms == 2.0
    q = h.sample(m, now_mono=13.0, now_wall=1002.0)
    assert q.requests_per_s == 0 and q.latency_p50_ms is None
    for i in range(5):
        h.sample(m, now_mono=14.0 + i)
    assert len(h.as_list()) == 3                  # a fixed ring


def test_link_totals_keep_the_traffic_of_closed_links():
    totals = LinkTotals()
    a = SimpleNamespace(stats=SessionStats(100, 50, 2, 1), link=SimpleNamespace(kind="tcp"))
    b = SimpleNamespace(stats=SessionStats(10, 5, 1, 1), link=SimpleNamespace(kind="tcp"))
    c = SimpleNamespace(stats=SessionStats(7, 7, 7, 7), link=SimpleNamespace(kind="ice-relay"))
    assert totals.update([a, b, c]) == {"tcp": [110, 55, 3, 2], "ice-relay": [7, 7, 7, 7]}
    a.stats.sent_bytes += 900                     # traffic after the last look, then closed
    assert totals.update([b, c])["tcp"] == [1010, 55, 3, 2]
    assert totals.update([]) == {"tcp": [1010, 55, 3, 2], "ice-relay": [7, 7, 7, 7]}


def test_histogram_is_cumulative_with_an_inf_bucket():
    h = Histogram()
    for s in (0.0005, 0.003, 0.003, 1000.0):
        h.observe(s)
    cum = dict(h.cumulative())
    assert cum["0.001"] == 1 and cum["0.005"] == 3 and cum[str(LATENCY_BUCKETS[-1])] == 3
    assert cum["+Inf"] == 4 and abs(h.total - 1000.0065) < 1e-9


@dataclass
class FakePlans:
    plans: dict = field(default_factory=dict)

    def items(self):
        return list(self.plans.items())

    def get(self, name):
        return self.plans.get(name)


def fake_daemon(plans: dict, peers: list[dict]) -> SimpleNamespace:
    store = SimpleNamespace(budget=1000, free=400)
    return SimpleNamespace(
        node_id="me", config=SimpleNamespace(name="self"), store=store,
        mesh=SimpleNamespace(advert=SimpleNamespace(reachability="public")),
        device=SimpleNamespace(name="rram"), jobs=SimpleNamespace(load=lambda: 0.5),
        capacity=3.0, addresses=lambda: ["127.0.0.1:1"], peers=lambda: peers,
        plans=FakePlans(plans))


def peer(pid: str, name: str, state: str) -> dict:
    return {"id": pid, "name": name, "state": state, "link": "tcp", "rtt_ms": 1.0,
            "reachability": "public", "device": "ideal", "load": 0.0, "capacity": 1.0,
            "addresses": [], "memory": {"total": 1, "free": 10, "budget": 30}}


def test_deployments_show_holders_and_replicas_live_of_wanted():
    plan = PartitionPlan((256, 64), "rram", [Block(0, 0, 128, ["me", "a"]),
                                             Block(1, 128, 256, ["a", "b"])])
    d = fake_daemon({"<w>": plan}, [peer("a", "<b>A</b>", "alive"), peer("b", "B", "dead")])
    (dep,) = views.deployments(d)
    assert dep["name"] == "<w>" and dep["replicas_wanted"] == 2
    assert [b["live"] for b in dep["blocks"]] == [2, 1] and dep["replicas_live"] == 1
    assert dep["blocks"][1]["holders"] == [{"id": "a", "name": "<b>A</b>", "state": "alive"},
                                           {"id": "b", "name": "B", "state": "dead"}]
    members = views.members(d)
    assert members[0]["self"] and members[0]["memory"] == {"used": 600, "limit": 1000}
    assert members[1]["memory"] == {"used": 20, "limit": 30}


def test_a_models_layers_are_shown_under_the_model_not_as_matrices():
    l0 = PartitionPlan((32, 64), "ideal", [Block(0, 0, 32, ["me", "a"])])
    l1 = PartitionPlan((10, 32), "ideal", [Block(0, 0, 5, ["a"]), Block(1, 5, 10, ["me"])])
    w = PartitionPlan((8, 8), "rram", [Block(0, 0, 8, ["me"])])
    d = fake_daemon({"mlp:0": l0, "mlp:1": l1, "w": w}, [peer("a", "A", "alive")])
    layers = [SimpleNamespace(matrix="mlp:0", shape=(32, 64)),
              SimpleNamespace(matrix="mlp:1", shape=(10, 32))]
    d.book = SimpleNamespace(live=lambda: [SimpleNamespace(
        name="mlp", kind="model", layers=layers, device=None, replicas=2)])
    model, matrix = views.deployments(d)
    assert (model["name"], model["kind"], model["layers"]) == ("mlp", "model", 2)
    assert model["shape"] == [64, 10] and model["missing_layers"] == 0
    assert [b["index"] for b in model["blocks"]] == ["L0.0", "L1.0", "L1.1"]
    assert model["replicas_live"] == 1 and model["replicas_wanted"] == 2
    assert (matrix["name"], matrix["kind"]) == ("w", "matrix")


def test_percentiles():
    assert views.percentiles([]) == {"p50": None, "p90": None, "p99": None}
    p = views.percentiles([float(i) for i in range(1, 101)])
    assert p["p50"] == 50.5 and 90 < p["p90"] < 91 and 99 < p["p99"] < 100


def test_percentiles_of_unordered_latencies_are_numpys_without_numpy():
    """The dashboard samples latencies in arrival order; the views sort them and give
    what np.percentile gives (the daemon's sampler must not import numpy on its loop)."""
    import numpy as np

    values = [7.5, 0.25, 3.0, 12.0, 3.0, 0.5, 99.0]
    expected = np.percentile(np.asarray(values), [50, 90, 99])
    assert [views.percentiles(values)[k] for k in ("p50", "p90", "p99")] == list(expected)


def collector_daemon(store) -> SimpleNamespace:
    from protocol.membership import MemberState

    member = lambda nid, st: SimpleNamespace(node_id=nid, state=st)   # noqa: E731
    session = SimpleNamespace(stats=SessionStats(10, 20, 1, 2), peer_id="p" * 32,
                              closed=SimpleNamespace(is_set=lambda: False),
                              link=SimpleNamespace(kind="ice-direct", rtt_ms=4.0))
    metrics = Metrics()
    for kind in ("joined", "suspect", "suspect", "dead"):
        metrics.member_event(SimpleNamespace(kind=kind))
    metrics.programmed(1000, 0.5)
    metrics.read(3)
    return SimpleNamespace(
        node_id="me", config=SimpleNamespace(name="<n>"), device=SimpleNamespace(name="rram"),
        started=0.0, capacity=2.0, store=store,
        mesh=SimpleNamespace(
            members=lambda: [member("me", MemberState.ALIVE), member("a", MemberState.SUSPECT),
                             member("b", MemberState.DEAD), member("c", MemberState.DEAD)],
            sessions={"p": session}, gossip_sent=7, gossip_received=9,
            connector=SimpleNamespace(outcomes={"p" * 32: SimpleNamespace(kind="ice-direct",
                                                                          setup_ms=250.0)})),
        jobs=SimpleNamespace(jobs={}), metrics=metrics, holder=SimpleNamespace(serving=1),
        executor=SimpleNamespace(busy_seconds=1.5, completed=4, workers=2, running=1, queued=3))


def scrape_fake(daemon) -> dict:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from node.http.collector import registry_for

    text = generate_latest(registry_for(daemon, LinkTotals())).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_collector_reads_the_daemon_state_it_is_given():
    store = SimpleNamespace(budget=1000, free=250, blocks=lambda: [1, 2])
    got = scrape_fake(collector_daemon(store))
    assert got[("sedma_members", (("state", "dead"),))] == 2
    assert got[("sedma_members", (("state", "suspect"),))] == 1
    assert got[("sedma_gossip_suspicions_total", ())] == 2
    assert got[("sedma_gossip_events_total", (("kind", "dead"),))] == 1
    assert got[("sedma_gossip_messages_total", (("direction", "sent"),))] == 7
    assert got[("sedma_gossip_messages_total", (("direction", "received"),))] == 9
    assert got[("sedma_links", (("kind", "ice-direct"),))] == 1
    assert got[("sedma_link_bytes_total", (("direction", "received"), ("kind", "ice-direct")))] == 20
    assert got[("sedma_link_setup_seconds", (("kind", "ice-direct"), ("peer", "pppppppp")))] == 0.25
    assert got[("sedma_link_rtt_seconds", (("peer", "pppppppp"),))] == 0.004
    assert got[("sedma_memory_used_bytes", ())] == 750
    assert got[("sedma_memory_blocks", ())] == 2
    assert got[("sedma_compute_queue", ())] == 2 and got[("sedma_compute_busy_seconds_total", ())] == 1.5
    assert got[("sedma_crossbar_programs_total", ())] == 1
    assert got[("sedma_crossbar_reads_total", ())] == 3
    assert not any(name.startswith("sedma_memory_tier") for name, _ in got)


def test_collector_shows_memory_tiers_when_the_store_has_a_disk_tier():
    store = SimpleNamespace(budget=1000, free=250, blocks=lambda: [], disk_used=4000,
                            disk_budget=10_000)
    got = scrape_fake(collector_daemon(store))
    assert got[("sedma_memory_tier_used_bytes", (("tier", "0"),))] == 750
    assert got[("sedma_memory_tier_used_bytes", (("tier", "1"),))] == 4000
    assert got[("sedma_memory_tier_budget_bytes", (("tier", "1"),))] == 10_000


def test_reconfiguration_decisions_come_from_whoever_records_them():
    d = SimpleNamespace(memory=SimpleNamespace(), reconfigurer=SimpleNamespace())
    assert views.reconfiguration_decisions(d) is None
    d.reconfigurer.decisions = [{"name": "w", "reason": "hot"}] * 60
    assert len(views.reconfiguration_decisions(d)) == 50
    d.memory.decided = lambda limit: [{"name": "w", "index": 0, "reason": "relieve n2"}][:limit]
    assert views.reconfiguration_decisions(d) == [{"name": "w", "index": 0, "reason": "relieve n2"}]
