"""Which blocks of one ``infer`` request travel together, and what a grouped reply may be.

Why: a deployed W is cut into row blocks of at most 32 MiB, so at N=16384 each of two
holders has 16 of them. One ``InferBlock`` per block shipped X sixteen times to the same
peer (64 MiB sealed, sent and unsealed per B=64 request instead of 4 MiB) and made it
schedule sixteen reads. Here a request's blocks are grouped by the holder each one is
sent to, so X travels once per (holder, request) in one ``InferBlocks``. Which holder a
block goes to is still chosen per block, and a block whose holder fails goes on to its
own next holder, grouped again with the others that failed over to the same node.

Sans I/O: blocks, holder orders and a reply value in; groups and checked parts out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compute.lazynumpy import np

from compute.partition import Block
from protocol.errors import ProtocolError
from protocol.work import MAX_INFER_BLOCKS


@dataclass
class BlockTry:
    """One block of a request: the holders still to try (best first) and their failures."""

    blk: Block
    flops: float
    order: list[str]
    errors: list[str] = field(default_factory=list)

    @property
    def holder(self) -> str:
        """The holder this block is sent to next."""
        return self.order[0]


def group_by_holder(tries: list[BlockTry],
                    limit: int = MAX_INFER_BLOCKS) -> list[tuple[str, list[BlockTry]]]:
    """The blocks grouped by the holder each one goes to next, one group per request.

    Groups keep the order blocks were given in (first holder seen first, blocks in order
    within each), and a holder with more than ``limit`` blocks gets several groups (a peer
    refuses a longer list). Every block with a holder left is in exactly one group.
    """
    by_node: dict[str, list[BlockTry]] = {}
    for t in tries:
        by_node.setdefault(t.holder, []).append(t)
    return [(node, group[i:i + limit]) for node, group in by_node.items()
            for i in range(0, len(group), limit)]


def fail_over(failed: list[tuple[BlockTry, str]]) -> tuple[list[BlockTry], list[BlockTry]]:
    """After their holder failed: each block moves on to its next holder.

    Returns (blocks that have a holder left, blocks that have none): the failed holder
    leaves each block's order and its error joins the block's list.
    """
    again, exhausted = [], []
    for t, error in failed:
        t.errors.append(f"{t.order[0][:8]}: {error}")
        t.order = t.order[1:]
        (again if t.order else exhausted).append(t)
    return again, exhausted


def read_parts(value: Any, shapes: list[tuple[int, int]], node: str) -> list[np.ndarray | str]:
    """The parts of a peer's ``InferBlocks`` reply, checked against the expected shapes.

    Each entry is the block's rows (an array of exactly its shape) or the peer's one-line
    error for that block alone. Anything else is the peer's protocol error, which fails
    the whole request over: a reply that is not ``{"parts": [...]}`` with one entry per
    block, or an array of another shape.
    """
    parts = value.get("parts") if isinstance(value, dict) else None
    if not isinstance(parts, list) or len(parts) != len(shapes):
        got = len(parts) if isinstance(parts, list) else type(value).__name__
        raise ProtocolError(f"{node[:8]} answered {got} for {len(shapes)} block(s)")
    for part, shape in zip(parts, shapes):
        if isinstance(part, str):
            continue
        if not isinstance(part, np.ndarray) or part.shape != shape:
            got = getattr(part, "shape", type(part).__name__)
            raise ProtocolError(f"{node[:8]} returned {got}, expected an array of shape "
                                f"{shape}")
    return parts


def compute_seconds(value: Any) -> float | None:
    """The holder's own seconds serving the request, if its reply carries a sane one."""
    s = value.get("compute_s") if isinstance(value, dict) else None
    if isinstance(s, (int, float)) and not isinstance(s, bool) and 0.0 <= s < 1e6:
        return float(s)
    return None
