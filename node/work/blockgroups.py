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
from protocol.errors import DecodeError, ProtocolError
from protocol.work import MAX_INFER_BLOCKS, read_infer_blocks_result


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


def read_parts(value: Any, shapes: list[tuple[int, int]],
               node: str) -> tuple[list[np.ndarray | str], float | None]:
    """The parts of a holder's reply to ``InferBlocks`` (an ``InferBlocksResult``, or the
    untyped map of an older holder), checked against the blocks asked for, and the
    holder's own seconds serving the request (None from an older holder without a sane
    figure).

    Each entry is the block's rows (a float32 array of exactly its shape) or the holder's
    one-line error for that block alone. Anything else is the holder's protocol error,
    which fails the whole request over: a reply that does not decode as the message, an
    entry count other than the blocks', an array of another shape or type.
    """
    try:
        parts, held = read_infer_blocks_result(value)
    except DecodeError as exc:
        raise ProtocolError(f"{node[:8]} answered an infer request with a bad reply: "
                            f"{exc}") from None
    if len(parts) != len(shapes):
        raise ProtocolError(f"{node[:8]} answered {len(parts)} part(s) for {len(shapes)} "
                            "block(s)")
    for part, shape in zip(parts, shapes):
        if isinstance(part, str):
            continue
        if part.shape != shape or part.dtype != np.float32:
            raise ProtocolError(f"{node[:8]} returned a {part.dtype} array of shape "
                                f"{part.shape}, expected float32 of shape {shape}")
    return parts, held
