"""Crossbar engine: ideal exactness, reproducibility, placement independence, state."""

import threading

import numpy as np
import pytest

from compute.crossbar import ProgrammedMatrix, crossbar_matmul, row_granularity
from compute.device import PRESETS, get_preset

SMALL = PRESETS["rram"].with_changes(name="rram-small", rows=32, cols=32)  # 16-row tiles


def _rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("m, k, b", [(1, 1, 1), (7, 300, 5), (256, 256, 8), (257, 513, 3),
                                     (1000, 33, 64), (129, 1000, 1)])
def test_ideal_reproduces_float32_matmul(m: int, k: int, b: int) -> None:
    w, x = _rand((m, k), 1), _rand((k, b), 2)
    ref = (w.astype(np.float64) @ x.astype(np.float64))
    pm = ProgrammedMatrix.program(w, PRESETS["ideal"], seed=3)
    y = pm.matmul(x)
    assert y.dtype == np.float32 and y.shape == (m, b)
    scale = np.abs(w).astype(np.float64) @ np.abs(x).astype(np.float64)
    assert np.all(np.abs(y - ref) <= 1e-5 * scale + 1e-30)
    np.testing.assert_array_equal(y, w @ x)
    np.testing.assert_array_equal(crossbar_matmul(w, x, PRESETS["ideal"], seed=0), w @ x)


def test_vector_input_gives_vector_output() -> None:
    w, x = _rand((40, 50)), _rand((50,), 1)
    for name in ("ideal", "rram"):
        pm = ProgrammedMatrix.program(w, PRESETS[name], seed=0)
        y = pm.matmul(x, read_seed=4)
        assert y.shape == (40,)
        np.testing.assert_array_equal(y, pm.matmul(x[:, None], read_seed=4)[:, 0])


def test_crossbar_matmul_equals_program_then_read() -> None:
    w, x = _rand((70, 90)), _rand((90, 4), 1)
    one_shot = crossbar_matmul(w, x, SMALL, seed=5, read_seed=6)
    pm = ProgrammedMatrix.program(w, SMALL, seed=5)
    np.testing.assert_array_equal(one_shot, pm.matmul(x, read_seed=6))


@pytest.mark.parametrize("name", ["rram", "pcm", "conservative"])
def test_same_seed_same_state_bit_for_bit_different_seed_differs(name: str) -> None:
    w = _rand((300, 260))
    a = ProgrammedMatrix.program(w, PRESETS[name], seed=11)
    b = ProgrammedMatrix.program(w, PRESETS[name], seed=11)
    c = ProgrammedMatrix.program(w, PRESETS[name], seed=12)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.scales, b.scales)
    assert np.mean(a.codes != c.codes) > 0.3


def test_read_noise_keyed_by_read_seed() -> None:
    w, x = _rand((64, 64)), _rand((64, 3), 1)
    pm = ProgrammedMatrix.program(w, SMALL, seed=0)
    np.testing.assert_array_equal(pm.matmul(x, read_seed=1), pm.matmul(x, read_seed=1))
    assert not np.array_equal(pm.matmul(x, read_seed=1), pm.matmul(x, read_seed=2))


