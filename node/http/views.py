"""JSON views of a daemon for the dashboard: plain dicts built from its current state.

Each function reads the daemon's objects (never changes them) and is cheap enough to run on
the event loop every poll: a few hundred members, plans and jobs at most. The daemon is
duck-typed so the views can be unit-tested with fakes.
"""

from __future__ import annotations

import time
from typing import Any

from node.metrics import percentile


#: How many recent jobs the jobs page lists.
RECENT_JOBS = 25
#: Window (seconds) for the dashboard's rates and percentiles.
RATE_WINDOW = 60.0


def snapshot(daemon: Any) -> dict:
    """Everything the dashboard shows, in one document (one poll per refresh)."""
    known = members(daemon)
    return {"node": node_view(daemon), "members": known,
            "deployments": deployments(daemon, known), "jobs": jobs_view(daemon),
            "memory": dual_memory(daemon, known), "at": time.time()}


def node_view(daemon: Any) -> dict:
    s = daemon.status()
    return {k: s[k] for k in ("id", "name", "addresses", "device", "capacity", "load",
                              "uptime_s", "reachability", "memory", "metrics")}


def members(daemon: Any) -> list[dict]:
    """This node first, then every member it knows, with link and load."""
    store = daemon.store
    me = {"id": daemon.node_id, "name": daemon.config.name, "state": "alive", "self": True,
          "link": "self", "rtt_ms": None, "reachability": daemon.mesh.advert.reachability,
          "device": daemon.device.name, "load": daemon.jobs.load(),
          "capacity": daemon.capacity, "addresses": daemon.addresses(),
          "memory": {"used": store.budget - store.free, "limit": store.budget}}
    out = [me]
    for p in daemon.peers():
        mem = p["memory"]
        out.append({"id": p["id"], "name": p["name"], "state": p["state"], "self": False,
                    "link": p["link"], "link_error": p.get("link_error", ""),
                    "rtt_ms": p["rtt_ms"], "reachability": p["reachability"],
                    "device": p["device"], "load": p["load"], "capacity": p["capacity"],
                    "addresses": p["addresses"],
                    "memory": {"used": max(0, mem["budget"] - mem["free"]),
                               "limit": mem["budget"]}})
    return out


def deployments(daemon: Any, known: list[dict] | None = None) -> list[dict]:
    """Each deployed matrix or model, its blocks, their holders and replica health.

    The one place the dashboard learns what is deployed, read from this node's plan book
    (never a peer call: the page must not wait on the mesh). A model's layers are plans
    named ``NAME:i``; they are shown under the model, each block labelled ``L<i>.<j>``.
    """
    names = {m["id"]: (m["name"], m["state"]) for m in known or members(daemon)}
    models = {r.name: r for r in _live_models(daemon) if r.kind == "model"}
    layer_of = {l.matrix: (r.name, i) for r in models.values() for i, l in enumerate(r.layers)}
    out = [_matrix_entry(name, plan, names) for name, plan in daemon.plans.items()
           if name not in layer_of]
    for rec in models.values():
        plans = [(i, daemon.plans.get(l.matrix)) for i, l in enumerate(rec.layers)]
        out.append(_model_entry(rec, [(i, p) for i, p in plans if p is not None], names))
    return sorted(out, key=lambda d: d["name"])


def _live_models(daemon: Any) -> list:
    book = getattr(daemon, "book", None)
    return book.live() if book is not None else []


def _blocks(plan: Any, names: dict, label: Any = None) -> list[dict]:
    blocks = []
    for b in plan.blocks:
        holders = [{"id": n, "name": names.get(n, (n[:8], "unknown"))[0],
                    "state": names.get(n, ("", "unknown"))[1]} for n in b.nodes]
        blocks.append({"index": b.index if label is None else f"{label}.{b.index}",
                       "rows": [b.row_start, b.row_stop], "holders": holders,
                       "live": sum(h["state"] == "alive" for h in holders)})
    return blocks


def _matrix_entry(name: str, plan: Any, names: dict) -> dict:
    blocks = _blocks(plan, names)
    return {"name": name, "kind": "matrix", "shape": list(plan.shape), "device": plan.device,
            "replicas_wanted": max(len(b.nodes) for b in plan.blocks),
            "replicas_live": min(b["live"] for b in blocks), "blocks": blocks}


