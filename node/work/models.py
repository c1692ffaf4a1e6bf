"""Deployments as first-class objects: deploy a matrix or a whole model, run it inside the
mesh, list it, undeploy it.

Deploy: the file is read here (``.npy``/``.onnx``/``.safetensors``, memory-mapped, see
:mod:`compute.modelfile`), checked against the mesh's free memory *before* anything is
programmed, then each layer matrix is planned (:func:`compute.partition.plan_rows`, with the
memory earlier layers took subtracted) and its row blocks are streamed to their holders a
few at a time, so neither this daemon nor the client ever holds more than a few blocks of
the weights. Any failure rolls back every block already programmed; plans and the record
are published only once every layer is in place, so nothing half-deployed is ever listed.

Infer: see :mod:`node.work.pipeline`: activations go from one layer's holders to the
next layer's; the client sends X once and receives Y once. Bytes moved per request are
counted against the minimum and shown by ``sedma deployments``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute.lazynumpy import np

from compute.device import get_preset
from compute.mlp import layer_seed
from compute.model import (DenseLayer, FileMatrix, Model, ModelError, from_columns,
                           to_columns)
from compute.partition import Block, NodeSlot, PartitionPlan, PlacementError, plan_rows
from nat.link import LinkClosed
from node.memory.store import StoreError, as_matrix, check_name
from node.net.session import RemoteError
from node.errors import UserError
from node.work.claims import ClaimRefused
from node.work.holder import Provenance
from node.work.jobs import (INLINE_BYTES, Job, JobError, JobManager, check_device, check_seed,
                            check_size)
from node.work.plans import VersionedPlan, new_deploy_id
from node.work.modelbook import LayerRecord, ModelBook, ModelRecord, layer_matrix
from node.work.pipeline import Pipeline
from protocol.errors import ProtocolError
from protocol.work import DropMatrix, GetModel, ModelNotice, ModelSync, Undeploy

log = logging.getLogger("sedma.models")

#: Largest row block sent in one message (the file's float32 rows): bounds what a deploy
#: holds in memory at once, whatever the model's size.
BLOCK_BYTES = 64 << 20
#: Blocks being sent at once to one holder during a deploy.
DEPLOY_CONCURRENCY = 2
#: Blocks in flight at once over all holders: what this node holds of the weights.
DEPLOY_IN_FLIGHT = 4
PEER_ERRORS = (LinkClosed, TimeoutError, RemoteError, ProtocolError, OSError)


@dataclass
class Traffic:
    """What requests of one deployment cost on the links, as seen by this coordinator."""

    requests: int = 0
    moved: int = 0          # every byte of activations a request sent between nodes
    minimum: int = 0        # each layer's input once to each node that served a block
    last_moved: int = 0
    last_minimum: int = 0

    def public(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes_moved": self.moved,
                "bytes_minimum": self.minimum, "last_bytes_moved": self.last_moved,
                "last_bytes_minimum": self.last_minimum}


class ModelManager:
    """Deploy/infer/undeploy/list for matrices and models; JobManager does the transport."""

    def __init__(self, jobs: JobManager, book: ModelBook) -> None:
        self.jobs = jobs
        self.book = book
        self.holder = jobs.holder
        self.traffic: dict[str, Traffic] = {}
        self.pipeline = Pipeline(self)

    # deploy ---------------------------------------------------------------------------
    async def deploy_array(self, name: str, w: Any, device: str | None, replicas: int | None,
                           seed: int) -> Job:
        """A matrix sent by the client (it fits one API message).

        Validation reads every weight (dtype, finiteness): on the executor, as the job
        path's operands are, not on the event loop."""
        w = await self.jobs.executor.run(as_matrix, w, "W")
        check_size(w.nbytes, "deploy")
        model = Model("matrix", "columns", [DenseLayer(w, np.zeros(w.shape[0], np.float32),
                                                  "identity")], has_bias=False)
        return await self._deploy(name, model, device, replicas, seed, source="array",
                                  checked=True)

    async def deploy_file(self, name: str, path: str, device: str | None,
                          replicas: int | None, seed: int) -> Job:
        """A model file this daemon reads itself (the client is on this machine and user)."""
        check_name(name)
        p = Path(path)
        if not p.is_absolute():
            raise JobError(f"{path}: give an absolute path (the daemon reads it itself)")
        try:
            model = await self.holder.executor.run(_read_model_file, p)
        except ModelError as exc:
            raise JobError(str(exc)) from None
        return await self._deploy(name, model, device, replicas, seed, source=str(p))

    async def _deploy(self, name: str, model: Model, device: str | None,
                      replicas: int | None, seed: int, source: str,
                      checked: bool = False) -> Job:
        """``checked``: the model's weights were validated in this process already."""
        check_name(name)
        check_device(device)
        if replicas is not None and replicas < 1:
            raise JobError("replicas must be at least 1")
        check_seed(seed)
        jobs = self.jobs
        deploy_id = new_deploy_id(jobs.node_id)
        try:   # claimed here before any await: no two local deploys of one name
            jobs.plans.claims.grant(name, deploy_id, jobs.node_id, self.taken(name))
        except ClaimRefused as exc:
            raise JobError(str(exc)) from None
        try:
            slots = jobs.slots()
            want = replicas if replicas is not None else (2 if len(slots) >= 2 else 1)
            check_fits(name, model, slots, device, min(want, len(slots)))
            detail = {"name": name, "model": model.kind, "layers": len(model.layers),
                      "shape": [model.in_features, model.out_features], "device": device,
                      "seed": seed, "source": source, "deploy_id": deploy_id}
            return await jobs.start_job("deploy", detail, lambda job: self._claimed_deploy(
                job, name, deploy_id, model, device, want, seed, checked))
        except BaseException:
            jobs.plans.claims.release(name, deploy_id)
            raise

    def taken(self, name: str) -> bool:
        """Whether this node knows a live deployment (matrix or model) named ``name``."""
        return name in self.jobs.plans or self.book.get(name) is not None

    async def _claimed_deploy(self, job: Job, name: str, deploy_id: str, model: Model,
                              device: str | None, want: int, seed: int,
                              checked: bool = False) -> None:
        """Win the name mesh-wide (a majority of members), deploy, then let the claim go:
        the published record guards the name from then on."""
        jobs = self.jobs
        granted: list[str] = []
        try:
            granted = await jobs._claim_mesh(name, deploy_id)
            if await self._known_elsewhere(name):
                raise JobError(f"a deployment named {name!r} already exists on the mesh")
            await self._run_deploy(job, name, deploy_id, model, device, want, seed, checked)
        finally:
            jobs.plans.claims.release(name, deploy_id)
            await asyncio.shield(jobs._release_mesh(name, deploy_id, granted))

    async def _run_deploy(self, job: Job, name: str, deploy_id: str, model: Model,
                          device: str | None, want: int, seed: int,
                          checked: bool = False) -> None:
        placed: list[tuple[str, PartitionPlan]] = []
        try:
            slots = self.jobs.slots()
            for i, layer in enumerate(model.layers):
                lname = name if model.kind == "matrix" else layer_matrix(name, i)
                lseed = seed if model.kind == "matrix" else layer_seed(seed, i)
                plan = layer_plan(layer.weight.shape, slots, device, want)
                placed.append((lname, plan))
                await self._place_layer(job, lname, plan, layer.weight, device, lseed, checked)
                take_memory(slots, plan, device)
            rec = ModelRecord(name, deploy_id, model.kind, model.layout,
                              tuple(model.input_shape),
                              [LayerRecord(lname, tuple(int(v) for v in l.weight.shape),
                                           l.activation, l.bias if model.has_bias else None)
                               for (lname, _), l in zip(placed, model.layers)],
                              device, seed, want)
            for lname, plan in placed:
                await self.jobs.plans.put(lname, VersionedPlan(plan, deploy_id))
            await self.book.put(rec)
        except BaseException as exc:
            dropped = await asyncio.shield(self._roll_back(name, placed))
            if isinstance(exc, (UserError, PlacementError)):
                raise JobError(f"{exc} (rolled back: {dropped} block(s) already programmed "
                               "were dropped)") from None
            raise
        job.detail.update(replicas=want, deploy_id=rec.deploy_id,
                          placement={str(b.index): b.nodes for b in placed[0][1].blocks},
                          layer_placement=[{str(b.index): b.nodes for b in p.blocks}
                                           for _, p in placed])
        for lname, _ in placed:
            await self.jobs.announce_plan(lname)
        await self._announce(rec)

    async def _place_layer(self, job: Job, lname: str, plan: PartitionPlan, weight: np.ndarray,
                           device: str | None, seed: int, checked: bool = False) -> None:
        """Stream the layer's row blocks to their holders, a few at a time per holder.

        Why per holder and interleaved: with one gate over the plan's order (all of one
        node's blocks, then the next node's), this node programmed and wrote its own blocks
        while the peers idled, then shipped to the peers while it idled. Each holder now
        has up to :data:`DEPLOY_CONCURRENCY` blocks in flight, so local writes, the link
        and the peers' writes overlap; :data:`DEPLOY_IN_FLIGHT` bounds them all, so this
        node holds at most that many blocks of the weights whatever the mesh's size.
        """
        gates: dict[str, asyncio.Semaphore] = {}
        total = asyncio.Semaphore(DEPLOY_IN_FLIGHT)

        async def place(blk: Block) -> None:
            gate = gates.setdefault(blk.nodes[0], asyncio.Semaphore(DEPLOY_CONCURRENCY))
            async with gate, total:    # always in this order: no two waits cross
                part, owned = await self.holder.executor.run(_read_rows, weight, blk)
                await self.jobs._place_block(job, lname, blk, part_source(part, blk),
                                             device, seed, Provenance(checked, owned))

        order = interleave(plan.blocks)
        results = await asyncio.gather(*(place(b) for b in order), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]

    async def _roll_back(self, name: str, placed: list[tuple[str, PartitionPlan]]) -> int:
        """Drop every layer of ``placed`` on every node that may hold a block of it; returns
        how many blocks were dropped."""
        nodes = {n for _, plan in placed for b in plan.blocks for n in b.nodes}
        count = 0

        async def drop(node: str, lname: str) -> int:
            try:
                if node == self.jobs.node_id:
                    return await self.holder.drop(lname)
                session = await self.jobs.mesh.session(node)
                value = await session.request(DropMatrix(session.next_rid(), lname), 10)
                return value if isinstance(value, int) else 0
            except PEER_ERRORS as exc:
                log.warning("could not drop partial %s on %s: %s", lname, node[:8], exc)
                return 0
        for lname, _ in placed:
            count += sum(await asyncio.gather(*(drop(n, lname) for n in nodes)))
            await self.jobs.plans.forget(lname)
        log.warning("deploy of %s rolled back: %d block(s) dropped", name, count)
        return count

    async def _announce(self, rec: ModelRecord) -> None:
        async def tell(node: str) -> None:
            try:
                session = await self.jobs.mesh.session(node)
                await session.request(ModelNotice(session.next_rid(), rec.to_dict()), 10)
            except PEER_ERRORS as exc:
                log.info("could not tell %s about %s: %s", node[:8], rec.name, exc)
        await asyncio.gather(*(tell(n) for n in self._peers()))

    def _peers(self) -> list[str]:
        return [c.node_id for c in self.jobs.candidates() if c.node_id != self.jobs.node_id]

    async def _known_elsewhere(self, name: str) -> bool:
        rec = await self.record_for(name)
        if rec is not None:
            return True
        try:
            await self.jobs.plan_for(name)
        except JobError:
            return False
        return True

    async def record_for(self, name: str) -> ModelRecord | None:
        """The live record of ``name``: ours, else the first peer's that has one."""
        rec = self.book.get(name)
        if rec is not None or self.book.entry(name) is not None:
            return rec
        for node in self._peers():
            try:
                session = await self.jobs.mesh.session(node)
                value = await session.request(GetModel(session.next_rid(), name), 5)
            except PEER_ERRORS:
                continue
            if isinstance(value, dict):
                try:
                    found = ModelRecord.from_dict(value)
                except ValueError as exc:
                    log.warning("bad model record from %s: %s", node[:8], exc)
                    continue
                await self.book.put(found)
                return self.book.get(name)
        return None

    # infer ----------------------------------------------------------------------------
    async def infer(self, name: str, x: Any, read_seed: int | None = None) -> np.ndarray:
        """Run the deployment on X: layer by layer on its holders, gathered here."""
        check_name(name)
        rec = await self.record_for(name)
        if rec is None:
            return await self.jobs.infer(name, x, read_seed)   # a matrix from before records
        if not isinstance(x, np.ndarray):
            raise JobError("X must be an array")
        def columns() -> tuple[np.ndarray, bool]:   # a transpose and a NaN scan: off the loop
            h, single = to_columns(rec.layout, rec.input_shape, x)
            return as_matrix(h, "X"), single
        try:   # ... unless X is small: then the hop costs more than the scan (INLINE_BYTES)
            h, single = (columns() if x.nbytes <= INLINE_BYTES
                         else await self.holder.executor.run(columns))
        except ModelError as exc:
            raise JobError(f"{name}: {exc}") from None
        widest = max(l.shape[0] for l in rec.layers)
        check_size(h.nbytes + widest * h.shape[1] * 4, "infer")
        if read_seed is not None:
            check_seed(read_seed)
        read_seed = random.getrandbits(62) if read_seed is None else read_seed
        start = time.perf_counter()
        self.jobs.metrics.live_bytes += h.nbytes
        try:
            y, cost = await self.pipeline.run(rec, h, read_seed)
        finally:
            self.jobs.metrics.live_bytes -= h.nbytes
        t = self.traffic.setdefault(name, Traffic())
        t.requests += 1
        t.moved += cost.moved
        t.minimum += cost.minimum
        t.last_moved, t.last_minimum = cost.moved, cost.minimum
        self.jobs.memory.record_request(name, time.perf_counter() - start)
        self.jobs.metrics.completed()
        if y.nbytes <= INLINE_BYTES or rec.layout == "columns":   # columns: no copy
            return from_columns(rec.layout, y, single)
        return await self.holder.executor.run(from_columns, rec.layout, y, single)

    # undeploy -------------------------------------------------------------------------
    async def undeploy(self, name: str) -> dict:
        """Remove ``name`` everywhere; idempotent. Returns what was freed where."""
        check_name(name)
        rec = await self.record_for(name) or self.book.entry(name)
        if rec is None:
            plan = self.jobs.plans.get(name)
            if plan is None:
                return {"name": name, "removed": False, "freed_bytes": 0, "nodes": {},
                        "message": f"no deployment named {name!r} (nothing to undeploy)"}
            rec = ModelRecord(name, "legacy", "matrix", "columns", (plan.shape[1],),
                              [LayerRecord(name, tuple(plan.shape), "identity", None)],
                              plan.device, 0, len(plan.blocks[0].nodes))
        again = rec.removed is not None
        layers = [l.matrix for l in rec.layers]
        freed = {self.jobs.node_id: await self.holder.undeploy_local(name, rec.deploy_id, layers)}

        async def tell(node: str) -> None:
            try:
                session = await self.jobs.mesh.session(node)
                value = await session.request(
                    Undeploy(session.next_rid(), name, rec.deploy_id, layers), 30)
                freed[node] = int(value) if isinstance(value, int) else 0
            except PEER_ERRORS as exc:
                log.info("%s will drop %s when it is back: %s", node[:8], name, exc)
        await asyncio.gather(*(tell(n) for n in self._peers()))
        self.traffic.pop(name, None)
        return {"name": name, "removed": True, "freed_bytes": sum(freed.values()),
                "nodes": {n: b for n, b in freed.items() if b},
                "message": (f"{name} was already undeployed" if again and not sum(freed.values())
                            else f"undeployed {name}")}

    async def reconcile(self, fanout: int = 3) -> int:
        """Ask a few peers whether any deployment we hold was removed; drop those. Returns
        how many were dropped. Only an explicit tombstone for the same deployment id drops
        anything, so a partition alone never does."""
        entries = [[r.name, r.deploy_id] for r in self.book.live()]
        if not entries:
            return 0
        peers = self._peers()
        dropped = 0
        for node in random.sample(peers, min(fanout, len(peers))):
            try:
                session = await self.jobs.mesh.session(node)
                value = await session.request(ModelSync(session.next_rid(), entries), 10)
            except PEER_ERRORS:
                continue
            for pair in value if isinstance(value, list) else []:
                if not (isinstance(pair, list) and len(pair) == 2):
                    continue
                rec = self.book.get(str(pair[0]))
                if rec is not None and rec.deploy_id == pair[1]:
                    log.info("%s was undeployed while this node was away; dropping it", rec.name)
                    await self.holder.undeploy_local(rec.name, rec.deploy_id,
                                                     [l.matrix for l in rec.layers])
                    dropped += 1
        return dropped

    # listing --------------------------------------------------------------------------
    async def deployments(self) -> list[dict]:
        """Every matrix and model this node knows, with placement and health."""
        alive = {c.node_id for c in self.jobs.candidates()}
        devices = {c.node_id: c.device for c in self.jobs.candidates()}
        out = []
        layer_names = self.book.layer_names()
        records = {r.name: r for r in self.book.live()}
        for name, plan in self.jobs.plans.items():   # matrices deployed before records
            if name not in records and name not in layer_names:
                records[name] = ModelRecord(name, "legacy", "matrix", "columns",
                                            (plan.shape[1],),
                                            [LayerRecord(name, tuple(plan.shape), "identity",
                                                         None)],
                                            plan.device, 0, len(plan.blocks[0].nodes))
        for rec in sorted(records.values(), key=lambda r: r.name):
            out.append(await self._describe(rec, alive, devices))
        return out

    async def _describe(self, rec: ModelRecord, alive: set[str], devices: dict[str, str]) -> dict:
        layers, resident, live = [], 0, []
        for layer in rec.layers:
            try:
                plan = await self.jobs.plan_for(layer.matrix)
            except JobError:
                layers.append({"matrix": layer.matrix, "shape": list(layer.shape),
                               "activation": layer.activation, "blocks": {}, "missing": True})
                live.append(0)
                continue
            for b in plan.blocks:
                for n in b.nodes:
                    resident += _resident(plan.device or devices.get(n), (b.rows, plan.shape[1]))
                live.append(min(sum(n in alive for n in b.nodes) for b in plan.blocks))
            layers.append({"matrix": layer.matrix, "shape": list(layer.shape),
                           "activation": layer.activation,
                           "blocks": {str(b.index): {"rows": [b.row_start, b.row_stop],
                                                     "holders": list(b.nodes)}
                                      for b in plan.blocks}})
        return {"name": rec.name, "kind": rec.kind, "deploy_id": rec.deploy_id,
                "layout": rec.layout, "layers": layers,
                "shape": [rec.shape[0], rec.shape[1]], "device": rec.device or "per node",
                "bytes_resident": resident, "replicas_live": min(live) if live else 0,
                "replicas_wanted": rec.replicas,
                **self.traffic.get(rec.name, Traffic()).public()}