@pytest.mark.parametrize("profile", [SMALL, PRESETS["pcm"], PRESETS["conservative"]], ids=lambda p: p.name)
def test_row_blocks_program_exactly_the_rows_of_the_full_matrix(profile) -> None:
    g = row_granularity(profile)
    m = 9 * g + 5  # last tile row is partial
    w, x = _rand((m, 300), 7), _rand((300, 6), 8)
    full = ProgrammedMatrix.program(w, profile, seed=21)
    cuts = [0, g, 3 * g, 4 * g, 7 * g, m]  # 5 uneven row blocks
    parts = [ProgrammedMatrix.program(w[a:b], profile, seed=21, row_offset=a) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_array_equal(np.concatenate([p.codes for p in parts], axis=1), full.codes)
    for key, arr in full.tiles.items():  # scales, ADC ranges, drift factors, IR-drop factors
        np.testing.assert_array_equal(np.concatenate([p.tiles[key] for p in parts]), arr)
    y_full = full.matmul(x, read_seed=5)
    y_parts = np.concatenate([p.matmul(x, read_seed=5) for p in parts])
    np.testing.assert_allclose(y_parts, y_full, rtol=1e-6, atol=1e-6 * np.abs(y_full).max())
    lo, hi = [np.concatenate(z) for z in zip(*(p.fault_masks() for p in parts))]
    flo, fhi = full.fault_masks()
    np.testing.assert_array_equal(lo, flo)
    np.testing.assert_array_equal(hi, fhi)


def test_row_offset_must_be_aligned() -> None:
    g = row_granularity(SMALL)
    with pytest.raises(ValueError, match=f"multiple of {g}"):
        ProgrammedMatrix.program(_rand((10, 10)), SMALL, seed=0, row_offset=g + 1)


@pytest.mark.parametrize("name", list(PRESETS))
def test_state_round_trip_reproduces_reads(name: str) -> None:
    w, x = _rand((150, 270)), _rand((270, 5), 1)
    pm = ProgrammedMatrix.program(w, PRESETS[name], seed=2, row_offset=0)
    state = pm.to_state()
    back = ProgrammedMatrix.from_state(state)
    np.testing.assert_array_equal(back.matmul(x, read_seed=9), pm.matmul(x, read_seed=9))
    assert back.nbytes == pm.nbytes


def test_from_state_rejects_bad_states() -> None:
    pm = ProgrammedMatrix.program(_rand((40, 40)), SMALL, seed=2)
    good = pm.to_state()
    bad_cases = [
        ({**good, "format": "other"}, "format"),
        ({**good, "codes": good["codes"].astype(np.float64)}, "uint8"),
        ({**good, "codes": good["codes"][:, :-1]}, "uint8"),
        ({**good, "adc": np.full_like(good["adc"], np.nan)}, "non-finite"),
        ({**good, "scales": good["scales"][:, :0]}, "scales"),
        ({k: v for k, v in good.items() if k != "codes"}, "missing array 'codes'"),
        ({**good, "row_offset": 3}, "row_offset"),
        ({**good, "shape": [40]}, "shape"),
        ({**good, "profile": {"name": "x"}}, "missing required field"),
    ]
    for state, msg in bad_cases:
        with pytest.raises(ValueError, match=msg):
            ProgrammedMatrix.from_state(state)


def test_no_float64_resident_state() -> None:
    pm = ProgrammedMatrix.program(_rand((300, 300)), PRESETS["rram"], seed=0)
    arrays = [v for v in vars(pm).values() if isinstance(v, np.ndarray)] + list(pm.tiles.values())
    assert arrays and all(a.dtype != np.float64 for a in arrays)
    assert sum(a.nbytes for a in arrays) == pm.nbytes


def test_concurrent_reads_from_threads_match_sequential() -> None:
    w, x = _rand((600, 700)), _rand((700, 16), 1)
    pm = ProgrammedMatrix.program(w, PRESETS["rram"], seed=3)
    expected = {s: pm.matmul(x, read_seed=s) for s in range(8)}
    got: dict[int, np.ndarray] = {}

    def work(s: int) -> None:
        got[s] = pm.matmul(x, read_seed=s)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in range(8):
        np.testing.assert_array_equal(got[s], expected[s])


def test_input_validation() -> None:
    pm = ProgrammedMatrix.program(_rand((10, 20)), SMALL, seed=0)
    assert pm.matmul(np.zeros((20, 0), np.float32)).shape == (10, 0)
    with pytest.raises(ValueError, match="inputs must have shape"):
        pm.matmul(np.zeros((21, 2), np.float32))
    with pytest.raises(ValueError, match="read_seed"):
        pm.matmul(np.zeros(20, np.float32), read_seed=-1)
    with pytest.raises(ValueError, match="NaN"):
        ProgrammedMatrix.program(np.full((3, 3), np.nan, np.float32), SMALL, seed=0)
    with pytest.raises(ValueError, match="seed"):
        ProgrammedMatrix.program(_rand((3, 3)), SMALL, seed=-5)


@pytest.mark.parametrize("name", ["rram", "pcm"])
def test_realistic_presets_approximate_the_product(name: str) -> None:
    # Noise is large on real devices, but the result must still track W @ X
    w, x = _rand((512, 512)), _rand((512, 32), 1)
    y = ProgrammedMatrix.program(w, PRESETS[name], seed=0).matmul(x)
    ref = w @ x
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert 0.01 < rel < 0.5
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("preset", ["ideal", "rram", "pcm", "conservative"])
def test_a_read_split_by_tile_rows_equals_the_whole_read(preset):
    """Threads may each read a span of tile rows: together they give the full read."""
    prof = get_preset(preset)
    rng = np.random.default_rng(4)
    w = rng.standard_normal((700, 300)).astype(np.float32)
    x = rng.standard_normal((300, 9)).astype(np.float32)
    pm = ProgrammedMatrix.program(w, prof, seed=3, row_offset=0)
    n = -(-700 // row_granularity(prof))
    whole = pm.matmul(x, read_seed=5)
    parts = np.concatenate([pm.matmul(x, read_seed=5, tile_rows=(a, min(n, a + 2)))
                            for a in range(0, n, 2)])
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())
    with pytest.raises(ValueError):
        pm.matmul(x, tile_rows=(0, n + 1))


def test_column_noise_is_a_pure_function_of_column_and_tile_row() -> None:
    from compute.crossbar import ColumnNoise
    a, b = ColumnNoise(1, 2), ColumnNoise(1, 2)
    whole = a.normals(5, 0, 6, 300)
    np.testing.assert_array_equal(b.normals(5, 3, 2, 300), whole[3:5])  # a span of tile rows
    b.normals(7, 0, 6, 300)  # another column in between changes nothing
    np.testing.assert_array_equal(b.normals(5, 0, 6, 300), whole)
    assert not np.array_equal(a.normals(6, 0, 6, 300), whole)
    assert abs(whole.std() - 1) < 0.05


@pytest.mark.parametrize("preset", ["rram", "conservative"])
def test_a_read_does_not_depend_on_its_scratch_chunking(preset, monkeypatch):
    """Tile rows are read in chunks of bounded scratch: the chunk size must not change a value."""
    import compute.crossbar as cb
    rng = np.random.default_rng(8)
    w = rng.standard_normal((500, 600)).astype(np.float32)  # partial last tile row and tile column
    x = rng.standard_normal((600, 5)).astype(np.float32)
    pm = ProgrammedMatrix.program(w, get_preset(preset), seed=2)
    whole = pm.matmul(x, read_seed=3)
    monkeypatch.setattr(cb, "_CHUNK_ELEMS", 1)  # one tile row per chunk
    np.testing.assert_array_equal(pm.matmul(x, read_seed=3), whole)
