"""What this node knows about deployments: one record per matrix or model, and tombstones.

A deployment named ``NAME`` is a chain of layer matrices. A plain matrix (``.npy``) is one
layer stored under ``NAME`` itself, as it always was; a model's layer ``i`` is stored under
``NAME:i`` (``:`` can never appear in a user's name, so the two cannot collide). Each layer
matrix has an ordinary partition plan (:mod:`node.work.plans`), so replica repair works
for models unchanged; the record adds what the gathering node needs: biases, activations,
the input layout, and the deployment's id.

Undeploy leaves a *tombstone* (the record with ``removed`` set) for that deployment id: a
holder that was offline learns of it from any peer when it comes back and drops the blocks
then. Blocks are only ever dropped on such positive evidence for the exact deployment id,
so a node that was merely partitioned away never drops a block the mesh still plans for.
Records live in their own SQLite table, so a restarted node still routes and reconciles.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
from compute.lazynumpy import np

from node.memory.statedb import StateDB
from node.memory.store import StoreError, check_name

log = logging.getLogger("sedma.models")

LAYER_SEP = ":"
#: Tombstones older than this are forgotten (a holder offline longer keeps stale blocks,
#: which ``sedma deployments`` then shows under no name; say so in the docs).
TOMBSTONE_TTL = 7 * 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, deploy_id TEXT NOT NULL, record BLOB NOT NULL,
    removed REAL, updated REAL NOT NULL)
"""


def layer_matrix(name: str, index: int) -> str:
    """Where layer ``index`` of model ``name`` is stored."""
    return f"{name}{LAYER_SEP}{index}"


def check_matrix_name(name: str) -> str:
    """A user's name, or a model layer's ``NAME:i``; anything else is refused."""
    if isinstance(name, str) and LAYER_SEP in name:
        base, _, idx = name.partition(LAYER_SEP)
        if not idx.isdigit() or len(idx) > 6:
            raise StoreError(f"invalid layer matrix name {name!r}")
        check_name(base)
        return name
    return check_name(name)


@dataclass
class LayerRecord:
    """One layer as the gathering node needs it (the weights stay on the holders)."""

    matrix: str
    shape: tuple[int, int]
    activation: str
    bias: np.ndarray | None


