"""Prometheus metrics of one daemon, read from its own state at scrape time.

A custom collector (rather than counters sprinkled through the mesh and job code) keeps
the instrumentation in one place: it reads the membership, sessions, connector outcomes,
job records, store, executor and :class:`~node.metrics.Metrics` totals when Prometheus
asks. Each daemon registers it in its own ``CollectorRegistry``, so several daemons in
one process (tests) never share series.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

from node.http.linktotals import LinkTotals
from node.metrics import LATENCY_BUCKETS, Histogram, resident_memory, total_memory

STATES = ("alive", "suspect", "dead", "left")


class DaemonCollector(Collector):
    """Yields every ``sedma_*`` family from a running daemon."""

    def __init__(self, daemon: Any, links: LinkTotals) -> None:
        self.daemon = daemon
        self.links = links

    def collect(self) -> Iterator[Metric]:
        yield from self._node()
        yield from self._gossip()
        yield from self._links()
        yield from self._jobs()
        yield from self._requests()
        yield from self._memory()
        yield from self._compute()
        yield from self._crossbar()

    def _node(self) -> Iterator[Metric]:
        d = self.daemon
        info = GaugeMetricFamily("sedma_node_info", "This node (value is always 1).",
                                 labels=["node_id", "name", "device"])
        info.add_metric([d.node_id, d.config.name, d.device.name], 1)
        yield info
        yield GaugeMetricFamily("sedma_uptime_seconds", "Seconds since the daemon started.",
                                value=time.time() - d.started)

    def _gossip(self) -> Iterator[Metric]:
        counts = dict.fromkeys(STATES, 0)
        for m in self.daemon.mesh.members():
            counts[m.state.value] = counts.get(m.state.value, 0) + 1
        members = GaugeMetricFamily("sedma_members", "Members this node knows, by state "
                                    "(itself included).", labels=["state"])
        for state, n in counts.items():
            members.add_metric([state], n)
        yield members
        events = CounterMetricFamily("sedma_gossip_events", "Membership changes seen, by kind.",
                                     labels=["kind"])
        for kind, n in sorted(self.daemon.metrics.member_events.items()):
            events.add_metric([kind], n)
        yield events
        sent_received = CounterMetricFamily(
            "sedma_gossip_messages", "SWIM and gossip messages (pings, acks, indirect probes, "
            "membership records) this node sent and received; work traffic is not counted "
            "here (see sedma_link_messages).", labels=["direction"])
        mesh = self.daemon.mesh
        sent_received.add_metric(["sent"], mesh.gossip_sent)
        sent_received.add_metric(["received"], mesh.gossip_received)
        yield sent_received
        yield CounterMetricFamily("sedma_gossip_suspicions", "Members this node has seen "
                                  "suspected.", value=self.daemon.metrics.member_events["suspect"])

    def _links(self) -> Iterator[Metric]:
        mesh = self.daemon.mesh
        sessions = [s for s in mesh.sessions.values() if not s.closed.is_set()]
        kinds = GaugeMetricFamily("sedma_links", "Open peer links, by kind.", labels=["kind"])
        by_kind: dict[str, int] = {}
        for s in sessions:
            by_kind[s.link.kind] = by_kind.get(s.link.kind, 0) + 1
        for kind, n in sorted(by_kind.items()):
            kinds.add_metric([kind], n)
        yield kinds
        traffic = self.links.update(list(mesh.sessions.values()))
        b = CounterMetricFamily("sedma_link_bytes", "Bytes over peer links, by link kind.",
                                labels=["kind", "direction"])
        m = CounterMetricFamily("sedma_link_messages", "Messages over peer links (gossip "
                                "and work), by link kind.", labels=["kind", "direction"])
        for kind, (sent_b, recv_b, sent_m, recv_m) in sorted(traffic.items()):
            b.add_metric([kind, "sent"], sent_b)
            b.add_metric([kind, "received"], recv_b)
            m.add_metric([kind, "sent"], sent_m)
            m.add_metric([kind, "received"], recv_m)
        yield b
        yield m
        rtt = GaugeMetricFamily("sedma_link_rtt_seconds", "Last measured round trip per peer.",
                                labels=["peer"])
        for s in sessions:
            if s.link.rtt_ms is not None:
                rtt.add_metric([s.peer_id[:8]], s.link.rtt_ms / 1000)
        yield rtt
        setup = GaugeMetricFamily("sedma_link_setup_seconds", "Time the last dial to each "
                                  "peer took, by the kind of link it produced.",
                                  labels=["peer", "kind"])
        for peer, outcome in list(mesh.connector.outcomes.items()):
            setup.add_metric([peer[:8], outcome.kind], outcome.setup_ms / 1000)
        yield setup

    def _jobs(self) -> Iterator[Metric]:
        records = list(self.daemon.jobs.jobs.values())
        total = CounterMetricFamily("sedma_jobs", "Jobs coordinated by this node, by kind "
                                    "and state.", labels=["kind", "state"])
        counts: dict[tuple[str, str], int] = {}
        hists: dict[str, Histogram] = {}
        for j in records:
            counts[(j.kind, j.state)] = counts.get((j.kind, j.state), 0) + 1
            if j.finished is not None:
                hists.setdefault(j.kind, Histogram()).observe(j.finished - j.submitted)
        for (kind, state), n in sorted(counts.items()):
            total.add_metric([kind, state], n)
        yield total
        yield _histogram("sedma_job_duration_seconds", "Time from submission to a final "
                         "state.", hists)

    def _requests(self) -> Iterator[Metric]:
        metrics = self.daemon.metrics
        total = CounterMetricFamily("sedma_requests", "Local API requests, by kind and "
                                    "outcome.", labels=["kind", "outcome"])
        for (kind, outcome), n in sorted(metrics.request_totals.items()):
            total.add_metric([kind, outcome], n)
        yield total
        yield _histogram("sedma_request_duration_seconds", "Local API request latency.",
                         metrics.request_latency)
        yield GaugeMetricFamily("sedma_peer_requests_serving", "Peer work requests being "
                                "served now.", value=self.daemon.holder.serving)

    def _memory(self) -> Iterator[Metric]:
        store = self.daemon.store
        yield GaugeMetricFamily("sedma_memory_budget_bytes", "Budget for resident weights "
                                "(--memory-limit).", value=store.budget)
        yield GaugeMetricFamily("sedma_memory_used_bytes", "Budget in use by resident "
                                "blocks (and reservations).", value=store.budget - store.free)
        yield GaugeMetricFamily("sedma_memory_blocks", "Resident blocks held.",
                                value=len(store.blocks()))
        yield GaugeMetricFamily("sedma_memory_process_resident_bytes", "Resident set size of "
                                "the daemon.", value=resident_memory())
        yield GaugeMetricFamily("sedma_memory_physical_bytes", "Physical memory of the "
                                "machine.", value=total_memory())
        disk_used = getattr(store, "disk_used", None)
        if disk_used is not None:      # a store with a disk tier under its RAM tier
            used = GaugeMetricFamily("sedma_memory_tier_used_bytes", "Bytes held per memory "
                                     "tier (0: RAM copies, 1: block files).", labels=["tier"])
            used.add_metric(["0"], store.budget - store.free)
            used.add_metric(["1"], disk_used)
            yield used
            budget = GaugeMetricFamily("sedma_memory_tier_budget_bytes", "Budget per memory "
                                       "tier (--memory-limit, --disk-limit).", labels=["tier"])
            budget.add_metric(["0"], store.budget)
            budget.add_metric(["1"], store.disk_budget)
            yield budget

    def _compute(self) -> Iterator[Metric]:
        ex = self.daemon.executor
        yield CounterMetricFamily("sedma_compute_busy_seconds", "Compute-thread time spent "
                                  "on work.", value=getattr(ex, "busy_seconds", 0.0))
        yield CounterMetricFamily("sedma_compute_tasks", "Compute tasks finished.",
                                  value=ex.completed)
        yield GaugeMetricFamily("sedma_compute_workers", "Compute threads.", value=ex.workers)
        yield GaugeMetricFamily("sedma_compute_running", "Compute tasks running now.",
                                value=ex.running)
        yield GaugeMetricFamily("sedma_compute_queue", "Compute tasks waiting for a thread.",
                                value=max(0, ex.queued - ex.running))
        yield GaugeMetricFamily("sedma_compute_capacity_gflops", "Advertised capacity.",
                                value=self.daemon.capacity)

    def _crossbar(self) -> Iterator[Metric]:
        xb = self.daemon.metrics.crossbar
        yield CounterMetricFamily("sedma_crossbar_programs", "Blocks programmed onto this "
                                  "node's crossbars.", value=xb.programs)
        yield CounterMetricFamily("sedma_crossbar_program_seconds", "Time spent programming "
                                  "(and persisting) blocks.", value=xb.program_seconds)
        yield CounterMetricFamily("sedma_crossbar_programmed_bytes", "Resident bytes "
                                  "programmed.", value=xb.programmed_bytes)
        yield CounterMetricFamily("sedma_crossbar_reads", "Reads of resident blocks "
                                  "(one per block per infer).", value=xb.reads)


def _histogram(name: str, doc: str, hists: dict[str, Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["kind"])
    for kind, h in sorted(hists.items()):
        family.add_metric([kind], h.cumulative(), sum_value=h.total)
    return family


def registry_for(daemon: Any, links: LinkTotals) -> CollectorRegistry:
    """A fresh registry holding only this daemon's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon, links))
    return registry


__all__ = ["DaemonCollector", "LinkTotals", "registry_for", "LATENCY_BUCKETS"]
