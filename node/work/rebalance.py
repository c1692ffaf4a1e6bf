"""Continuous reconfiguration decisions: hot replication, retiring replicas, migration.

Pure functions over a snapshot of the mesh (:class:`NodeView`) and of the deployed blocks
(:class:`BlockView`); the :class:`~node.work.reconfigure.Reconfigurer` carries the
decisions out (copy-then-switch) and the dual memory keeps them with their reasons.

Why these rules, and what keeps them from thrashing (Petals' rebalancing thrash and Dask
work stealing's oscillations are the cautionary tales):

- *Hot replication*: a block whose request rate keeps its holders busy (predicted busy
  fraction per holder above ``hot_busy``) gains a replica on the best node with free RAM
  and spare capacity. The predicted gain is the busy fraction taken off each holder.
- *Retiring*: a block above its deployed replica count whose holders would stay below
  ``cool_busy`` with one replica fewer gives back the replica on its slowest holder.
  ``hot_busy`` > ``cool_busy`` *is* the hysteresis: the gap between them means a block
  replicated at rate r is retired only when the rate fell well below r. Busy fractions
  are rate x measured compute time, and on a shared machine the compute time swings
  100x within a minute (a replica added at "97 % busy" was retired at "1 % busy" at a
  higher rate, then added again: bench/README), so the rate itself must also have fallen
  by ``hot_busy / cool_busy`` since the replica was added (when that rate is known: it is
  kept with the replicate decision in the dual memory's persisted log, so it survives a
  restart; only the node that decided knows it).
- *Migration*: a block moves off a holder that is slow (learned speed below
  ``slow_ratio`` x the best alternative's), overloaded, or reachable only through a relay,
  when the time saved over ``horizon_s`` exceeds ``margin`` x the cost of moving it
  (bytes over the measured link speed). Inputs are the dual memory's *long-term*
  estimates (EWMA over consolidation periods), so load that oscillates faster than a few
  periods averages out instead of driving moves.
- *Dwell*: a block whose holders changed less than ``min_dwell_s`` ago is neither moved
  nor retired (it may gain a replica after the shorter ``replicate_dwell_s``: adding
  capacity to a hot block cannot oscillate, retiring it needs the rate to fall 4x), and
  at most ``max_moves`` decisions are made per pass. Hence a hard bound: over T seconds
  each block migrates at most ``T / min_dwell_s + 1`` times.

Every :class:`Decision` carries its reason and predicted gain so it can be checked later
against what was measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from node.work.placement import RELAY_PENALTY


@dataclass(frozen=True)
class Policy:
    """Thresholds of the control loop (defaults tuned for a 30 s control interval)."""

    hot_busy: float = 0.6        # busy fraction per holder that asks for another replica
    cool_busy: float = 0.15      # below this with one replica fewer, retire one
    overload: float = 1.5        # advertised load (tasks per core) that counts as overloaded
    slow_ratio: float = 0.33     # holder slower than this x the target counts as slow (a
                                 # wide margin: measured speeds of equal nodes differ ~2x
                                 # on a busy machine, and a move must not be undone by noise)
    horizon_s: float = 300.0     # how far ahead a move's saving is counted
    margin: float = 2.0          # saving must exceed margin x cost
    min_dwell_s: float = 120.0   # a block keeps its holders this long before a move/retire
    replicate_dwell_s: float = 20.0  # ... and this long before it gains another replica
    max_moves: int = 2           # decisions per pass, all blocks together
    max_replicas: int = 4        # hot replication stops here
    loop_hot: float = 0.7        # holders' event loops busy (CPU) this much of the time ask
                                 # for a replica of the block most of their requests are for
    loop_cool: float = 0.5       # retiring must leave the other holders' loops below this


#: On overloaded holders, a block with at least this share of ``hot_busy`` (in compute)
#: is replicated rather than migrated (see ``_replicate``).
CROWDED_SHARE = 0.25
#: A block with at least this share of its holder's reads is the one its loop is busy for.
LOOP_SHARE = 0.5


@dataclass(frozen=True)
class NodeView:
    """One live member as the control loop sees it (long-term memory first)."""

    node_id: str
    speed: float                 # learned GFLOP/s (advertised when nothing was measured)
    load: float = 0.0            # tasks per core, long-term average
    free_bytes: int = 0          # free RAM (tier 0) for new blocks
    relayed: bool = False        # reachable only through TURN
    link_bps: float = 50e6       # measured bytes/s towards it
    loop_busy: float = 0.0       # its event loop thread's CPU fraction (node/work/loopdemand.py)


@dataclass(frozen=True)
class BlockView:
    """One deployed block: who holds it, how hot it is, when its holders last changed."""

    name: str
    index: int
    nbytes: int
    flops: float                 # per request (0: never read on the acting node, nothing
                                 # measured; with its rate of 0 only retiring applies)
    holders: tuple[str, ...]
    rate: float                  # requests/s, short-term window
    changed_at: float            # when its holder set last changed
    want: int = 1                # replicas as deployed (never retired below this)
    share: float = 0.0           # this block's part of its (acting) holder's reads
    grown_at_rate: float = 0.0   # its rate when it last gained a replica (0: unknown)


@dataclass(frozen=True)
class Decision:
    """One reconfiguration step, with why and what it should buy."""

    kind: str                    # 'replicate' | 'retire' | 'migrate'
    name: str
    index: int
    source: str                  # holder copied from (or retired)
    target: str                  # new holder ('' for retire)
    reason: str
    predicted_gain: float        # seconds of compute saved over the horizon (busy fraction
                                 # for replicate/retire: per-holder busy taken off / added)
    cost_s: float = 0.0          # predicted seconds to copy the block
    at: float = 0.0
    rate: float = 0.0            # the block's requests/s (all holders) as decided: kept with
                                 # the decision, a replica's growth rate (see grown_rates)

    def to_dict(self) -> dict:
        return asdict(self)


def grown_rates(decisions: list[dict], since: dict[str, float] | None = None
                ) -> dict[tuple[str, int], float]:
    """Per block, the rate its last replica was added at (``BlockView.grown_at_rate``),
    from a decision log oldest first (the dual memory's, persisted: a restart keeps it).

    ``since``: per matrix, when its current deployment was made; older decisions belong to
    an earlier deployment of the name and are passed over, as are entries without a usable
    rate (logged before decisions carried one, or damaged).
    """
    out: dict[tuple[str, int], float] = {}
    for d in decisions:
        name, index, rate, at = d.get("name"), d.get("index"), d.get("rate"), d.get("at")
        if (d.get("kind") != "replicate" or not isinstance(name, str)
                or not isinstance(index, int) or isinstance(rate, bool)
                or not isinstance(rate, (int, float)) or not 0 < rate < math.inf
                or not isinstance(at, (int, float))
                or at < (since or {}).get(name, -math.inf)):
            continue
        out[(name, index)] = float(rate)
    return out


def service_s(block: BlockView, node: NodeView) -> float:
    """Predicted seconds for ``node`` to serve one request of ``block``."""
    return block.flops / (max(node.speed, 1e-3) * 1e9)


def busy(block: BlockView, nodes: dict[str, NodeView], holders: int | None = None) -> float:
    """Predicted busy fraction each holder spends on ``block`` (rate spread evenly)."""
    live = [nodes[h] for h in block.holders if h in nodes]
    if not live:
        return 0.0
    mean_s = sum(service_s(block, n) for n in live) / len(live)
    return block.rate * mean_s / max(holders or len(live), 1)


def plan_pass(blocks: list[BlockView], nodes: dict[str, NodeView], now: float,
              policy: Policy = Policy()) -> list[Decision]:
    """This pass's decisions, most valuable first, at most ``policy.max_moves``."""
    free = {n.node_id: n.free_bytes for n in nodes.values()}
    out: list[Decision] = []
    for b in sorted(blocks, key=lambda b: -busy(b, nodes)):
        if len(out) >= policy.max_moves:
            break
        age = now - b.changed_at
        d = _replicate(b, nodes, free, now, policy) if age >= policy.replicate_dwell_s else None
        if d is None and age >= policy.min_dwell_s:
            d = _retire(b, nodes, now, policy) or _migrate(b, nodes, free, now, policy)
        if d is not None:
            out.append(d)
            if d.target:
                free[d.target] -= b.nbytes
    return out


def _targets(b: BlockView, nodes: dict[str, NodeView], free: dict[str, int],
             policy: Policy) -> list[NodeView]:
    """Members that could take ``b``: not holding it, room in RAM, not overloaded; fastest first."""
    ok = [n for n in nodes.values() if n.node_id not in b.holders
          and free.get(n.node_id, 0) >= b.nbytes and n.load < policy.overload]
    return sorted(ok, key=lambda n: (n.relayed, -n.speed / (1 + n.load), n.node_id))


def _replicate(b: BlockView, nodes, free, now, policy) -> Decision | None:
    holders = [nodes[h] for h in b.holders if h in nodes]
    if not holders or len(b.holders) >= policy.max_replicas:
        return None
    if _loop_saturated(b, holders, policy):
        return _replicate_for_loop(b, holders, nodes, free, now, policy)
    per = busy(b, nodes)
    load = min(h.load for h in holders)
    if load < policy.hot_busy:
        return None                # the holders are not actually kept busy
    # Overloaded holders and a block with real traffic: replicate even below hot_busy.
    # Why: busy() counts compute only, and a small block's requests cost their holder
    # mostly per-request work (event loop, codec); moving such a block for "overloaded"
    # (what _migrate would do) only moves its load along with it, a replica splits it.
    crowded = load >= policy.overload and per >= policy.hot_busy * CROWDED_SHARE
    if per < policy.hot_busy and not crowded:
        return None
    targets = _targets(b, nodes, free, policy)
    if not targets:
        return None
    t = targets[0]
    src = max(holders, key=lambda h: h.link_bps)
    after = busy(b, nodes, len(b.holders) + 1)
    why = (f"{len(holders)} holder(s) stay overloaded (load {load:.2f}) with {b.rate:.1f} "
           f"req/s of it ({per:.0%} busy in compute): a replica splits the load" if per <
           policy.hot_busy else f"{b.rate:.1f} req/s keep {len(holders)} holder(s) {per:.0%} busy")
    return Decision("replicate", b.name, b.index, src.node_id, t.node_id,
                    f"{why}; {t.node_id[:8]} has {t.free_bytes} bytes free and load {t.load:.2f}",
                    per - after, b.nbytes / src.link_bps, now, b.rate)


def _loop_saturated(b: BlockView, holders: list[NodeView], policy: Policy) -> bool:
    """Every holder's event loop stays busy and this block is most of what it serves.

    Why a rule of its own: a small block's requests cost its holder mostly per-request
    work on the event loop (X received, decrypted, decoded), which neither the compute
    load nor the block's compute time counts (profiled: the hot holder's loop ~90 %
    busy, its compute threads ~25 %)."""
    return (min(h.loop_busy for h in holders) >= policy.loop_hot
            and b.share >= LOOP_SHARE)


def _replicate_for_loop(b: BlockView, holders: list[NodeView], nodes, free, now,
                        policy) -> Decision | None:
    """A replica on a node whose own loop has room; gain: loop time taken off each holder."""
    fastest = max(_loaded(h).speed for h in holders)
    targets = [t for t in _targets(b, nodes, free, policy) if t.loop_busy < policy.loop_hot
               and _loaded(t).speed >= policy.slow_ratio * fastest]   # never onto a slow node
    if not targets:
        return None
    t, n = targets[0], len(holders)
    loop = sum(h.loop_busy for h in holders) / n
    src = max(holders, key=lambda h: h.link_bps)
    return Decision("replicate", b.name, b.index, src.node_id, t.node_id,
                    f"{n} holder(s)' event loops stay {loop:.0%} busy, {b.share:.0%} of their "
                    f"reads for this block ({b.rate:.1f} req/s): a replica takes requests off "
                    f"them; {t.node_id[:8]} has loop {t.loop_busy:.0%} busy and "
                    f"{t.free_bytes} bytes free", loop * b.share / (n + 1),
                    b.nbytes / src.link_bps, now, b.rate)


def loop_after_retire(b: BlockView, live: list[NodeView]) -> float:
    """Predicted loop busy fraction of the holders left after retiring one replica: the
    block's part of their loop work is shared by one holder fewer."""
    n = len(live)
    loop = sum(h.loop_busy for h in live) / n
    return loop * (1 - b.share) + loop * b.share * n / max(n - 1, 1)


def retire_withheld(b: BlockView, nodes: dict[str, NodeView],
                    policy: Policy = Policy()) -> str:
    """Why ``b`` keeps every holder it has this pass ('' when one may be retired).

    Why a function of its own: a replica that is never retired leaves no decision behind,
    so the reconfigurer logs this reason (a CI run once waited 132 s for a retire with
    nothing in the logs to say which rule held it)."""
    if len(b.holders) <= b.want:
        return ""
    live = [nodes[h] for h in b.holders if h in nodes]
    if len(live) < len(b.holders):
        return "a holder is gone: repair first, retire later"
    after = busy(b, nodes, len(b.holders) - 1)
    if after >= policy.cool_busy:
        return (f"{b.rate:.2f} req/s would keep {len(b.holders) - 1} holder(s) {after:.0%} "
                f"busy in compute (cool below {policy.cool_busy:.0%})")
    loop = loop_after_retire(b, live)
    if loop >= policy.loop_cool:
        return (f"its requests would leave the other holders' event loops {loop:.0%} busy "
                f"(loops {', '.join(f'{n.loop_busy:.0%}' for n in live)}, "
                f"{b.share:.0%} of reads)")
    if b.grown_at_rate and b.rate > b.grown_at_rate * policy.cool_busy / policy.hot_busy:
        return (f"{b.rate:.2f} req/s has not fallen {policy.hot_busy / policy.cool_busy:.0f}x "
                f"below the {b.grown_at_rate:.2f} req/s its last replica was added at")
    return ""


def _retire(b: BlockView, nodes, now, policy) -> Decision | None:
    if len(b.holders) <= b.want or retire_withheld(b, nodes, policy):
        return None
    live = [nodes[h] for h in b.holders if h in nodes]
    after = busy(b, nodes, len(b.holders) - 1)
    slowest = min(live, key=lambda n: (n.speed / (1 + n.load), n.node_id))
    grown = (f" from the {b.grown_at_rate:.2f} req/s its last replica was added at"
             if b.grown_at_rate else "")
    return Decision("retire", b.name, b.index, slowest.node_id, "",
                    f"cooled to {b.rate:.2f} req/s{grown}: {len(b.holders) - 1} holder(s) "
                    f"would be {after:.0%} busy; {len(b.holders)} > {b.want} deployed",
                    -(after - busy(b, nodes)), 0.0, now, b.rate)


def _migrate(b: BlockView, nodes, free, now, policy) -> Decision | None:
    best: Decision | None = None
    share = b.rate / max(len(b.holders), 1)      # requests/s each holder serves
    for h in b.holders:
        src = nodes.get(h)
        if src is None:
            continue           # dead holders are repair's business
        for t in _targets(b, nodes, free, policy)[:1]:
            why = _why_move(src, t, policy)
            if not why:
                continue
            saved = share * policy.horizon_s * (service_s(b, _loaded(src)) - service_s(b, _loaded(t)))
            cost = b.nbytes / max(min(src.link_bps, t.link_bps), 1.0)
            if saved <= policy.margin * cost or saved <= 0:
                continue
            d = Decision("migrate", b.name, b.index, src.node_id, t.node_id,
                         f"{src.node_id[:8]} {why}; saves {saved:.1f}s over "
                         f"{policy.horizon_s:.0f}s vs {cost:.2f}s to move {b.nbytes} bytes",
                         saved, cost, now, b.rate)
            if best is None or d.predicted_gain > best.predicted_gain:
                best = d
    return best


def _loaded(n: NodeView) -> NodeView:
    """The speed a request actually gets from ``n``: its load shares the cores, and a
    relayed link halves it (the scorer's penalty: every byte crosses TURN)."""
    speed = n.speed / (1 + max(n.load, 0.0)) * (RELAY_PENALTY if n.relayed else 1.0)
    return NodeView(n.node_id, speed, n.load, n.free_bytes, n.relayed, n.link_bps)


def _why_move(src: NodeView, t: NodeView, policy: Policy) -> str:
    """Why ``src`` is a worse home than ``t`` ('' when it is not)."""
    if src.relayed and not t.relayed:
        return "is reachable only through a relay"
    if src.load >= policy.overload and t.load < policy.overload / 2:
        return f"stays overloaded (load {src.load:.2f})"
    if _loaded(src).speed < policy.slow_ratio * _loaded(t).speed:
        return (f"stays slow ({_loaded(src).speed:.2f} vs {_loaded(t).speed:.2f} "
                "GFLOP/s effective)")
    return ""


#: End-to-end evidence lowers a node's speed only when it puts the node this many times
#: below its own claim, relative to how the other nodes' claims compare end to end.
E2E_SLOW = 3.0


def with_e2e_evidence(own: dict[str, float], e2e: dict[str, float], me: str) -> dict[str, float]:
    """Each node's serving speed, lowered where this node's end-to-end measurements of it
    (as a coordinator) say it is much slower than it measures itself.

    Why: a node starved of CPU only *between* computations (a CPU quota, small requests)
    measures its own compute at full speed, while its requests take many times longer end
    to end. Why so guarded: end-to-end figures include transfer and queueing and are of
    another kind than a node's own serving speed; comparing the two directly made nodes
    swap a block back and forth (an earlier round). So the end-to-end figures are first
    put on the serving scale by the *median* ratio end-to-end / own over the other nodes
    measured both ways (at least three, so one outlier cannot set the scale), only remote
    nodes count (this node's own reads have no transfer), and a node is lowered only when
    it falls ``E2E_SLOW`` times below its own claim: equal nodes' noise stays far inside.
    """
    both = [n for n, v in own.items() if n != me and v and e2e.get(n)]
    if len(both) < 3:
        return dict(own)
    ratios = sorted(e2e[n] / own[n] for n in both)
    scale = ratios[len(ratios) // 2]
    out = dict(own)
    for n in both:
        scaled = e2e[n] / scale
        if scaled * E2E_SLOW < own[n]:
            out[n] = scaled
    return out


def migration_bound(blocks: int, seconds: float, policy: Policy = Policy()) -> int:
    """Most migrations the dwell rule allows for ``blocks`` blocks over ``seconds``."""
    return blocks * (math.floor(seconds / policy.min_dwell_s) + 1)


@dataclass
class DecisionLog:
    """The last decisions, oldest first (bounded), with what was measured after each."""

    limit: int = 200
    entries: list[dict] = field(default_factory=list)

    def add(self, d: Decision, measured_before: float | None = None) -> None:
        self.entries.append(d.to_dict() | {"measured_before": measured_before,
                                           "measured_after": None})
        del self.entries[: max(0, len(self.entries) - self.limit)]
