"""IR drop: the iterative circuit solve against an independent sparse direct solve,
an analytic series circuit, and the fast calibrated factors against the solve."""

import numpy as np
import pytest

from compute import circuit
from compute.crossbar import ProgrammedMatrix
from compute.device import PRESETS, DeviceProfile


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("rows, cols, ohm", [(8, 8, 1.0), (16, 32, 1.0), (32, 64, 0.35), (48, 96, 2.5)])
def test_iterative_solve_matches_sparse_direct_solve(rows: int, cols: int, ohm: float) -> None:
    rng = np.random.default_rng(rows)
    g = rng.random((3, rows, cols))  # three tiles at once
    g[1] *= rng.random((rows, cols)) < 0.3  # a sparse one
    v = rng.uniform(-1, 1, (3, rows, 5))  # five input vectors per tile
    rho = circuit.wire_rho(ohm, 40.0)
    res = circuit.solve(g, v, rho)
    for t in range(3):
        ref = circuit.solve_direct(g[t], v[t], rho)
        assert _rel(res.currents[t], ref) < 0.005
        assert np.max(np.abs(res.currents[t] - ref)) < 0.005 * np.max(np.abs(ref))
    ideal = np.einsum("trc,trb->tcb", g, v)
    assert _rel(ideal, res.currents) > 1e-3  # IR drop really changes the outputs


def test_single_cell_is_a_series_circuit() -> None:
    rows, cols, i, j, g0 = 12, 10, 4, 6, 0.8
    g = np.zeros((1, rows, cols))
    g[0, i, j] = g0
    rho = circuit.wire_rho(1.0, 40.0)
    v = np.ones((rows, 1))
    # driver -> (j + 1) word-line segments -> cell -> (rows - i) bit-line segments -> sense amp
    expect = 1.0 / (1.0 / g0 + rho * ((j + 1) + (rows - i)))
    assert circuit.solve(g, v, rho).currents[0, j, 0] == pytest.approx(expect, rel=1e-6)
    assert circuit.solve_direct(g[0], v, rho)[j, 0] == pytest.approx(expect, rel=1e-9)


def test_drop_grows_with_distance_from_driver_and_sense_amp() -> None:
    rows, cols = 32, 32
    g = np.ones((1, rows, cols))
    ratio = circuit.cell_voltage_ratio(g, circuit.wire_rho(2.0, 40.0))[0]
    assert np.all(np.diff(ratio, axis=1) < 0)  # farther along the word line: more drop
    assert np.all(np.diff(ratio, axis=0) > 0)  # closer to the sense amps (bottom rows): less drop


def test_fast_factors_are_exact_for_the_calibration_input_and_close_otherwise() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 128))
    wn = w / np.abs(w).max()
    g = np.stack([np.maximum(wn, 0), np.maximum(-wn, 0)], -1).reshape(64, 256).T.reshape(1, 128, 128)
    rho = circuit.wire_rho(0.35, 40.0)
    row_f, col_f = circuit.fast_factors(g, rho)
    ones = np.ones((128, 1))
    np.testing.assert_allclose(circuit.fast_currents(g, ones, row_f, col_f)[0],
                               circuit.solve(g, ones, rho).currents[0], rtol=1e-4)
    x = rng.uniform(0, 1, (128, 16))
    exact = circuit.solve(g, x, rho).currents[0]
    fast = circuit.fast_currents(g, x, row_f, col_f)[0]
    diff_exact, diff_fast = exact[0::2] - exact[1::2], fast[0::2] - fast[1::2]
    assert _rel(diff_fast, diff_exact) < 0.02


def test_circuit_mode_read_equals_the_direct_solve_of_the_programmed_devices() -> None:
    p = DeviceProfile(name="c", rows=24, cols=32, g_max_us=40.0, wire_ohm_per_cell=1.0, ir_drop_mode="circuit")
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 24)).astype(np.float32)  # exactly one tile
    x = rng.uniform(-1, 1, (24, 6)).astype(np.float32)
    pm = ProgrammedMatrix.program(w, p, seed=0)
    y = pm.matmul(x).astype(np.float64)
    gdev = pm.conductances()  # (16, 24, 2)
    arr = gdev.transpose(1, 0, 2).reshape(24, 32)  # word lines x bit lines (G+, G- interleaved)
    xn = x / np.abs(x).max(axis=0)
    cur = circuit.solve_direct(arr, xn, circuit.wire_rho(1.0, 40.0))
    expect = (cur[0::2] - cur[1::2]) * pm.scales[0, 0] * np.abs(x).max(axis=0)
    assert _rel(y, expect) < 0.005
    assert _rel(y, w.astype(np.float64) @ x) > 0.002  # and the drop is visible


def test_fast_mode_read_tracks_circuit_mode_on_a_preset() -> None:
    fast = PRESETS["rram"].with_changes(read_noise_us=0.0, out_noise=0.0, adc_bits=0, dac_bits=0,
                                        prog_noise_scale=0.0)
    slow = fast.with_changes(ir_drop_mode="circuit")
    rng = np.random.default_rng(3)
    w = rng.standard_normal((128, 256)).astype(np.float32)  # one full 256x256 array
    x = rng.uniform(0, 1, (256, 8)).astype(np.float32)
    y_fast = ProgrammedMatrix.program(w, fast, seed=0).matmul(x)
    y_slow = ProgrammedMatrix.program(w, slow, seed=0).matmul(x)
    ideal = ProgrammedMatrix.program(w, fast.with_changes(wire_ohm_per_cell=0.0), seed=0).matmul(x)
    drop = _rel(ideal, y_slow)
    assert drop > 0.005  # the circuit attenuates
    assert _rel(y_fast, y_slow) < 0.25 * drop  # fast mode removes most of the gap


@pytest.mark.parametrize("ohm, ratio_bound, bound", [(0.35, 0.005, 0.005), (1.0, 0.015, 0.01), (2.5, 0.04, 0.04)])
def test_one_sweep_calibration_is_close_to_the_converged_one(ohm: float, ratio_bound: float, bound: float) -> None:
    rng = np.random.default_rng(4)
    wn = rng.standard_normal((128, 256))
    wn /= np.abs(wn).max()
    g = np.stack([np.maximum(wn, 0), np.maximum(-wn, 0)], -1).transpose(1, 0, 2).reshape(1, 256, 256)
    rho = circuit.wire_rho(ohm, 40.0)
    assert np.abs(circuit.first_order_ratio(g, rho) - circuit.cell_voltage_ratio(g, rho)).max() < ratio_bound
    x = rng.uniform(0, 1, (256, 16))
    exact = circuit.solve(g, x, rho).currents[0]
    fast = circuit.fast_currents(g, x, *circuit.fast_factors(g, rho))[0]
    print(f"\n{ohm} Ohm: fast-mode error vs circuit {_rel(fast[0::2] - fast[1::2], exact[0::2] - exact[1::2]):.4f}")
    assert _rel(fast[0::2] - fast[1::2], exact[0::2] - exact[1::2]) < bound
