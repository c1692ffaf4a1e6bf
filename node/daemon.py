"""The sedma daemon: one per machine, wiring mesh, jobs, store, memory and local API.

Start-up order matters for "no lost data": the database and resident blocks are loaded
before the node advertises itself, so a restarted node serves its blocks as soon as peers
see it. Shutdown runs in reverse: stop accepting local requests and jobs, give running
jobs a bounded grace period, persist the dual memory, leave the mesh, close the database.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import signal
import time
from typing import Any

from compute.device import DeviceProfile, PRESETS, get_preset
from compute import lazynumpy
from compute.executor import Executor, measure_capacity
from nat import signaling
from nat.connector import ConnectorConfig
from node import api
from node.runtime.beat import Every, process_phase, sleep_to_beat
from node.runtime.capacity import node_capacity
from node.config import NodeConfig
from node.http.server import start_http
from node.memory.dualmemory import DualMemory
from node.net.identity import load_identity, load_keyring, prepare_data_dir
from node.work.blockrates import advert_entries
from node.work.holder import BlockHolder
from node.work.jobs import JobManager
from node.work.loopdemand import LoopDemand
from node.work.modelbook import ModelBook
from node.work.models import ModelManager
from node.work.plans import PlanBook
from node.work.rebalance import Policy
from node.work.retention import Retention
from node.work.reconfigure import Reconfigurer
from node.net.mesh import Mesh
from node.runtime.looplag import LagMonitor, StallReporter
from node.metrics import Metrics, total_memory
from node.runtime.supervise import Supervisor
from node.net.session import Session
from node.memory.statedb import StateDB
from node.memory.store import BlockStore
from protocol.advert import Advertisement
from protocol.handshake import cluster_id_for
from protocol.membership import MembershipConfig

log = logging.getLogger("sedma.daemon")

ADVERT_EVERY = 1.0       # how often local load/memory is offered to the membership
#: How often the advert's status-only figures (and the machine's total memory) are
#: re-read: they travel by push-pull (periods of 30 s and more), so the advert loop's
#: 1 s resolution bought nothing for them but the work of reading them.
REPORT_EVERY = 10.0
RECONCILE_EVERY = 5.0     # ask peers whether a deployment held here was undeployed
HOUSEKEEPING_EVERY = 60.0  # job retention, forgetting departed peers
FORGET_LINKS_AFTER = 3600.0  # a departed peer's link outcome is dropped after this long


class Daemon:
    """One node. ``run()`` returns when the node has stopped cleanly."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.data_dir = prepare_data_dir(config.data_path)
        self.identity = load_identity(self.data_dir)
        self.node_id = self.identity.node_id
        self.keys = load_keyring(config.cluster_key)
        self.device: DeviceProfile = get_preset(config.device)
        self.started = time.time()
        self.http = None   # the dashboard server, once started
        self.stop_event = asyncio.Event()
        self._addresses: list[str] | None = None
        self._tasks: list[asyncio.Task] = []
        self.supervisor = Supervisor()
        self.lag = LagMonitor()
        self.loop_demand: LoopDemand | None = None
        self.stall_reporter = StallReporter(self.lag)
        self._report: Every[dict[str, float | None]] = Every(REPORT_EVERY)
        self._memory_total: Every[int] = Every(REPORT_EVERY)

    # lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        await self.start()
        try:
            await self.stop_event.wait()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        cfg = self.config
        # Before anything else: a second daemon on the same data dir must not join the
        # mesh or open the database under the running one.
        api.ensure_socket_free(cfg.socket_path)
        if not self.keys:
            log.warning("open mesh (no --cluster-key): links are encrypted, but any host "
                        "that reaches %s can join, gossip and submit work", cfg.listen)
        self.db = StateDB(self.data_dir / "state.db")
        self.memory = DualMemory(rate_half_life_s=cfg.rate_half_life_s)
        self.db.call(self.memory.load)
        self.store = BlockStore(self.data_dir, self.db, cfg.memory_limit, cfg.disk_limit,
                                self.memory)
        self.metrics = Metrics()
        self.executor = Executor(cfg.workers)
        if lazynumpy.loaded() is None:
            # numpy's import frees ~2 MB it used; given back at once, on the importing
            # worker thread, not kept in that thread's malloc arena until the next save
            lazynumpy.after_load(trim_heap)
        self.capacity = cfg.capacity or await node_capacity(
            self.data_dir, self.executor.blas_threads,
            lambda: self.executor.run(measure_capacity))
        loaded = await self.executor.run(self.store.load_all)
        connector = ConnectorConfig(stun=tuple(cfg.stun), turn=tuple(cfg.turn))
        # The SWIM probes on this process's beat (the advert, lag and dashboard loops'
        # instants): one wake-up a second for all of them, at a phase of its own.
        self.mesh = Mesh(self.identity, cfg.name, self.keys, cfg.listen, cfg.bootstrap,
                         self._on_peer_message, connector,
                         MembershipConfig(probe_phase=process_phase()))
        self.mesh.event_hooks.append(self.metrics.member_event)   # gossip counts for /metrics
        # RTT samples: the round trips of the membership's own probes (no extra pings)
        self.mesh.rtt_hooks.append(lambda _peer, ms: self.metrics.rtt(ms))
        self.plans = PlanBook(self.db)
        self.plans.restore()
        self.book = ModelBook(self.db)
        self.book.restore()
        self.holder = BlockHolder(self.device, self.store, self.executor, self.metrics,
                                  self.plans, self.book, memory=self.memory,
                                  slowdown=cfg.compute_slowdown, prefetch=cfg.prefetch,
                                  node_id=self.node_id)
        self.jobs = JobManager(self.node_id, self.holder, self.mesh, self.memory, self.metrics,
                               self.db, self.data_dir, self.capacity,
                               Retention(cfg.job_retention, cfg.job_retention_count))
        for name in self.jobs.restore():
            if name not in self.plans and self.book.get(name) is None:
                # our deploy died before it committed: drop its blocks (a model's layers too)
                stale = [name] + [k for k in self.store.names() if k.startswith(f"{name}:")]
                dropped = 0
                for matrix in stale:
                    dropped += await self.executor.run(self.store.drop, matrix)
                log.warning("deploy of %s was interrupted before it committed; dropped its "
                            "%d local block(s)", name, dropped)
        dwell = cfg.rebalance_dwell_s
        self.reconfigurer = Reconfigurer(self.jobs, Policy(
            min_dwell_s=dwell, replicate_dwell_s=min(Policy.replicate_dwell_s, dwell)))
        self.models = ModelManager(self.jobs, self.book)
        self.holder.pipeline = self.models.pipeline
        await self.mesh.start(self._make_advert, self.supervisor.start)
        self.http = await start_http(self)   # dashboard + /metrics (None when off)
        self.api = await api.serve(cfg.socket_path, self.metrics.timed(self._on_local_request))
        self._install_signals()
        self.mesh.event_hooks.append(self._on_member_event)
        for name, loop in (("advertise", self._advertise_loop), ("memory", self._memory_loop),
                           ("reconfigure", self._reconfigure_loop),
                           ("housekeeping", self._housekeeping_loop),
                           ("reconcile", self._reconcile_loop),
                           ("loop_lag", self.lag.run)):
            self.supervisor.start(name, loop)
        self.stall_reporter.start()
        await self.executor.upkeep(trim_heap)
        log.info("node %s (%s) up: peers on %s, local socket %s, device %s, %.1f GFLOP/s, "
                 "%d resident block(s), budget %d bytes, event loop %s", self.node_id[:8],
                 cfg.name, self.addresses(), cfg.socket_path, self.device.name, self.capacity,
                 loaded, cfg.memory_limit, type(asyncio.get_running_loop()).__module__)

    async def shutdown(self) -> None:
        log.info("shutting down")
        self.api.close()
        if self.http is not None:
            await self.http.stop()
        await self.jobs.shutdown(self.config.shutdown_grace)
        await self.supervisor.stop(keep=("gossip",))   # the leave is gossiped by mesh.stop
        self.stall_reporter.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.memory.consolidate()
        await self.db.run(self.memory.save)
        await self.mesh.stop()
        await self.supervisor.stop()
        self.executor.shutdown(wait=False)  # a long share must not hold the exit hostage
        self.db.close()
        try:
            self.config.socket_path.unlink()
        except OSError:
            pass
        log.info("stopped cleanly")

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):
                pass
        if os.environ.get("SEDMA_TRACEMALLOC"):   # debug only; tracemalloc is ~1 MB at idle
            from node.runtime import memtrace

            memtrace.install(loop, self.data_dir)

    def _on_signal(self, sig: int) -> None:
        log.info("received %s", signal.Signals(sig).name)
        self.stop_event.set()

    # advertisement ------------------------------------------------------------------
    def addresses(self) -> list[str]:
        """What peers should dial: --advertise, else the bound address (every interface's
        address when bound to a wildcard). Fixed at start."""
        if self._addresses is None:
            self._addresses = self._find_addresses()
        return self._addresses

    def _find_addresses(self) -> list[str]:
        if self.config.advertise:
            return list(self.config.advertise)
        host, port = self.mesh.bound
        hosts = _interface_ips() if host in ("0.0.0.0", "::", "") else [host]
        return [f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in hosts]

    def _make_advert(self, bound: tuple[str, int]) -> Advertisement:
        return Advertisement(node_id=self.node_id, name=self.config.name,
                             addresses=self.addresses(), **self._load_fields())

    def _load_fields(self) -> dict[str, Any]:
        # "host": which kernel's cores this node runs on (one-shot splits leave co-hosts out)
        extra = {**self.mesh.connector.advert_extra(), "host": self.jobs.host}
        return dict(reachability=extra.get("reach", "unknown"),
                    memory_total=self._memory_total.get(total_memory),
                    memory_free=self.store.free,
                    memory_budget=self.store.budget, cores=self.executor.workers,
                    capacity=self.capacity, queue_depth=self.executor.queued,
                    running=self.executor.running, load=self.jobs.load(),
                    device=self.device.name, device_summary=self.device.summary(), extra=extra,
                    disk_free=self.store.disk_free, disk_budget=self.store.disk_budget,
                    tier1_speed=self.memory.tier1_speed(), stats=self._own_stats())

    def _reported(self) -> dict[str, float | None]:
        """The figures only ``status --mesh`` reads (``REPORT_ONLY_STATS``), as now."""
        m = self.metrics.summary(self.store.resident_bytes, self.executor.utilisation())
        return {"throughput_per_s": m["throughput_per_s"],
                "resource_utilisation": m["resource_utilisation"],
                "latency_p50_ms": m["communication_latency"]["p50_ms"],
                "latency_p99_ms": m["communication_latency"]["p99_ms"],
                "useful_bytes": m["useful_bytes"], "resident_bytes": m["resident_bytes"]}

    def _own_stats(self, current: bool = False) -> dict[str, float | None]:
        """This node's metrics for its advert (``status --mesh`` sums them up), settled
        against what the advert already says (see :func:`settle_stats`). The figures
        placement reads are taken every call; the status-only ones every
        ``REPORT_EVERY`` (``current``: now, as ``status --mesh`` shows this node's)."""
        fresh = self._reported() if current else self._report.get(self._reported)
        fresh = fresh | {
            "served_gflops": self.memory.served_gflops,
            # the rebalancer's view of per-request work (node/work/loopdemand.py)
            "loop_busy": round(self.loop_demand.value, 2) if self.loop_demand else None}
        # its hottest blocks' read rates: the node acting for a block adds them up
        fresh |= advert_entries({(n, i): self.memory.block_rate((n, i))
                                 for n, idxs in self.store.names().items() for i in idxs})
        mesh = getattr(self, "mesh", None)
        if current or mesh is None or mesh.membership is None:
            return fresh
        return settle_stats(mesh.advert.stats, fresh)   # against what peers have

    async def _advertise_loop(self) -> None:
        self.loop_demand = LoopDemand()      # on the loop thread: the thread it measures
        while True:
            await sleep_to_beat(ADVERT_EVERY)
            self.loop_demand.sample()
            self.mesh.update_advert(**self._load_fields())

    async def _memory_loop(self) -> None:
        while True:
            await sleep_to_beat(self.config.memory_save_every)
            self.memory.consolidate()
            await self.db.run(self.memory.save)
            await self.executor.upkeep(trim_heap)

    def _on_member_event(self, event: Any) -> None:
        if event.kind in ("dead", "left"):
            task = asyncio.get_running_loop().create_task(self._repair_once())
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)

    async def _repair_once(self) -> None:
        try:
            await self.reconfigurer.run()
        except Exception:  # the periodic pass retries; this one must not vanish silently
            log.exception("replica repair pass failed")

    async def _reconfigure_loop(self) -> None:
        while True:
            await sleep_to_beat(self.config.reconfigure_every)
            await self.reconfigurer.run()   # a failure is logged and retried by the supervisor
            try:
                await self.reconfigurer.rebalance()
            except Exception:  # a bad rebalancing pass must not hold up the repairs
                log.exception("rebalancing pass failed")

    async def _housekeeping_loop(self) -> None:
        while True:
            await sleep_to_beat(HOUSEKEEPING_EVERY)
            await self.housekeeping()

    async def housekeeping(self) -> None:
        """Bound what grows with time: finished jobs, departed peers' records."""
        await self.jobs.prune()
        members = {m.node_id for m in self.mesh.members()
                   if m.state.value in ("alive", "suspect")}
        forgotten = self.memory.forget_departed(members)
        forgotten += self.mesh.connector.forget(members, FORGET_LINKS_AFTER)
        known = {m.node_id for m in self.mesh.members()}   # the membership drops the long dead
        for node_id in [n for n in self.mesh.advert_seen if n not in known]:
            del self.mesh.advert_seen[node_id]
        if forgotten:
            log.info("forgot %d record(s) of departed peers", len(forgotten))

    async def _reconcile_loop(self) -> None:
        """Drop deployments undeployed while this node was away (see ModelManager)."""
        while True:
            await sleep_to_beat(RECONCILE_EVERY)
            await self.models.reconcile()   # a failure is logged and retried by the supervisor
            await self.book.expire()

    # requests -----------------------------------------------------------------------
    async def _on_peer_message(self, session: Session, msg: Any) -> None:
        if signaling.is_signal(msg):
            await self._route_signal(msg)
            return
        await self.holder.handle(session, msg)

    async def _route_signal(self, msg: Any) -> None:
        if msg.dst == self.node_id:
            await self.mesh.handle_signal(msg)
            return
        target = self.mesh.sessions.get(msg.dst)
        onward = signaling.forwarded(msg)
        if target is None or onward is None:
            log.debug("dropping signal for %s: no link or hops left", msg.dst[:8])
            return
        try:
            await target.send(onward)
        except ConnectionError as exc:
            log.debug("relaying signal to %s failed: %s", msg.dst[:8], exc)

    async def _on_local_request(self, req: Any) -> Any:
        jobs = self.jobs
        if isinstance(req, api.StatusRequest):
            return self.status() | ({"mesh": self.mesh_status()} if req.mesh else {})
        if isinstance(req, api.MemoryRequest):
            return self.memory_report()
        if isinstance(req, api.PeersRequest):
            return self.peers()
        if isinstance(req, api.JobsRequest):
            return [j.public() for j in jobs.jobs.values()]
        if isinstance(req, api.DevicesRequest):
            return [p.to_dict() | {"summary": p.summary()} for p in PRESETS.values()]
        if isinstance(req, api.SubmitRequest):
            if req.kind != "matmul":
                raise api.UserError(f"unknown job kind {req.kind!r} (known: matmul)")
            return (await jobs.submit_matmul(req.a, req.b, req.device, req.seed)).public()
        if isinstance(req, api.JobRequest):
            return jobs.get(req.job_id).public()
        if isinstance(req, api.WaitRequest):
            if math.isnan(req.timeout):   # min/max pass NaN through to the wait: refuse it here
                raise api.UserError("timeout must be a number of seconds, got NaN")
            return (await jobs.wait(req.job_id, min(max(req.timeout, 0.0), 60.0))).public()
        if isinstance(req, api.ResultRequest):
            return await jobs.result(req.job_id)
        if isinstance(req, api.SharedResultRequest):
            return await jobs.result(req.job_id, mapped=True)
        if isinstance(req, api.CancelRequest):
            return jobs.cancel(req.job_id).public()
        if isinstance(req, api.DeployRequest):
            return (await self.models.deploy_array(req.name, req.w, req.device, req.replicas,
                                                   req.seed)).public()
        if isinstance(req, api.DeployFileRequest):
            return (await self.models.deploy_file(req.name, req.path, req.device,
                                                  req.replicas, req.seed)).public()
        if isinstance(req, api.InferRequest):
            return await self.models.infer(req.name, req.x, req.read_seed)
        if isinstance(req, api.UndeployRequest):
            return await self.models.undeploy(req.name)
        if isinstance(req, api.DeploymentsRequest):
            return await self.models.deployments()
        raise api.UserError(f"unsupported request {type(req).TAG}")

    def status(self) -> dict:
        useful = self.store.resident_bytes
        return {
            "id": self.node_id, "name": self.config.name, "addresses": self.addresses(),
            "memory": {"total": total_memory(), "free": self.store.free,
                       "budget": self.store.budget, "resident_blocks": useful,
                       "disk_free": self.store.disk_free, "disk_budget": self.store.disk_budget},
            "load": self.jobs.load(), "device": self.device.name,
            "capacity": self.capacity, "uptime_s": time.time() - self.started,
            "cluster": cluster_id_for(self.keys[0] if self.keys else None),
            "socket": str(self.config.socket_path),
            "reachability": self.mesh.advert.reachability,
            "blocks": self.store.names(),
            "deployments": sorted({n for n in self.plans.names() if ":" not in n}
                                  | {r.name for r in self.book.live()}),
            "members": len(self.mesh.members()),
            "traffic": self.mesh.traffic(),
            "tasks": len(asyncio.all_tasks()),
            "loops": self.supervisor.report(),
            "compute": {"cores": self.executor.cores, "workers": self.executor.workers,
                        "blas_threads": self.executor.blas_threads},
            "loop_lag": self.lag.report(),
            "metrics": self.metrics.summary(useful, self.executor.utilisation()),
            "memory_patterns": self.memory.short_term_summary(),
            "dashboard": self.http.url if self.http is not None else None,
        }

    def mesh_status(self) -> dict:
        """The four metrics for the whole mesh, from every alive member's advert.

        Throughput adds up; resource utilisation is the core-weighted mean; memory
        utilisation efficiency is all useful bytes over all resident bytes; latency is the
        median of the members' p50 and the worst p99. This node's figures are current; a
        peer's status-only ones travel by push-pull (``REPORT_ONLY_STATS``), so they are
        up to a few push-pull periods old unless its advert changed for another reason.
        """
        nodes = [(self.node_id, self.executor.workers, self._own_stats(current=True))]
        nodes += [(m.node_id, m.advert.cores, m.advert.stats) for m in self.mesh.members()
                  if m.node_id != self.node_id and m.state.value == "alive"]

        def vals(key):
            return [s.get(key) for _, _, s in nodes if s.get(key) is not None]
        cores = sum(c for _, c, s in nodes if s.get("resource_utilisation") is not None)
        rss = sum(vals("resident_bytes"))
        p50 = sorted(vals("latency_p50_ms"))
        return {
            "nodes": len(nodes),
            "throughput_per_s": sum(vals("throughput_per_s")),
            "resource_utilisation": (sum(c * s["resource_utilisation"] for _, c, s in nodes
                                         if s.get("resource_utilisation") is not None) / cores
                                     if cores else None),
            "memory_utilisation_efficiency": sum(vals("useful_bytes")) / rss if rss else None,
            "communication_latency": {"p50_ms": p50[len(p50) // 2] if p50 else None,
                                      "p99_ms": max(vals("latency_p99_ms"), default=None)},
            "per_node": {nid: s for nid, _, s in nodes},
        }

    def memory_report(self) -> dict:
        """What ``sedma memory`` shows: tiers, blocks, prefetch, learned peers, decisions."""
        mem, store = self.memory, self.store
        adverts = {m.node_id: m.advert for m in self.mesh.members()}
        peers = {}
        for nid, a in adverts.items():
            pat = mem.peer_patterns.get(nid)
            peers[nid] = {"name": a.name, "advertised_gflops": a.capacity,
                          "learned_gflops": pat.speed_gflops if pat else None,
                          "reliability": pat.reliability if pat else None,
                          "self_measured_gflops": a.stats.get("served_gflops"),
                          "link_bps": mem.link_bps.get(nid)}
        names = {name for name, _ in self.plans.items()} | set(store.names())
        return {
            "id": self.node_id, "name": self.config.name,
            "tiers": {"0": {"used": store.resident_bytes, "limit": store.budget},
                      "1": {"used": store.disk_used, "limit": store.disk_budget},
                      "tier1_speed": mem.tier1_speed()},
            "blocks": {n: {str(i): t for i, t in b.items()} for n, b in store.tiers().items()},
            "prefetch": store.stats.to_dict() | {"enabled": self.config.prefetch},
            "peers": peers,
            "request_rates": {n: mem.matrix_rate(n) for n in sorted(names)},
            "block_read_rates": {f"{b.name}/{b.index}": mem.block_rate(b.key)
                                 for b in store.blocks()},
            "decisions": mem.decided(20),
        }

    def peers(self) -> list[dict]:
        out = []
        now = self.mesh.clock()
        for m in self.mesh.members():
            if m.node_id == self.node_id:
                continue
            a = m.advert
            session = self.mesh.sessions.get(m.node_id)
            outcome = self.mesh.connector.outcome(m.node_id)
            link = session.link.kind if session and not session.closed.is_set() else "none"
            out.append({
                "id": m.node_id, "name": a.name, "state": m.state.value,
                "incarnation": m.incarnation, "addresses": a.addresses, "link": link,
                "link_error": outcome.error if outcome and link == "none" else "",
                "rtt_ms": session.link.rtt_ms if session else None,
                "memory": {"total": a.memory_total, "free": a.memory_free,
                           "budget": a.memory_budget},
                "load": a.load, "capacity": a.capacity, "device": a.device,
                "reachability": a.reachability, "advert_version": a.version,
                "traffic": ({"sent_bytes": session.stats.sent_bytes,
                             "recv_bytes": session.stats.recv_bytes,
                             "sent_messages": session.stats.sent_messages,
                             "recv_messages": session.stats.recv_messages}
                            if session else None),
                "state_age_s": now - m.state_since,
                "advert_age_s": now - self.mesh.advert_seen.get(m.node_id, m.state_since),
            })
        return out


#: How far an advertised statistic may drift before the advert carries the new value:
#: relative (default ``STATS_TOLERANCE``), and an absolute floor below which a change is
#: noise. RTT percentiles move by a fifth with every sample on a loaded host: half.
STATS_TOLERANCE = 0.1
STATS_RELATIVE = {"latency_p50_ms": 0.5, "latency_p99_ms": 0.5}
STATS_FLOOR = {"resident_bytes": 1 << 20, "useful_bytes": 1 << 20,
               "resource_utilisation": 0.01, "throughput_per_s": 0.05,
               "latency_p50_ms": 2.0, "latency_p99_ms": 2.0, "served_gflops": 0.05,
               "loop_busy": 0.1}


def settle_stats(advertised: dict[str, float | None],
                 fresh: dict[str, float | None]) -> dict[str, float | None]:
    """``fresh``, except values within their tolerance (relative, or their absolute
    floor) of ``advertised``, which keep the advertised value.

    Any difference in an advert is republished within ``advert_refresh`` and gossiped to
    every member, who each verify its signature. An idle node's RSS moves by kilobytes,
    its utilisation by millionths and its RTT percentiles by a millisecond every few
    seconds, so every node re-published every 5 s: with N daemons each one handled ~N/5
    adverts a second, idle cost growing with the mesh (issue 13). Settled, an idle
    node's advert does not change at all.
    """
    out = dict(fresh)
    for key, value in fresh.items():
        old = advertised.get(key)
        if value is None or old is None or key not in advertised:
            continue
        rel = STATS_RELATIVE.get(key, STATS_TOLERANCE)
        if abs(value - old) <= max(rel * max(abs(value), abs(old)), STATS_FLOOR.get(key, 0.0)):
            out[key] = old
    return out


def _interface_ips() -> list[str]:
    """Non-loopback IPv4 addresses of this host's interfaces (ifaddr, which aioice uses).

    Advertising every one lets peers on any of the host's networks reach it; each dial is
    bounded, so a wrong guess costs a peer one short timeout, not a hang.
    """
    import ifaddr

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                found.append(ip.ip)
    return found or ["127.0.0.1"]


#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8
#: Arenas for the whole daemon: glibc makes up to 8 x cores, one per thread that allocates,
#: and each keeps freed memory of its own (compute threads, the database thread, the loop).
ARENA_MAX = 2


@functools.cache
def _libc():
    """glibc through ctypes, or None elsewhere (musl, macOS): allocator tuning is optional.

    Looked up once: ``ctypes.util.find_library`` runs ``/sbin/ldconfig -p`` in a child
    process on every call, which every 10 s (the consolidation's trim) was most of an idle
    daemon's CPU. The loaded C library is already in this process, so ``CDLL(None)``
    finds its symbols without any lookup."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 — both must exist
    except (OSError, AttributeError):
        return None
    return libc


#: glibc's mallopt parameter for the size from which malloc maps memory of its own.
_M_MMAP_THRESHOLD = -3
#: Buffers of 1 MiB and more (request operands and results, frames, block copies) are
#: mapped and unmapped, so their memory leaves the process when they are freed. glibc's
#: default threshold is dynamic: freeing one mapped 32 MiB block raises it to 32 MiB, and
#: from then on every buffer up to that size stays in the heap until a trim. Measured
#: with ``bench/stream.py --nodes 2 --replicas 1`` (N=4096, B=64): 190 MiB of RSS in the
#: two daemons after the stream instead of 205 MiB, in the same machine state.
#: Not lower than 4 MiB: link frames are ~1 MiB (a fragment plus its records' tags), and
#: mapping each one fresh page-faulted every received byte on the event loop, ~2 ms per
#: MiB in this VM (a 500 MB share held the loop for 70-130 ms, tests/test_loop_lag.py).
MMAP_THRESHOLD = 4 << 20


#: glibc's mallopt parameter for the free bytes at the heap's top kept rather than trimmed.
_M_TRIM_THRESHOLD = -1
#: Setting MMAP_THRESHOLD fixes glibc's trim threshold at its 128 KiB default, so every
#: request's 1 MiB buffers (X's copy, Y, a peer's reply) were handed back to the kernel
#: when freed and faulted in again, zeroed, by the next request: ~160 page faults per
#: B=64 request on the coordinator's loop (bench/README.md, loop5). Keeping up to one
#: mmap threshold's worth at each arena's top costs at most 4 MiB per arena (8 MiB with
#: ARENA_MAX=2), and the consolidation's trim_heap every 10 s gives it back anyway.
TRIM_THRESHOLD = MMAP_THRESHOLD


def limit_arenas() -> None:
    """Tune glibc's allocator before any thread starts: at most ``ARENA_MAX`` arenas
    (same as MALLOC_ARENA_MAX=2), a fixed ``MMAP_THRESHOLD`` (same as
    MALLOC_MMAP_THRESHOLD_=4194304) and ``TRIM_THRESHOLD`` (MALLOC_TRIM_THRESHOLD_);
    each environment variable wins over ours."""
    libc = _libc()
    if libc is None:
        return
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, ARENA_MAX)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def trim_heap() -> None:
    """Give freed heap pages back to the system (glibc keeps them otherwise): after start
    (capacity measurement, block loading) and after each consolidation."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


#: libuv's thread pool (uvloop resolves host names on it) starts 4 threads by default;
#: the daemon resolves a name only when dialling one, so 2 threads (each with a stack and
#: a share of the malloc arenas) are plenty and one slow lookup does not block the rest.
UV_THREADPOOL_SIZE = "2"


def run(config: NodeConfig) -> int:
    """Run a daemon until SIGINT/SIGTERM; return the exit status."""
    limit_arenas()
    os.environ.setdefault("UV_THREADPOOL_SIZE", UV_THREADPOOL_SIZE)   # read at first use
    daemon = Daemon(config)
    try:
        import uvloop
    except ImportError:
        asyncio.run(daemon.run())
    else:
        uvloop.run(daemon.run())
    busy = daemon.executor.running
    if busy:
        # Python would join the compute threads at exit; their requesters have failed over
        # already and every committed state is on disk, so leave without them.
        log.warning("abandoning %d compute task(s) still running", busy)
        logging.shutdown()
        os._exit(0)
    return 0