# --------------------------------------------------------------------------- pure helpers
def _resident(device: str | None, shape: tuple[int, int]) -> int:
    try:
        return get_preset(device or "ideal").resident_bytes(shape)
    except ValueError:
        return 0


def _read_model_file(path: Path) -> Model:
    """:func:`compute.modelfile.read_model` on a compute thread, its module imported there:
    the ONNX/safetensors/npz reader (~90 KB of objects and its compile) is needed only by
    a daemon that is handed a model file, and its first import stays off the event loop
    (issue 13)."""
    from compute.modelfile import read_model

    return read_model(path)


def needed_bytes(model: Model, slots: list[NodeSlot], device: str | None, replicas: int) -> int:
    """Resident bytes the model takes with ``replicas`` holders per block.

    With no device named, each node programs with its own device: count the cheapest, so
    the early check never refuses a model that would fit (placement checks exactly).
    """
    if device is not None:
        profiles = [get_preset(device)]
    else:
        profiles = [s.device for s in slots] or [get_preset("ideal")]
    return replicas * sum(min(p.resident_bytes(s) for p in profiles) for s in model.shapes())


def check_fits(name: str, model: Model, slots: list[NodeSlot], device: str | None,
               replicas: int) -> None:
    """Refuse at once a model larger than the mesh's free memory (needed vs free)."""
    need = needed_bytes(model, slots, device, replicas)
    free = sum(s.free_bytes for s in slots)
    if need > free:
        raise JobError(f"{name} needs {need} bytes resident ({len(model.layers)} layer(s), "
                       f"{replicas} replica(s)) but the mesh has {free} bytes free "
                       f"on {len(slots)} node(s)")


