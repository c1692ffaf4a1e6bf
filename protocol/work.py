"""Messages that move matrix work between nodes.

Active storage: ``store_block`` ships a row block of W once; afterwards ``infer_blocks``
moves only the input X to each holder (once, whatever the number of its blocks) and the
partial outputs back. ``matmul`` is the
one-shot path where both operands travel.
"""

from __future__ import annotations

import math
from typing import Any

from compute.lazynumpy import np

from protocol.errors import DecodeError
from protocol.messages import from_wire, message, to_wire


@message("work.matmul")
class MatmulShare:
    """Compute ``a @ b`` where ``a`` is rows [row_offset, row_offset+len(a)) of A."""

    rid: int
    job_id: str
    a: np.ndarray
    b: np.ndarray
    device: str | None
    seed: int
    row_offset: int


@message("work.matmul_result")
class MatmulShareResult:
    """A peer's answer to :class:`MatmulShare`: its rows of the product and the seconds
    its compute took (``compute_s``: the product alone, not decoding, validation or the
    link). Why the figure travels: the asker sees only a round trip, and splitting that
    into link and compute by estimate mixed the two (bench/README.md, oneshot3); the
    peer's own clock is the one that saw its compute."""

    y: np.ndarray
    compute_s: float


def share_result_wire(y: np.ndarray, compute_s: float) -> dict[str, Any]:
    """The reply value a peer sends for a :class:`MatmulShare`."""
    return to_wire(MatmulShareResult(y, float(compute_s)))


def read_share_result(value: Any) -> tuple[Any, float | None]:
    """``(y, compute_s)`` from a peer's reply to :class:`MatmulShare`.

    A bare array (a peer from before ``compute_s``) gives ``compute_s`` None; a map is
    checked as a :class:`MatmulShareResult` (tag, fields, types; DecodeError otherwise),
    and a time that is not a finite number >= 0 is the peer's error. The shape of ``y``
    is the asker's to check: only it knows the share it sent."""
    if not isinstance(value, dict):
        return value, None
    got = from_wire(value)
    if not isinstance(got, MatmulShareResult):
        raise DecodeError(f"a matmul share was answered with {got.TAG}")
    if not (math.isfinite(got.compute_s) and got.compute_s >= 0):
        raise DecodeError(f"work.matmul_result.compute_s: {got.compute_s} is not a time")
    return got.y, got.compute_s


@message("work.store_block")
class StoreBlock:
    """Program and keep resident rows [row_start, row_start+len(w)) of matrix ``name``."""

    rid: int
    name: str
    index: int
    row_start: int
    w: np.ndarray
    device: str | None
    seed: int


@message("work.infer_block")
class InferBlock:
    """Return ``W_block @ x`` for a resident block (one block; a coordinator sends
    :class:`InferBlocks`, which carries X once for all of a holder's blocks)."""

    rid: int
    name: str
    index: int
    x: np.ndarray
    read_seed: int


@message("work.infer_blocks")
class InferBlocks:
    """Return ``W_b @ x`` for each resident block ``b`` of ``indices``: X travels once per
    holder and request, not once per block (at N=16384 a holder has 16 blocks of W).

    Answered with an :class:`InferBlocksResult`.
    """

    rid: int
    name: str
    indices: list[int]
    x: np.ndarray
    read_seed: int


@message("work.infer_blocks_result")
class InferBlocksResult:
    """A holder's answer to :class:`InferBlocks`: one entry per index, in the order of
    ``indices``, each the block's rows of the product or a one-line error (that block
    alone fails over; the rest are used), and the seconds the holder spent serving the
    request (the coordinator's round trip less this is the link's share). Typed and
    registered so a reply goes through the message checks (tag, fields, types) like
    every other message, instead of a map each reader checks by hand."""

    parts: list[np.ndarray | str]
    compute_s: float


#: The keys of the untyped map a holder from before :class:`InferBlocksResult` answers.
_LEGACY_INFER_REPLY = {"parts", "compute_s"}


def infer_blocks_result_wire(parts: list[Any], compute_s: float) -> dict[str, Any]:
    """The reply value a holder sends for an :class:`InferBlocks`."""
    return to_wire(InferBlocksResult(list(parts), float(compute_s)))


