"""Each non-ideality alone against its analytic expectation."""

import numpy as np
import pytest

from compute.crossbar import (ProgrammedMatrix, adc_lsb, adc_quantise, dac_quantise, drift_factor,
                              row_granularity)
from compute.device import DeviceProfile

BASE = dict(name="t", rows=32, cols=32, g_min_us=0.0, g_max_us=40.0)
CODE = 2.0 ** -14  # int16 code LSB in units of Gmax


def _rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _per_weight_scale(pm: ProgrammedMatrix) -> np.ndarray:
    """The per-tile digital scale broadcast to every weight (M, K)."""
    g, q = row_granularity(pm.profile), pm.profile.tile_inputs
    m, k = pm.shape
    return np.repeat(np.repeat(pm.scales, q, axis=1)[:, :k], g, axis=0)[:m]


def test_read_noise_output_variance_matches_analytic() -> None:
    p = DeviceProfile(**BASE, read_noise_us=0.8)
    w, x = _rand((40, 70)), _rand((70,), 1)
    pm = ProgrammedMatrix.program(w, p, seed=0)
    n = 4000
    y = pm.matmul(np.repeat(x[:, None], n, axis=1), read_seed=3)  # n independent reads
    xn, xs = dac_quantise(x[:, None], p)
    q = p.tile_inputs
    sq = np.zeros(((70 + q - 1) // q) * q)
    sq[:70] = xn[:, 0].astype(np.float64) ** 2
    per_tile = sq.reshape(-1, q).sum(1)  # sum of x^2 over each tile's inputs
    sigma_n = p.read_noise_us / p.g_max_us
    var_tile_row = xs[0] ** 2 * sigma_n**2 * 2 * (pm.scales.astype(np.float64) ** 2 @ per_tile)  # 2 devices
    var = np.repeat(var_tile_row, row_granularity(p))[:40]
    ratio = y.var(axis=1, ddof=1) / var
    tol = 6 * np.sqrt(2 / (n - 1))
    assert np.all(np.abs(ratio - 1) < tol), ratio
    assert abs(ratio.mean() - 1) < 3 * np.sqrt(2 / (n - 1) / 40)
    # Gaussian shape: excess kurtosis ~ 0 (a table-sampled normal must not be visibly off)
    z = (y - y.mean(axis=1, keepdims=True)) / y.std(axis=1, keepdims=True)
    assert abs(np.mean(z**4) - 3.0) < 5 * np.sqrt(24 / z.size)
    # and the mean is the noise-free product of the stored weights
    clean = pm.effective_weights().astype(np.float64) @ x
    assert np.all(np.abs(y.mean(axis=1) - clean) < 6 * np.sqrt(var / n))


def test_adc_error_within_half_lsb_until_saturation() -> None:
    p = DeviceProfile(**BASE, adc_bits=6, adc_range=4.0)
    lsb = adc_lsb(p)
    top = (2**5 - 1) * lsb
    i = np.linspace(-6.0, 6.0, 100001).astype(np.float32)
    out = adc_quantise(i, p)
    inside = np.abs(i) <= top
    assert np.all(np.abs(out[inside] - i[inside]) <= lsb / 2 + 1e-6)
    assert np.all(out[i > top + lsb / 2] == np.float32(top))
    assert np.all(out[i < -top - lsb / 2] == np.float32(-top))
    assert len(np.unique(out)) == 2**6 - 1


def test_adc_end_to_end_error_bounded_by_half_lsb_per_tile() -> None:
    p = DeviceProfile(**BASE, adc_bits=7, adc_range=8.0)
    w, x = _rand((50, 100)), np.abs(_rand((100, 4), 1))
    pm = ProgrammedMatrix.program(w, p, seed=0)
    y = pm.matmul(x).astype(np.float64)
    exact = pm.effective_weights().astype(np.float64) @ x
    xs = np.abs(x).max(axis=0)
    bound = (adc_lsb(p) / 2) * pm.scales.astype(np.float64).sum(axis=1)  # per tile row, all tile cols
    bound = np.repeat(bound, row_granularity(p))[:50, None] * xs[None, :]
    err = np.abs(y - exact)
    assert np.all(err <= bound * 1.0001 + 1e-6)
    assert err.max() > 0.05 * bound.max()  # quantisation really happens


def test_stuck_at_rates_within_binomial_bound_and_values_stuck() -> None:
    p_lo, p_hi = 0.03, 0.07
    p = DeviceProfile(**BASE, stuck_at_gmin_rate=p_lo, stuck_at_gmax_rate=p_hi)
    w = np.abs(_rand((256, 256))) * 0 + 0.5  # all weights = half scale
    pm = ProgrammedMatrix.program(w, p, seed=4)
    lo, hi = pm.fault_masks()
    n = lo.size
    for mask, rate in ((lo, p_lo), (hi, p_hi)):
        assert abs(mask.sum() - n * rate) < 5 * np.sqrt(n * rate * (1 - rate))
    assert not np.any(lo & hi)
    # w = 0.5*wmax=wmax: G+ = Gmax (target 1.0), G- = Gmin (0): effective = g+ - g-
    gp = np.where(lo[..., 0], 0.0, 1.0)
    gm = np.where(hi[..., 1], 1.0, 0.0)
    expect = (gp - gm) * _per_weight_scale(pm)
    np.testing.assert_allclose(pm.effective_weights(), expect, atol=CODE)


def test_level_quantisation_error_bounded_by_half_spacing() -> None:
    bits = 3
    p = DeviceProfile(**{**BASE, "g_min_us": 4.0}, level_bits=bits)
    w = _rand((64, 96))
    pm = ProgrammedMatrix.program(w, p, seed=0)
    span = 1 - 4.0 / 40.0
    step = span / (2**bits - 1)
    scale = _per_weight_scale(pm)
    err = np.abs(pm.effective_weights() - w)
    bound = (step / 2 + CODE) * scale
    assert np.all(err <= bound)
    assert err.max() > 0.5 * step / 2 * scale.max()  # not trivially exact
    # at most 2*levels-1 distinct effective values per tile (differences of levels)
    tile = pm.codes[:16, :32]
    assert len(np.unique(tile)) <= 2 * 2**bits - 1


def test_programming_noise_is_state_dependent_as_the_polynomial_says() -> None:
    # offset mapping: one device per weight; g = gmid + w/wmax * span/2
    poly = (0.3, 1.2)  # sigma(g) = 0.3 + 1.2 g  uS
    p = DeviceProfile(**{**BASE, "g_min_us": 8.0}, mapping="offset", prog_noise_poly_us=poly)
    m, k = 512, 64
    w = np.ones((m, k), np.float32)
    w[:, ::2] = -1.0  # two states: g = 1 (w=+1) and g = gmin (w=-1)
    pm = ProgrammedMatrix.program(w, p, seed=5)
    gmin = 8.0 / 40.0
    g_eff = pm.codes.astype(np.float64) * CODE + (1 + gmin) / 2  # back to conductance (units of Gmax)
    for g_target, cols in ((1.0, slice(1, None, 2)), (gmin, slice(0, None, 2))):
        dev = g_eff[:, cols] - g_target
        sigma = (poly[0] + poly[1] * g_target) / 40.0
        n = dev.size
        assert abs(dev.mean()) < 5 * sigma / np.sqrt(n)
        assert abs(dev.std() / sigma - 1) < 5 * np.sqrt(1 / (2 * n))


def test_prog_noise_scale_scales_the_spread() -> None:
    base = DeviceProfile(**{**BASE, "g_min_us": 8.0}, prog_noise_poly_us=(0.5,))
    w = _rand((128, 128))
    spreads = []
    for s in (0.5, 1.0, 2.0):
        pm = ProgrammedMatrix.program(w, base.with_changes(prog_noise_scale=s), seed=1)
        spreads.append(np.std((pm.effective_weights() - w) / _per_weight_scale(pm)))
    np.testing.assert_allclose(np.array(spreads) / spreads[1], [0.5, 1.0, 2.0], rtol=0.03)


@pytest.mark.parametrize("compensate", [False, True])
def test_drift_follows_power_law(compensate: bool) -> None:
    nu, t0 = 0.08, 10.0
    p = DeviceProfile(**BASE, drift_nu=nu, drift_t0_s=t0, drift_compensation=compensate)
    w, x = _rand((40, 70)), _rand((70, 3), 1)
    pm = ProgrammedMatrix.program(w, p, seed=0)
    y0 = pm.matmul(x, elapsed_s=t0).astype(np.float64)
    for t in (100.0, 1e4, 1e6):
        y = pm.matmul(x, elapsed_s=t).astype(np.float64)
        expected = y0 if compensate else y0 * (t / t0) ** -nu
        np.testing.assert_allclose(y, expected, rtol=2e-5, atol=1e-6 * np.abs(y0).max())
    assert drift_factor(p, 1e4) == pytest.approx(1e3**-nu)
    assert drift_factor(p, 5.0) == 1.0  # no drift before t0


def test_ir_drop_grows_with_distance_from_drivers_and_sense_amps() -> None:
    r_wire = 5.0
    p = DeviceProfile(**BASE, wire_ohm_per_cell=r_wire)  # 32x32 array: 16 outputs x 32 inputs per tile
    w = np.ones((16, 32), np.float32)
    pm = ProgrammedMatrix.program(w, p, seed=0)
    eff = pm.effective_weights().astype(np.float64)  # G+ = Gmax, G- = 0
    out_pos = np.arange(16)[:, None]
    in_pos = np.arange(32)[None, :]
    segments = (2 * out_pos + 1) + (32 - in_pos)  # G+ sits on bit line 2p
    expect = 1.0 / (1.0 + 40e-6 * r_wire * segments)
    np.testing.assert_allclose(eff / pm.scales[0, 0], expect, atol=CODE)
    assert np.all(np.diff(eff, axis=0) < 0)  # farther along the word line: more drop
    assert np.all(np.diff(eff, axis=1) > 0)  # closer to the sense amp: less drop


def test_dac_quantisation_and_fixed_range_saturation() -> None:
    p = DeviceProfile(**BASE, dac_bits=4)
    x = np.linspace(-1, 1, 1001, dtype=np.float32)[:, None]
    xn, xs = dac_quantise(x, p)
    assert xs[0] == 1.0
    assert np.all(np.abs(xn - x) <= 0.5 / 7 + 1e-7)
    fixed = p.with_changes(dac_input_range=0.5)
    xn, xs = dac_quantise(x, fixed)
    assert xs[0] == 0.5 and xn.max() == 1.0 and xn.min() == -1.0  # clipped at the range


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_read_path_is_exact_up_to_code_rounding_without_noise(mapping: str) -> None:
    # drift with compensation forces the non-ideal path but cancels exactly
    p = DeviceProfile(**{**BASE, "g_min_us": 4.0}, mapping=mapping, drift_nu=0.05, drift_compensation=True)
    w, x = _rand((45, 100)), _rand((100, 5), 1)
    pm = ProgrammedMatrix.program(w, p, seed=0)
    y = pm.matmul(x, elapsed_s=1e5).astype(np.float64)
    ref = w.astype(np.float64) @ x
    bound = (CODE / 2) * (np.abs(_per_weight_scale(pm)) @ np.abs(x)) + 1e-5 * np.abs(ref).max()
    assert np.all(np.abs(y - ref) <= bound)
