"""The transfer-aware split of a one-shot matmul: how many rows of A each node computes.

Why not split by compute speed alone (``compute.partition.plan_rows``): a peer's share costs
more than its compute. For ``A (m x k) @ B (k x n)`` a peer receives its rows of A and
*all* of B, and sends its rows of Y back, over an encrypted link that carries a few
hundred MB/s; the coordinator pays none of that. B's bytes do not shrink with the peer's
share, so an even split makes the peer finish last. Here each node gets the share that
makes the predicted finish times equal:

    this node:  d * sum over peers with a share (B + their rows of A) / H  +  r * f / v
    a peer:     latency + B / L  +  r * (t + p - (1 - 1/c) * min(t, p)),
                t = (row of A + row of Y) / L,  p = f / v

with ``f = 2 k n`` flops a row, ``v`` the node's measured speed (a peer's from its own
report of its compute time; this node's, when peers have shares, its speed measured beside
theirs: ``local_with_peers``), ``L`` the measured rate of the share's path (sealing here,
the wire, opening and validating there, and the rows back: a share's round trip less the
peer's compute) and ``H`` the rate at which this node seals and hands a peer's operands
to the link. ``d`` is the part of that sealing which delays this node's own share: 1 when
the share waits for the hand-over, ``1 / threads`` when it computes alongside on every
compute thread (the job manager's way since oneshot4: the loop's sealing then takes one
core of the share's ``threads`` while it lasts). A peer's share travels as B and then
``c`` row chunks (``chunk_rows``), each computed as it arrives: in a pipeline of ``c``
even chunks only one chunk's transfer or compute, the smaller, is not overlapped by the
other, hence the ``min`` term (``c = 1``: one message, nothing overlapped). The peer's
end (opening, validating, sealing Y) is inside ``L``. Equal
finish times make a linear system for each set of peers given shares; peers join in
order of their fixed cost, and the valid set (no negative share) with the lowest finish
time wins, this node alone included. A peer whose fixed cost (latency and moving B) is
not below the time this node would need for everything gets no share.

A peer on this node's own host (``cohost``: same kernel, so the same cores) gets no share
at all: its compute runs on the cores this node's share runs on, so it adds no speed,
only the cost of moving its operands through the link (on the 2-core bench machine an
even N=2048 split between two co-hosted daemons took 284 ms against numpy's 115 ms, quiet;
see bench/README.md for the same job kept on one of them).

Pure functions over a snapshot (:class:`ShareCost`); the job manager measures the inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from compute.device import DeviceProfile
from compute.partition import Block, NodeSlot, PartitionPlan

FLOAT32 = 4
#: Row chunks a peer's share is sent in at most, and the fewest bytes of A worth a chunk.
MAX_CHUNKS = 4
MIN_CHUNK_BYTES = 1 << 20
#: A split must be predicted this much faster than the job kept whole, or the job stays
#: whole. Why: the model's finish times agree with the measured ones within 5-6 %
#: (bench/README.md, oneshot3), so a smaller predicted gain is inside its error, while a
#: peer share surely costs moving all of B: on the bench's 2-core host a split N=2048 job
#: used up to ~575 ms of CPU against ~395 ms kept whole (oneshot5's accounting run), and a
#: 128-row peer share (6 % of the rows) moved B's 16 MiB for a gain of a few ms predicted.
MIN_SPLIT_GAIN = 0.10
#: A job is kept whole to measure this node alone only if that is predicted to take at most
#: this many times the split's finish: between a slow coordinator and much faster peers the
#: measuring job would cost more than the figure can win back.
MEASURE_ALONE_COST = 2.0


@dataclass(frozen=True)
class ShareCost:
    """What is known of one candidate for a share (a snapshot of measurements)."""

    node_id: str
    gflops: float             # measured one-shot compute speed there, GFLOP/s
    link_bps: float = 0.0     # measured bytes/s of the share's path to it and back (0 here)
    latency_s: float = 0.0    # fixed cost of one share there: a round trip
    local: bool = False       # this node: no transfer at all
    cohost: bool = False      # shares this node's cores (same host)
    #: bytes/s at which *this* node seals and hands over the operands of a share for it
    #: (0: unknown, counted as free). The sealing (per peer with a share, all of B and its
    #: rows of A) delays this node's own share: wholly when the share waits for it, by
    #: ``handover_delay`` of it when the share computes alongside (``transfer_split``).
    handover_bps: float = 0.0
    #: row chunks a share for this peer is sent in (1: one message, no overlap)
    chunks: int = 1
    #: this node only: its measured speed while peers' shares ran beside its own (0: not
    #: measured, taken as ``gflops``). Net of its own sealing like ``gflops``; slower when
    #: a peer's opening and compute take cores from it (``local_with_peers``).
    alongside_gflops: float = 0.0


@dataclass(frozen=True)
class Split:
    """Rows per node, in row order (every listed node has rows), and predicted seconds."""

    rows: tuple[tuple[str, int], ...]
    predicted_s: dict[str, float]

    def plan(self, shape: tuple[int, int], device: str | None) -> PartitionPlan:
        """The split as a plan: one consecutive block of rows per node."""
        blocks, pos = [], 0
        for i, (node, rows) in enumerate(self.rows):
            blocks.append(Block(i, pos, pos + rows, [node]))
            pos += rows
        return PartitionPlan((int(shape[0]), int(shape[1])), device, blocks)


def fixed_cost(c: ShareCost, k: int, n: int, itemsize: int = FLOAT32) -> float:
    """Seconds a share on ``c`` costs whatever its size: the round trip and all of B."""
    return 0.0 if c.local else c.latency_s + k * n * itemsize / c.link_bps


def row_cost(c: ShareCost, k: int, n: int, itemsize: int = FLOAT32) -> float:
    """Seconds each row of a share on ``c`` costs: compute, plus its A and Y rows' transfer
    less what a chunked share overlaps of the two (see the module's docstring)."""
    compute = 2.0 * k * n / (c.gflops * 1e9)
    if c.local:
        return compute
    transfer = (k + n) * itemsize / c.link_bps
    return compute + transfer - (1.0 - 1.0 / c.chunks) * min(compute, transfer)


def local_with_peers(local: ShareCost) -> ShareCost:
    """This node as it computes while peers have shares: at its speed measured alongside
    them when known. Why: on a machine whose cores a peer shares (daemons standing for
    hosts in a lab, or a host the split cannot know is shared) the peer's opening of B and
    its compute slow this node's own rows; measured, that is a split that cannot pay, and
    a rule by rates rather than by a declared host keeps the job whole. Between hosts the
    two speeds agree and nothing changes."""
    if local.alongside_gflops > 0:
        return replace(local, gflops=local.alongside_gflops)
    return local


def measuring_alone_affordable(split: Split, local: ShareCost, m: int, k: int, n: int,
                               factor: float = MEASURE_ALONE_COST,
                               itemsize: int = FLOAT32) -> bool:
    """Whether keeping this ``m``-row job whole (at ``local``'s speed, the best figure there
    is) is predicted to take at most ``factor`` times the finish of ``split``: the price of
    measuring this node's speed alone once (the job manager's ``split.by = "measure"``)."""
    whole = m * row_cost(local, k, n, itemsize)
    return whole <= factor * max(split.predicted_s.values())


def handover_cost(c: ShareCost, rows: int, k: int, n: int, itemsize: int = FLOAT32) -> float:
    """Seconds this node spends sealing and handing over a share of ``rows`` rows for peer
    ``c`` (all of B and its rows of A) before its own share can start; 0 for no share."""
    if c.local or rows <= 0:
        return 0.0
    return (k * n + rows * k) * itemsize * _per_byte(c)


def transfer_split(m: int, k: int, n: int, nodes: Sequence[ShareCost], unit: int = 1,
                   itemsize: int = FLOAT32, handover_delay: float = 1.0,
                   min_gain: float = MIN_SPLIT_GAIN) -> Split:
    """Rows of an ``m x k`` A per node so that predicted finish times are equal.

    ``unit``: shares are whole multiples of it (a device's tile rows), but for the last
    node's, which ends at ``m``. ``handover_delay``: the part of the hand-over that
    delays this node's own share (``d`` above). ``min_gain``: the part of the whole job's
    time a split must be predicted to save, else the job stays whole (``MIN_SPLIT_GAIN``).
    Raises ValueError on a snapshot that makes no sense.
    """
    _check(m, k, n, nodes, unit)
    if not 0.0 <= handover_delay <= 1.0:
        raise ValueError(f"handover_delay must be within [0, 1], got {handover_delay}")
    if not 0.0 <= min_gain < 1.0:
        raise ValueError(f"min_gain must be within [0, 1), got {min_gain}")
    eligible = [c for c in nodes if c.local or not c.cohost]
    local = next(c for c in eligible if c.local)
    peers = [c for c in eligible if not c.local]
    units = -(-m // unit)
    share = _level_shares(units, local, peers, k, n, unit, itemsize, handover_delay,
                          min_gain)
    whole = _round(share, units)
    order = [c.node_id for c in eligible if whole.get(c.node_id)]
    rows, left = [], m
    for i, nid in enumerate(order):
        r = left if i == len(order) - 1 else whole[nid] * unit
        rows.append((nid, r))
        left -= r
    return Split(tuple(rows), _predicted(dict(rows), local, peers, k, n, itemsize,
                                         handover_delay))


def _level_shares(units: int, local: ShareCost, peers: list[ShareCost], k: int, n: int,
                  unit: int, itemsize: int, delay: float = 1.0,
                  min_gain: float = 0.0) -> dict[str, float]:
    """Units per node (real numbers) at the lowest common finish time ``T``.

    With the peers ``S`` given shares, in units (``u``), equal finish times say
    ``T = F_p + u_p P_p`` for each peer and ``T = sum(H_p + h_p u_p) + u_l P_l`` for this
    node (``H_p``, ``h_p``: its hand-over of B and of a unit of A rows for peer ``p``), and
    the units add up: a linear system in ``T``. Peers join in order of their fixed cost;
    the set whose solution is valid (no share below 0) and lowest in ``T`` wins, this
    node alone included (always valid), but for ``min_gain``: a set of peers must beat
    this node alone by that part of its time."""
    whole_t = units * row_cost(local, k, n, itemsize) * unit
    best_t, best = whole_t * (1.0 - min_gain), {local.node_id: float(units)}
    P_l = row_cost(local_with_peers(local), k, n, itemsize) * unit    # beside peers' shares
    ordered = sorted(peers, key=lambda c: (fixed_cost(c, k, n, itemsize), c.node_id))
    for count in range(1, len(ordered) + 1):
        active = ordered[:count]
        F = {c.node_id: fixed_cost(c, k, n, itemsize) for c in active}
        P = {c.node_id: row_cost(c, k, n, itemsize) * unit for c in active}
        H = {c.node_id: delay * _per_byte(c) * k * n * itemsize for c in active}
        h = {c.node_id: delay * _per_byte(c) * unit * k * itemsize for c in active}
        denom = 1.0 + sum((P_l - h[i]) / P[i] for i in F)
        if denom <= 0:
            continue
        t = (units * P_l + sum(F[i] * (P_l - h[i]) / P[i] for i in F) + sum(H.values())) / denom
        got = {i: (t - F[i]) / P[i] for i in F}
        got[local.node_id] = (t - sum(H.values()) - sum(h[i] * got[i] for i in F)) / P_l
        if min(got.values()) >= 0 and t < best_t:
            best_t, best = t, got
    return best


def _per_byte(c: ShareCost) -> float:
    """Seconds this node spends handing over one byte for ``c`` (0 when not measured)."""
    return 1.0 / c.handover_bps if c.handover_bps > 0 else 0.0


def _predicted(rows: dict[str, int], local: ShareCost, peers: list[ShareCost], k: int,
               n: int, itemsize: int, delay: float = 1.0) -> dict[str, float]:
    """Predicted finish seconds of each node with rows, by the same model."""
    out = {c.node_id: fixed_cost(c, k, n, itemsize) + r * row_cost(c, k, n, itemsize)
           for c in peers if (r := rows.get(c.node_id, 0))}
    if local.node_id in rows:
        own = local_with_peers(local) if any(rows.get(c.node_id) for c in peers) else local
        out[local.node_id] = (delay * sum(handover_cost(c, rows.get(c.node_id, 0), k, n,
                                                        itemsize) for c in peers)
                              + rows[local.node_id] * row_cost(own, k, n, itemsize))
    return out


def _round(share: dict[str, float], units: int) -> dict[str, int]:
    """Whole units summing to ``units``: floors, then the largest remainders."""
    whole = {nid: max(0, math.floor(s)) for nid, s in share.items()}
    by_rest = sorted(share, key=lambda nid: (-(share[nid] - whole[nid]), nid))
    short = units - sum(whole.values())
    for nid in by_rest[:max(0, short)]:
        whole[nid] += 1
    while sum(whole.values()) > units:      # floating error: take from the largest
        whole[max(whole, key=whole.get)] -= 1
    return whole


def _check(m: int, k: int, n: int, nodes: Sequence[ShareCost], unit: int) -> None:
    if min(m, k, n, unit) <= 0:
        raise ValueError(f"shape and unit must be positive, got {m}x{k} @ {k}x{n}, unit {unit}")
    if sum(c.local for c in nodes) != 1:
        raise ValueError("the snapshot needs exactly one local node")
    if len({c.node_id for c in nodes}) != len(nodes):
        raise ValueError("duplicate node ids in the snapshot")
    for c in nodes:
        if c.cohost and not c.local:      # gets no share: its figures are not used
            continue
        if not (math.isfinite(c.gflops) and c.gflops > 0):
            raise ValueError(f"node {c.node_id}: speed must be a positive number")
        if not c.local and not (math.isfinite(c.link_bps) and c.link_bps > 0
                                and math.isfinite(c.latency_s) and c.latency_s >= 0):
            raise ValueError(f"node {c.node_id}: link speed must be positive, latency >= 0")
        if not (math.isfinite(c.handover_bps) and c.handover_bps >= 0):
            raise ValueError(f"node {c.node_id}: hand-over rate must be a number >= 0")
        if not (math.isfinite(c.alongside_gflops) and c.alongside_gflops >= 0):
            raise ValueError(f"node {c.node_id}: speed alongside peers must be a number >= 0")
        if not (isinstance(c.chunks, int) and c.chunks >= 1):
            raise ValueError(f"node {c.node_id}: chunks must be a whole number >= 1")


def chunk_rows(start: int, stop: int, k: int, unit: int = 1, itemsize: int = FLOAT32,
               max_chunks: int = MAX_CHUNKS, min_bytes: int = MIN_CHUNK_BYTES
               ) -> list[tuple[int, int]]:
    """Rows ``[start, stop)`` of a peer's share cut into the row chunks it is sent in.

    At most ``max_chunks`` near-even chunks of whole ``unit`` rows counted from ``start``
    (a share starts on a unit: the chunks then program exactly the device tiles the
    whole share would, so they give the same numbers), none below ``min_bytes`` of A (a
    chunk costs a message and a round of thread hops); the last ends at ``stop``. Why
    even: a pipeline of even chunks leaves one chunk's time unoverlapped, which is
    smallest with the most chunks worth their overhead.
    """
    if stop <= start or min(k, unit, max_chunks) <= 0:
        raise ValueError(f"no rows to chunk: [{start}, {stop}), k={k}, unit={unit}")
    units = -(-(stop - start) // unit)
    by_bytes = (stop - start) * k * itemsize // max(1, min_bytes)
    count = max(1, min(max_chunks, units, by_bytes))
    bounds = [start + round(i * units / count) * unit for i in range(count)] + [stop]
    return [(r0, r1) for r0, r1 in zip(bounds, bounds[1:]) if r1 > r0]


def fits_memory(rows: Sequence[tuple[str, int]], slots: Sequence[NodeSlot], k: int,
                device: DeviceProfile | None = None) -> bool:
    """Whether every node's share of A (its rows, K columns, programmed on ``device`` or
    its own) fits its free memory: the limit the capacity split (``plan_rows``) enforces,
    which a split chosen for time alone must not step over."""
    free = {s.node_id: s for s in slots}
    return all(r == 0 or (device or free[nid].device).resident_bytes((r, k)) <= free[nid].free_bytes
               for nid, r in rows)