def read_infer_blocks_result(value: Any) -> tuple[list[Any], float | None]:
    """``(parts, compute_s)`` from a holder's reply to :class:`InferBlocks`.

    A typed reply is checked as a message (DecodeError otherwise) and a ``compute_s``
    that is not a finite number >= 0 is the holder's error. The untyped map of a holder
    from before (``{"parts": [...], "compute_s": s}``, nothing else) still reads: its
    parts are checked the same way and a figure that is not a sane time is dropped, as
    the old reader did. Counts and shapes are the asker's to check: only it knows the
    blocks it asked for."""
    if isinstance(value, dict) and value and set(value) <= _LEGACY_INFER_REPLY:
        got = from_wire(to_wire(InferBlocksResult(value.get("parts"), 0.0)))
        s = value.get("compute_s")
        sane = (isinstance(s, (int, float)) and not isinstance(s, bool)
                and math.isfinite(s) and s >= 0)
        return got.parts, float(s) if sane else None
    got = from_wire(value)
    if not isinstance(got, InferBlocksResult):
        raise DecodeError(f"an infer_blocks request was answered with {got.TAG}")
    if not (math.isfinite(got.compute_s) and got.compute_s >= 0):
        raise DecodeError(f"work.infer_blocks_result.compute_s: {got.compute_s} is not a "
                          "time")
    return got.parts, got.compute_s


#: Block indices one ``InferBlocks`` may name (a plan of a 1 GiB W has 32-64 blocks).
MAX_INFER_BLOCKS = 1024


@message("work.plan")
class PlanNotice:
    """A deployment's partition plan, so any member can route ``infer`` requests."""

    rid: int
    name: str
    plan: dict[str, Any]


@message("work.get_plan")
class GetPlan:
    rid: int
    name: str


@message("work.drop")
class DropMatrix:
    """Forget every block and the plan of matrix ``name``."""

    rid: int
    name: str


@message("work.store_state")
class StoreState:
    """Keep an already-programmed block (its frozen state), e.g. to restore a replica.

    Shipping the programmed state, not W, keeps every replica bit-identical: the same
    noise, the same faults, whichever node programmed it first.
    """

    rid: int
    name: str
    index: int
    row_start: int
    device: str | None
    seed: int
    state: dict[str, Any]


@message("work.model")
class ModelNotice:
    """A model deployment's record (layers, biases, layout), announced after its plans."""

    rid: int
    record: dict[str, Any]


@message("work.get_model")
class GetModel:
    """Ask for the record of ``name`` (live or tombstone); the answer is a dict or None."""

    rid: int
    name: str


@message("work.undeploy")
class Undeploy:
    """Deployment ``deploy_id`` of ``name`` is removed: forget its plans, drop its blocks.

    Answered with the resident bytes this node freed.
    """

    rid: int
    name: str
    deploy_id: str
    layers: list[str]


@message("work.model_sync")
class ModelSync:
    """A node's live deployments as ``[name, deploy_id]`` pairs; the answer lists the pairs
    the receiver knows to be removed (the asker then drops their blocks)."""

    rid: int
    entries: list[list[str]]


@message("work.stage")
class RunStage:
    """Gather layer ``layer`` of model ``name`` on the receiver: compute it on the layer's
    holders from input ``h`` (columns), apply bias and activation, and forward the result
    to the next layer's gatherer (or Y to ``origin``). Answered, once everything downstream
    finished, with ``{"moved": bytes, "minimum": bytes}``."""

    rid: int
    name: str
    deploy_id: str
    layer: int
    h: np.ndarray
    read_seed: int
    origin: str
    request: str


@message("work.stage_result")
class StageResult:
    """The model's output Y (columns) for request ``request``, sent to its origin."""

    rid: int
    request: str
    y: np.ndarray


@message("work.claim")
class ClaimName:
    """Grant ``name`` to deployment ``deploy`` coordinated by ``owner`` (or refuse)."""

    rid: int
    name: str
    deploy: str
    owner: str


@message("work.release")
class ReleaseName:
    """Deployment ``deploy`` gives up its claim on ``name``."""

    rid: int
    name: str
    deploy: str
