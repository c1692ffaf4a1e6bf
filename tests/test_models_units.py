"""Pure parts of model deployments (issue 9): names, records, the early memory check,
layer planning with memory taken by earlier layers, and tombstones (no daemons)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from compute.device import get_preset
from compute.model import DenseLayer, FileMatrix, Model
from compute.partition import NodeSlot
from node.memory.statedb import StateDB
from node.memory.store import StoreError
from node.work.jobs import JobError
from node.work.modelbook import (LayerRecord, ModelBook, ModelRecord, check_matrix_name,
                                 layer_matrix)
from node.work.models import BLOCK_BYTES, check_fits, layer_plan, needed_bytes, take_memory


def slots(*free, device="ideal"):
    return [NodeSlot(f"n{i}", 10.0, f, get_preset(device)) for i, f in enumerate(free)]


def model(*sizes):
    return Model("onnx", "rows", [DenseLayer(np.zeros((o, i), np.float32), np.zeros(o), "relu")
                                  for i, o in zip(sizes, sizes[1:])])


def test_layer_names_cannot_collide_with_user_names():
    assert layer_matrix("m", 3) == "m:3" and check_matrix_name("m:3") == "m:3"
    for bad in ("m:x", ":1", "m:1:2", "../m:1", "m:1234567"):
        with pytest.raises(StoreError):
            check_matrix_name(bad)


def test_model_larger_than_free_memory_fails_at_once_with_needed_and_free():
    m = model(1024, 1024, 1024)                    # 8 MiB of float32 weights
    assert needed_bytes(m, slots(1 << 30), "ideal", 2) == 2 * 8 * (1 << 20)
    assert needed_bytes(m, slots(1 << 30), "rram", 1) < 8 * (1 << 20)   # 2 bytes/weight
    check_fits("m", m, slots(6 << 20, 6 << 20, 6 << 20), "ideal", 2)
    with pytest.raises(JobError, match=r"m needs 16777216 bytes .* has 12582912 bytes free"):
        check_fits("m", m, slots(6 << 20, 6 << 20), "ideal", 2)


def test_layers_are_planned_into_the_memory_earlier_layers_left():
    s = slots(5 << 20, 5 << 20)
    shapes = [(1024, 1024), (1024, 1024)]          # 4 MiB each
    for shape in shapes:
        plan = layer_plan(shape, s, "ideal", 1)
        take_memory(s, plan, "ideal")
    assert sum(x.free_bytes for x in s) == (10 << 20) - (8 << 20)
    with pytest.raises(ValueError):                # a third does not fit any more
        layer_plan((1024, 1024), s, "ideal", 1)


def test_big_layers_are_cut_into_blocks_no_larger_than_a_message_block():
    plan = layer_plan((16384, 16384), slots(2 << 30, 2 << 30), "ideal", 1)
    assert max(b.rows * 16384 * 4 for b in plan.blocks) <= BLOCK_BYTES
    assert plan.blocks[-1].row_stop == 16384


def test_file_matrix_reads_row_ranges_and_refuses_truncation(tmp_path):
    w = np.arange(60, dtype=np.float64).reshape(6, 10)
    np.save(tmp_path / "w.npy", w)
    from compute.modelfile import read_model
    fm = read_model(tmp_path / "w.npy").layers[0].weight
    assert isinstance(fm, FileMatrix)
    np.testing.assert_array_equal(fm[2:4], w[2:4].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(fm), w.astype(np.float32))
    assert fm[2:4].dtype == np.float32


def record(name="m", deploy_id="d1"):
    return ModelRecord(name, deploy_id, "onnx", "rows", (4,),
                       [LayerRecord("m:0", (3, 4), "relu", np.ones(3, np.float32)),
                        LayerRecord("m:1", (2, 3), "softmax", None)], "ideal", 0, 2)


def test_records_round_trip_and_bad_ones_are_refused():
    rec = record()
    back = ModelRecord.from_dict(rec.to_dict())
    assert back.shape == (4, 2) and back.layers[0].bias.tolist() == [1, 1, 1]
    d = rec.to_dict()
    d["layers"][1]["shape"] = [2, 5]
    with pytest.raises(ValueError, match="do not chain"):
        ModelRecord.from_dict(d)
    d = rec.to_dict()
    d["layers"][0]["bias"] = np.array([np.nan, 1, 1], np.float32)
    with pytest.raises(ValueError, match="not finite"):
        ModelRecord.from_dict(d)
    with pytest.raises(ValueError):
        ModelRecord.from_dict({"name": "m"})


def test_tombstones_survive_a_restart_and_block_a_late_notice(tmp_path):
    async def scenario():
        db = StateDB(tmp_path / "state.db")
        book = ModelBook(db)
        await book.put(record())
        await book.tombstone("m", "d1")
        assert book.get("m") is None and book.is_removed("m", "d1")
        assert not await book.put(record())          # the deploy's late notice
        assert not book.is_removed("m", "d2")         # only that deployment id
        db.close()
        again = ModelBook(StateDB(tmp_path / "state.db"))
        again.restore()
        assert again.is_removed("m", "d1") and again.get("m") is None
        assert await again.put(record(deploy_id="d2"))   # a new deployment of the name
        assert again.get("m").deploy_id == "d2"
        assert await again.tombstone("m", "d1") is None   # a stale undeploy changes nothing
        assert again.get("m").deploy_id == "d2"
        await again.expire(now=1e12)                     # old tombstones go; live stay
        assert again.get("m") is not None
    asyncio.run(scenario())
