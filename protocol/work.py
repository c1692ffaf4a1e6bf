"""Messages that move matrix work between nodes.

Active storage: ``store_block`` ships a row block of W once; afterwards ``infer_block``
moves only the input X to the holder and the partial output back. ``matmul`` is the
one-shot path where both operands travel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.messages import message


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
    """Return ``W_block @ x`` for a resident block."""

    rid: int
    name: str
    index: int
    x: np.ndarray
    read_seed: int


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
