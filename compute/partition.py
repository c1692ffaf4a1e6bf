"""Dynamic partitioning: which row blocks of W go to which node.

Why rows: a row block of W produces a disjoint slice of the output Y = W @ X,
so nodes need no cross-node accumulation; every node receives the full X.

The planner (1) aligns blocks to the tile row granularity of every device
involved, so that each holder programs whole tiles and (thanks to keying noise
by global tile row) gets the same state wherever the block lands; (2) sizes
each node's primary share in proportion to its capacity estimate, capped by
what its free memory can hold once replicas are counted; (3) places replicas
of every block on distinct other nodes, least loaded (per unit of capacity)
first, never past a node's free bytes. The plan is plain data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from compute.crossbar import row_granularity
from compute.device import DeviceProfile

PLAN_FORMAT = "sedma.plan/1"


class PlacementError(ValueError):
    """The matrix cannot be placed on these nodes within their memory budgets."""


@dataclass
class NodeSlot:
    """A candidate node: its speed estimate, free memory and crossbar device."""

    node_id: str
    capacity: float
    free_bytes: int
    device: DeviceProfile


@dataclass
class Block:
    """Rows [row_start, row_stop) of W; nodes[0] is the primary, the rest replicas."""

    index: int
    row_start: int
    row_stop: int
    nodes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start


@dataclass
class PartitionPlan:
    """Row blocks of one (M, K) matrix and their holders."""

    shape: tuple[int, int]
    device: str | None
    blocks: list[Block]

    def to_dict(self) -> dict:
        """msgpack-able dict."""
        return {
            "format": PLAN_FORMAT,
            "shape": [int(self.shape[0]), int(self.shape[1])],
            "device": self.device,
            "blocks": [
                {"index": b.index, "row_start": b.row_start, "row_stop": b.row_stop, "nodes": list(b.nodes)}
                for b in self.blocks
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PartitionPlan":
        """Parse and validate: blocks must tile [0, M) in order, each with >= 1 distinct node."""
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise ValueError(f"not a partition plan (format must be {PLAN_FORMAT!r})")
        shape = d.get("shape")
        if not (isinstance(shape, (list, tuple)) and len(shape) == 2
                and all(isinstance(v, int) and v > 0 for v in shape)):
            raise ValueError(f"bad plan shape: {shape!r}")
        device = d.get("device")
        if device is not None and not isinstance(device, str):
            raise ValueError(f"plan device must be a string or None, got {device!r}")
        raw = d.get("blocks")
        if not isinstance(raw, list) or not raw:
            raise ValueError("plan must have a non-empty list of blocks")
        blocks = [_parse_block(b) for b in raw]
        _check_cover(blocks, int(shape[0]))
        return cls((int(shape[0]), int(shape[1])), device, blocks)

    def rows_by_node(self) -> dict[str, int]:
        """Rows each node computes as primary holder (the work split)."""
        out: dict[str, int] = {}
        for b in self.blocks:
            out[b.nodes[0]] = out.get(b.nodes[0], 0) + b.rows
        return out

    def held_rows_by_node(self) -> dict[str, int]:
        """Rows each node stores, replicas included (the memory split)."""
        out: dict[str, int] = {}
        for b in self.blocks:
            for n in b.nodes:
                out[n] = out.get(n, 0) + b.rows
        return out


def _parse_block(b: object) -> Block:
    if not isinstance(b, dict):
        raise ValueError(f"plan block must be a dict, got {type(b).__name__}")
    try:
        idx, r0, r1, nodes = b["index"], b["row_start"], b["row_stop"], b["nodes"]
    except KeyError as exc:
        raise ValueError(f"plan block is missing {exc}") from None
    if not all(isinstance(v, int) for v in (idx, r0, r1)) or not 0 <= r0 < r1:
        raise ValueError(f"bad block rows: {b!r}")
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise ValueError(f"block {idx} needs a non-empty list of node ids")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"block {idx} lists a node twice: {nodes}")
    return Block(idx, r0, r1, list(nodes))


def _check_cover(blocks: list[Block], m: int) -> None:
    pos = 0
    for i, b in enumerate(blocks):
        if b.index != i or b.row_start != pos:
            raise ValueError(f"blocks must be indexed in order and contiguous; block {i} starts at {b.row_start}")
        pos = b.row_stop
    if pos != m:
        raise ValueError(f"blocks cover rows [0, {pos}) but the matrix has {m} rows")


# ---------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------

def _water_fill(weights: list[float], caps: list[int], total: int) -> list[int]:
    """Integers summing to ``total``, proportional to weights, each <= its cap."""
    share = [0.0] * len(weights)
    free = [i for i in range(len(weights)) if caps[i] > 0 and weights[i] > 0]
    left = float(total)
    while free and left > 1e-9:
        wsum = sum(weights[i] for i in free)
        over = [i for i in free if left * weights[i] / wsum >= caps[i]]
        if not over:
            for i in free:
                share[i] = left * weights[i] / wsum
            break
        for i in over:
            share[i] = float(caps[i])
            left -= caps[i]
            free.remove(i)
    ints = [min(caps[i], math.floor(share[i] + 1e-9)) for i in range(len(weights))]
    order = sorted(range(len(weights)), key=lambda i: (-(share[i] - ints[i]), -weights[i], i))
    short = total - sum(ints)
    while short > 0:
        progressed = False
        for i in order:
            if short and ints[i] < caps[i] and weights[i] > 0:
                ints[i] += 1
                short -= 1
                progressed = True
        if not progressed:
            break
    return ints


def unit_rows(profiles: list[DeviceProfile]) -> int:
    """Alignment unit: every involved device must see whole tile rows."""
    unit = 1
    for p in profiles:
        unit = math.lcm(unit, row_granularity(p))
    return unit


def _split(units: int, pieces: int) -> list[int]:
    """Cut ``units`` into at most ``pieces`` near-equal non-empty parts."""
    pieces = max(1, min(pieces, units))
    base, extra = divmod(units, pieces)
    return [base + (1 if i < extra else 0) for i in range(pieces)]


def _check_nodes(nodes: list[NodeSlot], replicas: int, max_blocks_per_node: int) -> None:
    if not nodes:
        raise PlacementError("no nodes to place the matrix on")
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate node ids: {ids}")
    for n in nodes:
        if not (math.isfinite(n.capacity) and n.capacity >= 0) or n.free_bytes < 0:
            raise ValueError(f"node {n.node_id}: capacity must be >= 0 and free_bytes >= 0")
    if all(n.capacity <= 0 for n in nodes):
        raise PlacementError("every node reports zero capacity")
    if replicas < 1 or max_blocks_per_node < 1:
        raise ValueError("replicas and max_blocks_per_node must be >= 1")


def plan_rows(shape: tuple[int, int], nodes: list[NodeSlot], *, device: DeviceProfile | None = None,
              replicas: int = 1, max_blocks_per_node: int = 1) -> PartitionPlan:
    """Split W's rows over nodes by capacity, within memory, with replicas.

    ``device=None``: each node programs with its own device; blocks align to
    the lcm of all nodes' row granularities. A device given: every block uses
    it. ``max_blocks_per_node`` caps how many blocks a node is primary of
    (its share is cut into that many near-equal blocks, which lets replicas
    spread more evenly). Raises PlacementError when it cannot fit.
    """
    m, k = int(shape[0]), int(shape[1])
    if m <= 0 or k <= 0:
        raise ValueError(f"shape must be positive, got {shape}")
    _check_nodes(nodes, replicas, max_blocks_per_node)
    r = min(replicas, len(nodes))
    prof = [device or n.device for n in nodes]
    unit = unit_rows(prof)
    n_units = -(-m // unit)
    unit_cost = [p.resident_bytes((unit, k)) for p in prof]
    caps = [min(n_units, n.free_bytes // c) for n, c in zip(nodes, unit_cost)]
    if sum(caps) < r * n_units:
        need = r * n_units * unit
        raise PlacementError(
            f"cannot fit a {m}x{k} matrix x{r} replica(s): the nodes' free memory holds "
            f"{sum(caps) * unit} rows in total, {need} needed ({unit}-row alignment)")
    weights = [max(0.0, float(n.capacity)) for n in nodes]
    held = _water_fill(weights, caps, r * n_units)  # memory-feasible balanced holdings
    primary = _water_fill(weights, held, n_units)
    if sum(primary) < n_units:
        raise PlacementError(
            f"nodes with capacity > 0 can hold only {sum(primary) * unit} of {m} rows as primary")
    blocks = _primary_blocks(nodes, primary, unit, m, max_blocks_per_node)
    _place_replicas(blocks, nodes, prof, k, r)
    return PartitionPlan((m, k), device.name if device else None, blocks)


def _primary_blocks(nodes: list[NodeSlot], primary: list[int], unit: int, m: int,
                    max_blocks: int) -> list[Block]:
    """Consecutive row ranges, highest-capacity nodes first."""
    order = sorted(range(len(nodes)), key=lambda i: (-nodes[i].capacity, nodes[i].node_id))
    blocks: list[Block] = []
    pos = 0
    for i in order:
        for units in _split(primary[i], max_blocks) if primary[i] else []:
            stop = min(m, pos + units * unit)
            blocks.append(Block(len(blocks), pos, stop, [nodes[i].node_id]))
            pos = stop
    return blocks


def _place_replicas(blocks: list[Block], nodes: list[NodeSlot], prof: list[DeviceProfile], k: int,
                    r: int) -> None:
    """Add r-1 distinct replica holders per block, least loaded per capacity first."""
    idx = {n.node_id: i for i, n in enumerate(nodes)}
    used = [0] * len(nodes)
    rows = [0] * len(nodes)
    for b in blocks:
        i = idx[b.nodes[0]]
        used[i] += prof[i].resident_bytes((b.rows, k))
        rows[i] += b.rows
    for b in sorted(blocks, key=lambda b: -b.rows):
        for _ in range(r - 1):
            best = _best_holder(b, nodes, prof, k, used, rows)
            if best is None:
                raise PlacementError(
                    f"no node has room for a replica of rows [{b.row_start}, {b.row_stop}) "
                    f"(block {b.index}); add memory or lower replicas")
            used[best] += prof[best].resident_bytes((b.rows, k))
            rows[best] += b.rows
            b.nodes.append(nodes[best].node_id)


def _best_holder(b: Block, nodes: list[NodeSlot], prof: list[DeviceProfile], k: int,
                 used: list[int], rows: list[int]) -> int | None:
    best, best_key = None, None
    for i, n in enumerate(nodes):
        if n.node_id in b.nodes or used[i] + prof[i].resident_bytes((b.rows, k)) > n.free_bytes:
            continue
        key = (rows[i] / max(n.capacity, 1e-12), -n.free_bytes + used[i], n.node_id)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best