@dataclass
class ModelRecord:
    """A deployment: kind, layout, layers, and how it was deployed."""

    name: str
    deploy_id: str
    kind: str
    layout: str
    input_shape: tuple[int, ...]
    layers: list[LayerRecord]
    device: str | None
    seed: int
    replicas: int
    created: float = field(default_factory=time.time)
    removed: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(inputs, outputs) of the whole network."""
        return self.layers[0].shape[1], self.layers[-1].shape[0]

    def to_dict(self) -> dict[str, Any]:
        """msgpack-able (biases stay arrays: the codec carries them out of band)."""
        return {"name": self.name, "deploy_id": self.deploy_id, "kind": self.kind,
                "layout": self.layout, "input_shape": list(self.input_shape),
                "layers": [{"matrix": l.matrix, "shape": list(l.shape),
                            "activation": l.activation, "bias": l.bias} for l in self.layers],
                "device": self.device, "seed": self.seed, "replicas": self.replicas,
                "created": self.created, "removed": self.removed}

    @classmethod
    def from_dict(cls, d: Any) -> "ModelRecord":
        """Parse and validate a record from a peer or the database; ValueError if bad."""
        try:
            layers = [_layer_record(l) for l in d["layers"]]
            rec = cls(check_name(d["name"]), str(d["deploy_id"]), str(d["kind"]),
                      str(d["layout"]), tuple(int(v) for v in d["input_shape"]), layers,
                      d["device"], int(d["seed"]), int(d["replicas"]), float(d["created"]),
                      None if d["removed"] is None else float(d["removed"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed model record ({exc!r})") from None
        if not layers or rec.layout not in ("rows", "columns"):
            raise ValueError("model record without layers or with an unknown layout")
        for a, b in zip(layers, layers[1:]):
            if a.shape[0] != b.shape[1]:
                raise ValueError("model record layers do not chain")
        return rec


def _layer_record(d: Any) -> LayerRecord:
    shape = tuple(int(v) for v in d["shape"])
    bias = d["bias"]
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"bad layer shape {shape}")
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float32)
        if bias.shape != (shape[0],) or not np.isfinite(bias).all():
            raise ValueError("layer bias does not match its shape or is not finite")
    return LayerRecord(check_matrix_name(d["matrix"]), shape, str(d["activation"]), bias)


class ModelBook:
    """Name -> record (live or tombstone), mirrored in the ``models`` table."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._records: dict[str, ModelRecord] = {}
        db.call(lambda c: c.execute(_SCHEMA))

    def restore(self) -> int:
        rows = self.db.call(lambda c: c.execute("SELECT record FROM models").fetchall())
        for (blob,) in rows:
            try:
                rec = ModelRecord.from_dict(_unpack(blob))
            except (ValueError, msgpack.UnpackException) as exc:
                log.error("model record unreadable (%s); ignoring it", exc)
                continue
            self._records[rec.name] = rec
        return len(self._records)

    def get(self, name: str) -> ModelRecord | None:
        """The live record of ``name`` (tombstones are not returned)."""
        rec = self._records.get(name)
        return rec if rec is not None and rec.removed is None else None

    def entry(self, name: str) -> ModelRecord | None:
        """Live record or tombstone."""
        return self._records.get(name)

    def live(self) -> list[ModelRecord]:
        return [r for r in self._records.values() if r.removed is None]

    def is_removed(self, name: str, deploy_id: str) -> bool:
        rec = self._records.get(name)
        return rec is not None and rec.deploy_id == deploy_id and rec.removed is not None

    def layer_names(self) -> set[str]:
        """Layer matrices of live models (to tell them from plain matrices)."""
        return {l.matrix for r in self.live() for l in r.layers if l.matrix != r.name}

    async def put(self, rec: ModelRecord) -> bool:
        """Remember ``rec`` unless that deployment was removed already; True if stored."""
        old = self._records.get(rec.name)
        if old is not None and old.deploy_id == rec.deploy_id and old.removed is not None:
            return False
        self._records[rec.name] = rec
        await self._save(rec)
        return True

    async def tombstone(self, name: str, deploy_id: str, when: float | None = None) -> ModelRecord | None:
        """Mark deployment ``deploy_id`` of ``name`` removed; returns the record it had."""
        rec = self._records.get(name)
        if rec is not None and rec.removed is None and rec.deploy_id != deploy_id:
            return None   # stale: a newer deployment holds the name
        if rec is None or rec.deploy_id != deploy_id:
            rec = ModelRecord(name, deploy_id, "matrix", "columns", (1,),
                              [LayerRecord(name, (1, 1), "identity", None)], None, 0, 1)
        rec.removed = rec.removed or when or time.time()
        self._records[name] = rec
        await self._save(rec)
        return rec

    async def expire(self, now: float | None = None) -> None:
        now = now or time.time()
        old = [n for n, r in self._records.items()
               if r.removed is not None and now - r.removed > TOMBSTONE_TTL]
        for name in old:
            del self._records[name]
        if old:
            await self.db.run(lambda c: c.executemany(
                "DELETE FROM models WHERE name=?", [(n,) for n in old]))

    async def _save(self, rec: ModelRecord) -> None:
        row = (rec.name, rec.deploy_id, _pack(rec.to_dict()), rec.removed, time.time())
        await self.db.run(lambda c: c.execute(
            "INSERT OR REPLACE INTO models VALUES (?,?,?,?,?)", row))


def _pack(d: dict) -> bytes:
    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return {"__f32__": np.ascontiguousarray(obj, np.float32).tobytes()}
        raise TypeError(type(obj).__name__)
    return msgpack.packb(d, default=default)


def _unpack(blob: bytes) -> dict:
    def hook(obj: dict) -> Any:
        if "__f32__" in obj:
            return np.frombuffer(obj["__f32__"], np.float32).copy()
        return obj
    return msgpack.unpackb(blob, object_hook=hook)
