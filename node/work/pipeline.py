"""Running a deployed model inside the mesh: activations go from one layer's holders to the
next layer's, never back through the client or the coordinator.

A request enters at the node the client talks to (the *origin*), which sends X to the
*gatherer* of layer 0: a holder of one of its blocks (the origin itself when it holds one).
A gatherer sends the layer's input to one live holder of each other block (failing over to
replicas), gathers the partial outputs, applies bias and activation, and forwards the
result to the gatherer of the next layer (itself when it also holds a block there). The
last gatherer sends Y straight to the origin, so the client sends X once and receives Y
once. Each stage acknowledges only after everything downstream finished, so a failure
anywhere comes back up the chain and the stage above re-forwards to another holder (the
computation is deterministic, so a retried request gives the same Y; exactly, in ideal).

Every request is its own chain of tasks, so concurrent requests are pipelined: while one
request's layer 2 runs on its holders, the next one's layer 1 runs on theirs.

Bytes are counted per request against the minimum: each layer's input sent once to each
node that served one of its blocks, other than the node where that input already was.
Above the minimum: partial outputs coming back to a gatherer and Y back to the origin (a
node serving several blocks of a layer gets the input once, with the list of blocks).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compute.lazynumpy import np

from compute.mlp import layer_seed, apply_activation
from compute.partition import PartitionPlan
from nat.link import LinkClosed
from node.memory.store import StoreError, as_matrix
from node.net.session import RemoteError
from node.work.jobs import JobError, request_timeout
from node.work.modelbook import LayerRecord, ModelRecord
from protocol.errors import ProtocolError
from protocol.work import RunStage, StageResult

if TYPE_CHECKING:
    from node.work.models import ModelManager

log = logging.getLogger("sedma.pipeline")

PEER_ERRORS = (LinkClosed, TimeoutError, RemoteError, ProtocolError, OSError)
#: Gatherers tried for one layer before the request fails (each attempt may itself have
#: failed over inside; the bound keeps a dead mesh from multiplying retries).
MAX_GATHERERS = 3
#: Gathered outputs larger than this get bias and activation on a worker thread.
FINISH_ON_THREAD = 1 << 16


@dataclass
class Cost:
    """Bytes a request moved between nodes, and the minimum it had to."""

    moved: int = 0
    minimum: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.moved + other.moved, self.minimum + other.minimum)

    def to_wire(self) -> dict[str, int]:
        return {"moved": self.moved, "minimum": self.minimum}

    @classmethod
    def from_wire(cls, value: Any) -> "Cost":
        if not (isinstance(value, dict) and isinstance(value.get("moved"), int)
                and isinstance(value.get("minimum"), int)):
            raise ProtocolError(f"bad stage answer {value!r}")
        return cls(value["moved"], value["minimum"])


class Pipeline:
    """Origin and stage roles of :mod:`this module <node.work.pipeline>` on one node."""

    def __init__(self, models: "ModelManager") -> None:
        self.models = models
        self.jobs = models.jobs
        self.me = models.jobs.node_id
        self._waiting: dict[str, asyncio.Future] = {}

    # origin ---------------------------------------------------------------------------
    async def run(self, rec: ModelRecord, h: np.ndarray, read_seed: int) -> tuple[np.ndarray, Cost]:
        """Send columns ``h`` through every layer; returns Y (columns) and the cost."""
        request = os.urandom(16).hex()   # secrets' source; secrets loads _hashlib
        future = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        try:
            cost = await self._forward(rec, 0, h, read_seed, request, self.me)
            if not future.done():
                raise JobError(f"{rec.name}: the last stage acknowledged without a result")
            return future.result(), cost
        finally:
            self._waiting.pop(request, None)

    def deliver(self, msg: StageResult) -> bool:
        """Y for a request this node originated (from the last stage)."""
        future = self._waiting.get(msg.request)
        if future is None or future.done():
            return False
        future.set_result(as_matrix(msg.y, "Y"))
        return True

    # stages ---------------------------------------------------------------------------
    async def _forward(self, rec: ModelRecord, i: int, h: np.ndarray, read_seed: int,
                       request: str, origin: str) -> Cost:
        """Hand ``h`` (here now) to a gatherer of layer ``i``; fail over to another."""
        plan = await self._plan(rec, i)
        errors = []
        flops = self._flops(rec, i, h)
        for node in self._gatherers(plan, flops)[:MAX_GATHERERS]:
            try:
                if node == self.me:
                    return await self.stage(rec, i, h, read_seed, request, origin, self.me)
                session = await self.jobs.mesh.session(node)
                msg = RunStage(session.next_rid(), rec.name, rec.deploy_id, i, h, read_seed,
                               origin, request)
                with self.jobs.holder_request(node, flops):   # what the next choice learns
                    value = await session.request(msg, self._timeout(rec, i, h))
                return Cost.from_wire(value) + Cost(h.nbytes, 0)
            except (*PEER_ERRORS, StoreError) as exc:
                log.warning("%s layer %d on %s failed (%s); trying another holder", rec.name,
                            i, node[:8], exc)
                errors.append(f"{node[:8]}: {exc}")
        raise JobError(f"{rec.name}: layer {i} could not run ({'; '.join(errors) or 'no holder'})")

    async def stage(self, rec: ModelRecord, i: int, h: np.ndarray, read_seed: int,
                    request: str, origin: str, prev: str) -> Cost:
        """Run layer ``i`` gathered here, then forward (or deliver Y); the whole chain's
        cost from here on."""
        layer = rec.layers[i]
        plan = await self._plan(rec, i)
        seed = read_seed if i == 0 else layer_seed(read_seed, i)
        out, served = await self._layer(layer.matrix, plan, h, seed)
        moved = sum(blk.rows * h.shape[1] * 4
                    for blk, node in zip(plan.blocks, served) if node != self.me)
        moved += h.nbytes * len(set(served) - {self.me})     # h once to each holder
        cost = Cost(moved, h.nbytes * len(set(served) - {prev}))
        y = await self._finish(out, layer)
        if i + 1 < len(rec.layers):
            return cost + await self._forward(rec, i + 1, y, read_seed, request, origin)
        if origin == self.me:
            self.deliver(StageResult(0, request, y))
            return cost
        session = await self.jobs.mesh.session(origin)
        await session.request(StageResult(session.next_rid(), request, y),
                              request_timeout(0, y.nbytes))
        return cost + Cost(y.nbytes, 0)

    async def serve(self, peer: str, msg: RunStage) -> dict[str, int]:
        """A peer asks this node to gather layer ``msg.layer`` of a model."""
        rec = await self.models.record_for(msg.name)
        if rec is None or rec.deploy_id != msg.deploy_id:
            raise StoreError(f"{msg.name}: not this deployment (undeployed or replaced)")
        if not 0 <= msg.layer < len(rec.layers):
            raise StoreError(f"{msg.name} has no layer {msg.layer}")
        h = as_matrix(msg.h, "stage input")
        if h.shape[0] != rec.layers[msg.layer].shape[1]:
            raise StoreError(f"stage input has {h.shape[0]} rows; layer {msg.layer} takes "
                             f"{rec.layers[msg.layer].shape[1]}")
        cost = await self.stage(rec, msg.layer, h, msg.read_seed, msg.request, msg.origin, peer)
        return cost.to_wire()

    # pieces ---------------------------------------------------------------------------
    async def _plan(self, rec: ModelRecord, i: int) -> PartitionPlan:
        layer = rec.layers[i]
        plan = await self.jobs.plan_for(layer.matrix)
        if tuple(plan.shape) != tuple(layer.shape):
            raise JobError(f"{rec.name}: layer {i} plan is {plan.shape}, record {layer.shape}")
        return plan

    def _gatherers(self, plan: PartitionPlan, flops: float = 0.0) -> list[str]:
        """Holders of the layer: this node first (its input is here), then by rows held
        (fewest partial outputs to gather), then by the replica choice (``flops``: the
        work handed over)."""
        rows: dict[str, int] = {}
        for b in plan.blocks:
            for n in b.nodes:
                rows[n] = rows.get(n, 0) + b.rows
        first = {n: (n != self.me, -rows[n]) for n in rows}
        if len(set(first.values())) == len(first):   # no ties: no ranking needed
            return sorted(rows, key=first.__getitem__)
        order = self.jobs._holder_order(list(rows), flops)
        rank = {n: k for k, n in enumerate(order)}
        return sorted(rows, key=lambda n: (*first[n], rank[n]))

    @staticmethod
    def _flops(rec: ModelRecord, i: int, h: np.ndarray) -> float:
        """Work of layers ``i``.. for input ``h``: what a gatherer of layer ``i`` runs."""
        return sum(2.0 * l.shape[0] * l.shape[1] * h.shape[1] for l in rec.layers[i:])

    def _timeout(self, rec: ModelRecord, i: int, h: np.ndarray) -> float:
        return request_timeout(self._flops(rec, i, h), h.nbytes * (len(rec.layers) - i))

    async def _layer(self, lname: str, plan: PartitionPlan, h: np.ndarray,
                     seed: int) -> tuple[np.ndarray, list[str]]:
        """``W @ h`` gathered here, and which node served each block (one request per
        holder carrying ``h`` once, failing over per block: JobManager.read_blocks)."""
        out = np.empty((plan.shape[0], h.shape[1]), dtype=np.float32)
        served = await self.jobs.read_blocks(lname, plan.blocks, h, seed, out)
        return out, served

    async def _finish(self, z: np.ndarray, layer: LayerRecord) -> np.ndarray:
        """Bias and activation on the gathered output (off the loop when it is large)."""
        def finish() -> np.ndarray:
            if layer.bias is not None:
                np.add(z, layer.bias[:, None], out=z)
            return apply_activation(layer.activation, z)
        if layer.bias is None and layer.activation == "identity":
            return z          # a plain matrix: nothing to do, and no hop to do it
        if z.size > FINISH_ON_THREAD:
            return await self.jobs.executor.run(finish)
        return finish()
