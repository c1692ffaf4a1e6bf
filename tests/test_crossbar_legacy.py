"""Blocks saved in the older ``sedma.crossbar/1`` format, met at start.

``ideal`` blocks kept float32 weights in both formats: they are converted (nothing the
user deployed is lost) and written back once. Non-ideal ``crossbar/1`` blocks kept one
int16 effective conductance per weight, not the per-device codes the engine reads now:
they cannot be converted, and the store says which matrix to deploy again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from compute.crossbar import LEGACY_FORMAT, STATE_FORMAT, LegacyStateError, ProgrammedMatrix
from compute.device import get_preset
from node.memory.statedb import StateDB
from node.memory.store import BlockStore, Resident
from protocol import codec

ROWS, COLS = 128, 256


def _legacy_ideal_state(w: np.ndarray) -> dict:
    """What the crossbar/1 engine saved for an ideal block (its to_state, verbatim)."""
    profile = get_preset("ideal").to_dict()
    for new_field in ("read_noise_model", "adc_calibration", "adc_headroom", "bound_management",
                      "out_noise", "ir_drop_mode", "drift_model", "clip_sigma", "fault_aware",
                      "spare_cols"):
        profile.pop(new_field)  # fields that format's profiles did not have
    return {"format": LEGACY_FORMAT, "profile": profile, "shape": list(w.shape), "row_offset": 0,
            "seed": 7, "weights": w}


def _legacy_rram_state(shape: tuple[int, int]) -> dict:
    state = _legacy_ideal_state(np.zeros(shape, np.float32))
    state["profile"] = {**state["profile"], "name": "rram", "level_bits": 4, "read_noise_us": 0.4}
    del state["weights"]
    state["codes"] = np.zeros(shape, np.int16)
    state["scales"] = np.ones((1, 1), np.float32)
    return state


def test_an_ideal_legacy_state_converts_without_loss() -> None:
    w = np.random.default_rng(1).standard_normal((ROWS, COLS)).astype(np.float32)
    pm = ProgrammedMatrix.from_state(_legacy_ideal_state(w))
    assert pm.converted_from == LEGACY_FORMAT
    x = np.random.default_rng(2).standard_normal((COLS, 3)).astype(np.float32)
    np.testing.assert_array_equal(pm.matmul(x), w @ x)
    assert pm.to_state()["format"] == STATE_FORMAT


def test_a_non_ideal_legacy_state_says_to_deploy_again() -> None:
    with pytest.raises(LegacyStateError, match=r"crossbar/1.*'rram'.*deploy the matrix again"):
        ProgrammedMatrix.from_state(_legacy_rram_state((ROWS, COLS)))
    with pytest.raises(ValueError, match="format must be"):
        ProgrammedMatrix.from_state({"format": "sedma.crossbar/9"})


@pytest.fixture
def db(tmp_path: Path):
    d = StateDB(tmp_path / "state.db")
    yield d
    d.close()


def _store_legacy(store: BlockStore, name: str, idx: int, state: dict, nbytes: int) -> None:
    """Write a block file and its row as the older version did."""
    path = store.path(name, idx)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(bytes(p) for p in codec.encode(state)))
    store.db.call(lambda c: c.execute(
        "INSERT OR REPLACE INTO blocks VALUES (?,?,?,?,?,?,?,?,?,?)",
        (name, idx, idx * ROWS, ROWS, COLS, state["profile"]["name"], 7,
         str(path.relative_to(store.root)), nbytes, 0.0)))


@pytest.mark.parametrize("budget_blocks", [4, 0])  # loaded into RAM, or left on disk (mapped)
def test_store_converts_ideal_blocks_and_names_the_matrices_it_cannot(tmp_path, db, caplog,
                                                                        budget_blocks):
    block = ROWS * COLS * 4
    store = BlockStore(tmp_path, db, budget=budget_blocks * block, disk_budget=8 * block)
    w = np.random.default_rng(3).standard_normal((ROWS, COLS)).astype(np.float32)
    _store_legacy(store, "kept", 0, _legacy_ideal_state(w), block)
    _store_legacy(store, "old", 0, _legacy_rram_state((ROWS, COLS)), ROWS * COLS * 2)
    _store_legacy(store, "old", 1, _legacy_rram_state((ROWS, COLS)), ROWS * COLS * 2)
    with caplog.at_level(logging.WARNING, logger="sedma.store"):
        assert store.load_all() == 1
    lines = [r.getMessage() for r in caplog.records]
    assert any("kept/0 converted from sedma.crossbar/1" in line for line in lines)
    old = [line for line in lines if "'old'" in line]
    assert len(old) == 1 and "block(s) 0,1" in old[0] and "sedma deploy old" in old[0]
    x = np.ones((COLS, 2), np.float32)
    with store.reading("kept", 0) as blk:
        np.testing.assert_array_equal(blk.matrix.matmul(x), w @ x)
    # written back in today's format: the next start converts nothing
    state = codec.decode(store.path("kept", 0).read_bytes())
    assert state["format"] == STATE_FORMAT
    caplog.clear()
    again = BlockStore(tmp_path, db, budget=budget_blocks * block, disk_budget=8 * block)
    with caplog.at_level(logging.WARNING, logger="sedma.store"):
        assert again.load_all() == 1
    assert not [r for r in caplog.records if "converted" in r.getMessage() or "'old'" in r.getMessage()]