def layer_plan(shape: tuple[int, int], slots: list[NodeSlot], device: str | None,
               replicas: int) -> PartitionPlan:
    """Plan one layer with blocks no larger than :data:`BLOCK_BYTES` of float32 rows."""
    m, k = int(shape[0]), int(shape[1])
    pieces = max(1, math.ceil(m * k * 4 / BLOCK_BYTES))
    return plan_rows((m, k), slots, device=get_preset(device) if device else None,
                     replicas=replicas, max_blocks_per_node=pieces)


def take_memory(slots: list[NodeSlot], plan: PartitionPlan, device: str | None) -> None:
    """Subtract what ``plan`` programs from the slots (adverts lag behind a deploy)."""
    by_id = {s.node_id: s for s in slots}
    for b in plan.blocks:
        for n in b.nodes:
            s = by_id.get(n)
            if s is not None:
                prof = get_preset(device) if device else s.device
                s.free_bytes = max(0, s.free_bytes - prof.resident_bytes((b.rows, plan.shape[1])))


def interleave(blocks: list[Block]) -> list[Block]:
    """Blocks round-robin over their first holders (a, b, a, b, ... not a, a, ..., b, b),
    so every holder gets work from the start of a deploy."""
    by_node: dict[str, list[Block]] = {}
    for blk in blocks:
        by_node.setdefault(blk.nodes[0] if blk.nodes else "", []).append(blk)
    queues = list(by_node.values())
    out: list[Block] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out += [q[i] for q in queues if i < len(q)]
    return out


def _read_rows(weight: Any, blk: Block) -> tuple[np.ndarray, bool]:
    """The block's rows as float32 in memory, and whether they are a private buffer.

    A :class:`~compute.model.FileMatrix` reads them into a fresh buffer (owned: the holder
    here may keep it as is); an in-memory W gives a view (not owned: it is the client's
    message) or, for another dtype, a converted copy (owned)."""
    rows = weight[blk.row_start:blk.row_stop]
    if isinstance(weight, FileMatrix):
        return np.ascontiguousarray(rows, dtype=np.float32), True
    part = np.ascontiguousarray(rows, dtype=np.float32)
    return part, not np.may_share_memory(part, weight) if isinstance(weight, np.ndarray) else True


def part_source(part: np.ndarray, blk: Block) -> np.ndarray:
    """``JobManager._place_block`` slices rows [row_start, row_stop) of the whole W; give it
    a view whose slice is exactly this block (rows before it are never touched)."""
    return _Offset(part, blk.row_start)


class _Offset:
    """Rows ``[start, start + len(part))`` of a larger matrix, backed by ``part`` only."""

    def __init__(self, part: np.ndarray, start: int) -> None:
        self.part, self.start = part, start

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.part[rows.start - self.start:rows.stop - self.start]