def _model_entry(rec: Any, plans: list[tuple[int, Any]], names: dict) -> dict:
    blocks = [b for i, plan in plans for b in _blocks(plan, names, f"L{i}")]
    return {"name": rec.name, "kind": "model", "layers": len(rec.layers),
            "shape": [rec.layers[0].shape[1], rec.layers[-1].shape[0]],
            "device": rec.device or "per node", "replicas_wanted": rec.replicas,
            "replicas_live": min((b["live"] for b in blocks), default=0),
            "missing_layers": len(rec.layers) - len(plans), "blocks": blocks}


def jobs_view(daemon: Any, now_mono: float | None = None) -> dict:
    """Job and request rates, latency percentiles and failures, plus the recent jobs."""
    metrics = daemon.metrics
    now_mono = time.monotonic() if now_mono is None else now_mono
    recent = [r for r in metrics.recent_requests if r.at > now_mono - RATE_WINDOW]
    records = list(daemon.jobs.jobs.values())
    finished = [j for j in records if j.finished is not None]
    by_state: dict[str, int] = {}
    for j in records:
        by_state[j.state] = by_state.get(j.state, 0) + 1
    return {
        "window_s": RATE_WINDOW,
        "requests_per_s": len(recent) / RATE_WINDOW,
        "request_failures": sum(not r.ok for r in recent),
        "request_latency_ms": percentiles([r.seconds * 1000 for r in recent]),
        "job_latency_ms": percentiles([(j.finished - j.submitted) * 1000
                                       for j in finished[-1000:]]),
        "jobs_by_state": by_state,
        "recent": [_job_row(j) for j in sorted(records, key=lambda j: j.submitted,
                                               reverse=True)[:RECENT_JOBS]],
    }


def _job_row(job: Any) -> dict:
    took = None if job.finished is None else job.finished - job.submitted
    return {"id": job.id, "kind": job.kind, "state": job.state, "submitted": job.submitted,
            "seconds": took, "error": job.error or "",
            "name": job.detail.get("name") or "", "shape": job.detail.get("shape")}


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p90/p99 of ``values`` (None when there are none)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    ordered = sorted(float(v) for v in values)
    return {f"p{q}": percentile(ordered, q) for q in (50, 90, 99)}


def dual_memory(daemon: Any, known: list[dict] | None = None) -> dict:
    """Per peer, what this node learned (speed, reliability) next to what it advertises;
    and the reconfiguration decisions with their reasons, when the daemon records them."""
    advertised = {p["id"]: p for p in known or members(daemon)}
    peers = []
    for peer, pat in daemon.memory.peer_patterns.items():
        adv = advertised.get(peer, {})
        peers.append({"id": peer, "name": adv.get("name", peer[:8]),
                      "state": adv.get("state", "unknown"),
                      "learned_gflops": pat.speed_gflops, "advertised_gflops": adv.get("capacity"),
                      "reliability": pat.reliability, "samples": pat.samples,
                      "failures": pat.failures})
    matrices = [{"name": n, "requests": m.requests, "mean_latency_ms": m.mean_latency_ms}
                for n, m in daemon.memory.matrix_patterns.items()]
    decisions = reconfiguration_decisions(daemon)
    return {"peers": peers, "matrices": matrices,
            "short_term": daemon.memory.short_term_summary(),
            "decisions": [_decision(d) for d in decisions] if decisions is not None else None}


def reconfiguration_decisions(daemon: Any, limit: int = 50) -> list | None:
    """The latest reconfiguration decisions, or None when this daemon records none.

    The dual memory keeps them (``decided``) once rebalancing exists; a reconfigurer's own
    ``decisions`` list is read otherwise."""
    decided = getattr(daemon.memory, "decided", None)
    if callable(decided):
        return decided(limit=limit)
    decisions = getattr(daemon.reconfigurer, "decisions", None)
    return None if decisions is None else list(decisions)[-limit:]


def _decision(d: Any) -> dict:
    """A reconfiguration decision as a dict, whatever shape its owner gives it."""
    if isinstance(d, dict):
        return d
    if hasattr(d, "__dataclass_fields__"):
        from dataclasses import asdict
        return asdict(d)
    return {"text": str(d)}
