"""Each non-ideality alone against its analytic expectation."""

import math

import numpy as np
import pytest

from compute import aging
from compute.crossbar import G_LSB, ProgrammedMatrix, adc_quantise, dac_quantise, row_granularity
from compute.device import DeviceProfile

BASE = dict(name="t", rows=32, cols=32, g_min_us=0.0, g_max_us=40.0)


def _rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _per_weight_scale(pm: ProgrammedMatrix) -> np.ndarray:
    """The per-tile digital scale broadcast to every weight (M, K)."""
    g, q = row_granularity(pm.profile), pm.profile.tile_inputs
    m, k = pm.shape
    return np.repeat(np.repeat(pm.scales, q, axis=1)[:, :k], g, axis=0)[:m]


@pytest.mark.parametrize("read_noise, out_noise", [(0.8, 0.0), (0.0, 0.05), (0.8, 0.05)])
def test_read_and_output_noise_variance_matches_analytic(read_noise: float, out_noise: float) -> None:
    p = DeviceProfile(**BASE, read_noise_us=read_noise, out_noise=out_noise)
    w, x = _rand((40, 70)), _rand((70,), 1)
    pm = ProgrammedMatrix.program(w, p, seed=0)
    n = 4000
    y = pm.matmul(np.repeat(x[:, None], n, axis=1), read_seed=3)  # n independent reads
    xn, xs = dac_quantise(x[:, None], p)
    q = p.tile_inputs
    sq = np.zeros(((70 + q - 1) // q) * q)
    sq[:70] = xn[:, 0].astype(np.float64) ** 2
    per_tile = sq.reshape(-1, q).sum(1)  # sum of x^2 over each tile's inputs
    sigma_n = read_noise / p.g_max_us
    tile_var = sigma_n**2 * 2 * per_tile + out_noise**2  # 2 devices per weight, then the output
    var_tile_row = xs[0] ** 2 * (pm.scales.astype(np.float64) ** 2 @ tile_var)
    var = np.repeat(var_tile_row, row_granularity(p))[:40]
    ratio = y.var(axis=1, ddof=1) / var
    tol = 6 * np.sqrt(2 / (n - 1))
    assert np.all(np.abs(ratio - 1) < tol), ratio
    assert abs(ratio.mean() - 1) < 3 * np.sqrt(2 / (n - 1) / 40)
    z = (y - y.mean(axis=1, keepdims=True)) / y.std(axis=1, keepdims=True)
    assert abs(np.mean(z**4) - 3.0) < 5 * np.sqrt(24 / z.size)  # Gaussian shape
    clean = pm.effective_weights().astype(np.float64) @ x
    assert np.all(np.abs(y.mean(axis=1) - clean) < 6 * np.sqrt(var / n))


def test_a_vectors_result_does_not_depend_on_its_batch_mates() -> None:
    p = DeviceProfile(**BASE, read_noise_us=0.8, out_noise=0.05, adc_bits=8, adc_calibration="calibrated",
                      bound_management=True)
    w, x = _rand((40, 70)), _rand((70, 6), 1)
    pm = ProgrammedMatrix.program(w, p, seed=0)
    y = pm.matmul(x, read_seed=9)
    other = x.copy()
    other[:, 1:] = _rand((70, 5), 2) * 30  # different, larger batch-mates
    y2 = pm.matmul(other, read_seed=9)
    np.testing.assert_array_equal(y2[:, 0], y[:, 0])
    np.testing.assert_array_equal(pm.matmul(x[:, :1], read_seed=9)[:, 0], y[:, 0])
    assert not np.array_equal(y2[:, 1], y[:, 1])


def test_adc_error_within_half_lsb_until_saturation_then_bound_management() -> None:
    p = DeviceProfile(**BASE, adc_bits=6, adc_range=4.0)
    lsb = 4.0 / 31
    top = 31 * lsb
    i = np.linspace(-6.0, 6.0, 100001).astype(np.float32)
    out = adc_quantise(i, lsb, p)
    inside = np.abs(i) <= top
    assert np.all(np.abs(out[inside] - i[inside]) <= lsb / 2 + 1e-6)
    assert np.all(out[i > top + lsb / 2] == np.float32(top))
    assert len(np.unique(out)) == 2**6 - 1
    bm = adc_quantise(i, lsb, p.with_changes(bound_management=True))
    np.testing.assert_array_equal(bm[inside], out[inside])
    beyond = ~inside
    # one halving covers |i| <= 2 * top: error within one (doubled) half LSB, no saturation
    assert np.all(np.abs(bm[beyond] - i[beyond]) <= lsb + 1e-6)


def test_calibrated_adc_range_is_headroom_times_largest_output_rms() -> None:
    p = DeviceProfile(**BASE, adc_bits=8, adc_calibration="calibrated", adc_headroom=2.5)
    w = _rand((16, 32))
    pm = ProgrammedMatrix.program(w, p, seed=0)
    d = pm.conductances()
    eff = d[..., 0] - d[..., 1]  # (16, 32): one tile
    rms = np.sqrt((eff**2).sum(1) / 12 + eff.sum(1) ** 2 / 4)  # uniform [0, 1] inputs
    assert pm.tiles["adc"][0, 0] == pytest.approx(2.5 * rms.max(), rel=1e-6)
    # and it is what uniform inputs really give
    u = np.random.default_rng(1).random((32, 20000))
    assert np.sqrt(np.mean((eff @ u) ** 2, axis=1)).max() == pytest.approx(rms.max(), rel=0.03)


def test_adc_end_to_end_error_bounded_by_half_lsb_per_tile() -> None:
    p = DeviceProfile(**BASE, adc_bits=7, adc_range=8.0)
    w, x = _rand((50, 100)), np.abs(_rand((100, 4), 1))
    pm = ProgrammedMatrix.program(w, p, seed=0)
    y = pm.matmul(x).astype(np.float64)
    exact = pm.effective_weights().astype(np.float64) @ x
    xs = np.abs(x).max(axis=0)
    bound = (8.0 / 63 / 2) * pm.scales.astype(np.float64).sum(axis=1)  # per tile row, all tile cols
    bound = np.repeat(bound, row_granularity(p))[:50, None] * xs[None, :]
    err = np.abs(y - exact)
    assert np.all(err <= bound * 1.0001 + 1e-6)
    assert err.max() > 0.05 * bound.max()  # quantisation really happens


def test_stuck_at_rates_within_binomial_bound_and_values_stuck() -> None:
    p_lo, p_hi = 0.03, 0.07
    p = DeviceProfile(**BASE, stuck_at_gmin_rate=p_lo, stuck_at_gmax_rate=p_hi)
    w = np.full((256, 256), 0.5, np.float32)  # all weights = wmax
    pm = ProgrammedMatrix.program(w, p, seed=4)
    lo, hi = pm.fault_masks()
    n = lo.size
    for mask, rate in ((lo, p_lo), (hi, p_hi)):
        assert abs(mask.sum() - n * rate) < 5 * np.sqrt(n * rate * (1 - rate))
    assert not np.any(lo & hi)
    gp = np.where(lo[..., 0], 0.0, 1.0)  # target G+ = Gmax, G- = Gmin = 0
    gm = np.where(hi[..., 1], 1.0, 0.0)
    np.testing.assert_allclose(pm.effective_weights(), (gp - gm) * _per_weight_scale(pm), atol=1e-6)


def test_level_quantisation_error_bounded_by_half_spacing() -> None:
    bits = 3
    p = DeviceProfile(**{**BASE, "g_min_us": 4.0}, level_bits=bits)
    w = _rand((64, 96))
    pm = ProgrammedMatrix.program(w, p, seed=0)
    step = (1 - 4.0 / 40.0) / (2**bits - 1)
    scale = _per_weight_scale(pm)
    err = np.abs(pm.effective_weights() - w)
    bound = (step / 2 + G_LSB) * scale  # level rounding + the two devices' code rounding
    assert np.all(err <= bound)
    assert err.max() > 0.5 * step / 2 * scale.max()
    assert len(np.unique(pm.codes)) <= 2**bits  # every device sits on one of the levels


def test_programming_noise_is_state_dependent_as_the_polynomial_says() -> None:
    poly = (0.3, 1.2)  # sigma(g) = 0.3 + 1.2 g  uS
    p = DeviceProfile(**{**BASE, "g_min_us": 8.0}, mapping="offset", prog_noise_poly_us=poly)
    m, k = 512, 64
    w = np.ones((m, k), np.float32)
    w[:, ::2] = -1.0  # two states: g = 1 (w=+1) and g = gmin (w=-1)
    pm = ProgrammedMatrix.program(w, p, seed=5)
    g = pm.conductances()[..., 0]
    for g_target, cols in ((1.0, slice(1, None, 2)), (8.0 / 40.0, slice(0, None, 2))):
        dev = g[:, cols] - g_target
        sigma = (poly[0] + poly[1] * g_target) / 40.0
        n = dev.size
        assert abs(dev.mean()) < 5 * sigma / np.sqrt(n) + G_LSB / 10
        # measured spread includes the code rounding (uniform, LSB^2/12)
        expect = math.sqrt(sigma**2 + G_LSB**2 / 12)
        assert abs(dev.std() / expect - 1) < 5 * np.sqrt(1 / (2 * n))


def test_prog_noise_scale_scales_the_spread() -> None:
    base = DeviceProfile(**{**BASE, "g_min_us": 8.0}, prog_noise_poly_us=(1.0,))
    w = _rand((128, 128))
    spreads = []
    for s in (0.5, 1.0, 2.0):
        pm = ProgrammedMatrix.program(w, base.with_changes(prog_noise_scale=s), seed=1)
        spreads.append(np.std((pm.effective_weights() - w) / _per_weight_scale(pm)))
    np.testing.assert_allclose(np.array(spreads) / spreads[1], [0.5, 1.0, 2.0], rtol=0.05)


@pytest.mark.parametrize("compensate", [False, True])
def test_fixed_drift_follows_power_law_and_compensation_cancels_it(compensate: bool) -> None:
    nu, t0 = 0.08, 10.0
    p = DeviceProfile(**BASE, drift_model="fixed", drift_nu=nu, drift_t0_s=t0, drift_compensation=compensate)
    w = _rand((40, 70))
    pm0 = ProgrammedMatrix.program(w, p.with_changes(read_time_s=0.0), seed=0)
    w0, scale = pm0.effective_weights(), _per_weight_scale(pm0)
    for t in (100.0, 1e4, 1e6):
        wt = ProgrammedMatrix.program(w, p.with_changes(read_time_s=t), seed=0).effective_weights()
        factor = ((t + t0) / t0) ** -nu
        expected = w0 if compensate else w0 * factor
        # code rounding of the two devices (half an LSB each), undone by the compensation
        # (with compensation also the estimate's own rounding error)
        atol = G_LSB * scale * (2 / factor if compensate else 1.01)
        assert np.all(np.abs(wt - expected) <= atol + 1e-6)
        assert not np.allclose(wt, w0 * factor if compensate else w0, atol=3 * atol.max())


def test_pcm_drift_exponents_follow_aihwkit_mean_and_spread() -> None:
    # aihwkit inference/noise/pcm.py generate_drift_coefficients, at two conductance levels
    t0, t = 20.0, 1e7
    p = DeviceProfile(**{**BASE, "g_max_us": 25.0}, drift_model="pcm", drift_t0_s=t0, read_time_s=t,
                      mapping="offset")
    w = np.where(np.arange(128)[None, :] % 2 == 0, 1.0, 0.1).astype(np.float32) * np.ones((512, 1), np.float32)
    p0 = ProgrammedMatrix.program(w, p.with_changes(drift_model="fixed", drift_nu=0.0), seed=2).conductances()[..., 0]
    pt = ProgrammedMatrix.program(w, p, seed=2).conductances()[..., 0]
    nu = -np.log(pt / p0) / math.log((t + t0) / t0)
    for cols, g_mid in ((slice(0, None, 2), 1.0), (slice(1, None, 2), 0.5 + 0.5 * 0.1)):
        mu = min(max(-0.0155 * math.log(g_mid) + 0.0244, 0.049), 0.1)
        sig = min(max(-0.0125 * math.log(g_mid) - 0.0059, 0.008), 0.045)
        got = nu[:, cols]
        assert got.mean() == pytest.approx(mu, abs=0.002)
        assert got.std() == pytest.approx(sig, rel=0.15)


def test_pcm_read_noise_scales_with_g_to_the_035_and_is_fixed_per_time() -> None:
    t0, t = 20.0, 3600.0
    p = DeviceProfile(**{**BASE, "g_max_us": 25.0}, read_noise_model="pcm", drift_t0_s=t0, read_time_s=t,
                      mapping="offset")
    levels = (1.0, 0.3)
    w = np.tile(np.array([1.0, -0.4], np.float32), (1024, 32))  # g = 1 and g = 0.5 - 0.2 = 0.3
    g = ProgrammedMatrix.program(w, p, seed=3).conductances()[..., 0]
    for j, g0 in enumerate(levels):
        q_s = min(0.0088 / max(g0**0.65, 1e-3), 0.2)
        sigma = g0 * q_s * math.sqrt(math.log((t + t0 + 250e-9) / (2 * 250e-9)))
        expect = math.sqrt(sigma**2 + G_LSB**2 / 12)
        assert g[:, j::2].std() == pytest.approx(expect, rel=0.05)
        assert g[:, j::2].mean() == pytest.approx(g0, abs=3 * sigma / math.sqrt(g[:, j::2].size) + G_LSB / 4)
    assert aging.pcm_read_sigma(np.zeros(3), np.zeros(3), t).max() == 0.0  # ~0 near g = 0
    # drawn once: two reads of the same inference time see the same devices
    x = _rand((64, 3), 4)
    pm = ProgrammedMatrix.program(w, p, seed=3)
    np.testing.assert_array_equal(pm.matmul(x, read_seed=1), pm.matmul(x, read_seed=2))


def test_global_drift_compensation_is_estimated_from_calibration_reads() -> None:
    p = DeviceProfile(**{**BASE, "g_max_us": 25.0}, drift_model="pcm", drift_t0_s=20.0, read_time_s=86400.0)
    w = _rand((160, 96))
    raw = ProgrammedMatrix.program(w, p, seed=1)
    comp = ProgrammedMatrix.program(w, p.with_changes(drift_compensation=True), seed=1)
    # the estimate is the ratio of all-ones reads, not the exact (unknown) per-device factors
    g0 = ProgrammedMatrix.program(w, p.with_changes(drift_model="fixed", drift_nu=0.0), seed=1).conductances()
    gt = raw.conductances()
    base = (g0[..., 0] - g0[..., 1])[:16, :32].sum(1)
    now = (gt[..., 0] - gt[..., 1])[:16, :32].sum(1)
    assert comp.tiles["gdc"][0, 0] == pytest.approx(np.abs(base).mean() / np.abs(now).mean(), rel=0.01)
    assert 1.3 < comp.tiles["gdc"].mean() < 2.0  # one day of drift at nu ~ 0.05..0.1
    gain = lambda pm: float((pm.effective_weights() * w).sum() / (w * w).sum())  # noqa: E731
    assert gain(raw) < 0.75
    assert gain(comp) == pytest.approx(1.0, abs=0.06)


def test_clip_sigma_clips_weights_at_mapping() -> None:
    p = DeviceProfile(**BASE, clip_sigma=2.0)
    w = _rand((16, 32))
    pm = ProgrammedMatrix.program(w, p, seed=0)
    limit = 2.0 * np.sqrt(np.mean(w.astype(np.float64) ** 2))
    eff = pm.effective_weights()
    big = np.abs(w) > limit
    assert big.any()
    np.testing.assert_allclose(np.abs(eff[big]), limit, rtol=G_LSB * 2)
    np.testing.assert_allclose(eff[~big], w[~big], atol=G_LSB * limit)


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
    # a zero fixed drift forces the non-ideal path and changes nothing
    p = DeviceProfile(**{**BASE, "g_min_us": 4.0}, mapping=mapping, drift_model="fixed", drift_nu=0.0)
    w, x = _rand((45, 100)), _rand((100, 5), 1)
    pm = ProgrammedMatrix.program(w, p, seed=0)
    y = pm.matmul(x).astype(np.float64)
    np.testing.assert_allclose(y, pm.effective_weights().astype(np.float64) @ x, rtol=1e-4,
                               atol=1e-4 * np.abs(y).max())
    ref = w.astype(np.float64) @ x
    per_dev = G_LSB / 2 * (2 if mapping == "differential" else 1)  # code rounding of each device
    bound = per_dev * (np.abs(_per_weight_scale(pm)) @ np.abs(x)) + 1e-5 * np.abs(ref).max()
    assert np.all(np.abs(y - ref) <= bound)


FAULTS = dict(**BASE, stuck_at_gmin_rate=0.05, stuck_at_gmax_rate=0.10)


def test_fault_aware_mapping_repairs_pairs_through_the_partner() -> None:
    p = DeviceProfile(**FAULTS, fault_aware=True)  # no noise: a repaired pair is exact
    w = _rand((64, 64))
    pm = ProgrammedMatrix.program(w, p, seed=7)
    raw = ProgrammedMatrix.program(w, p.with_changes(fault_aware=False), seed=7)
    lo, hi = pm.fault_masks()
    stuck = lo | hi
    scale = _per_weight_scale(pm)
    wn = w / scale  # target difference in units of Gmax
    gmax_p, gmin_p = hi[..., 0] & ~stuck[..., 1], lo[..., 0] & ~stuck[..., 1]
    gmax_m, gmin_m = hi[..., 1] & ~stuck[..., 0], lo[..., 1] & ~stuck[..., 0]
    # feasible repairs: G+ stuck high and w >= 0 (G- = 1 - w), G+ stuck low and w <= 0 (G- = -w), ...
    fixable = (gmax_p & (wn >= 0)) | (gmin_p & (wn <= 0)) | (gmax_m & (wn <= 0)) | (gmin_m & (wn >= 0))
    # ... unless the partner is re-programmed onto a stuck device of its own (drawn afresh)
    err = np.abs(pm.effective_weights() - w) / scale
    assert fixable.sum() > 50
    assert np.mean(err[fixable] <= G_LSB) > 0.8
    assert np.all(err[~stuck.any(-1)] <= G_LSB)  # healthy pairs are untouched
    raw_err = np.linalg.norm(raw.effective_weights() - w)
    assert np.linalg.norm(pm.effective_weights() - w) < 0.6 * raw_err


def test_spare_columns_replace_the_worst_columns_and_only_when_better() -> None:
    # 32 device columns with 8 spare (4 pairs): 12 outputs per array
    p = DeviceProfile(**FAULTS, fault_aware=True, spare_cols=8)
    assert p.tile_outputs == 12
    w = _rand((48, 64))
    with_spares = ProgrammedMatrix.program(w, p, seed=3)
    without = ProgrammedMatrix.program(w, p.with_changes(spare_cols=0, cols=24), seed=3)  # same 12 outputs
    assert without.profile.tile_outputs == 12
    e_sp = np.abs(with_spares.effective_weights() - w)
    e_no = np.abs(without.effective_weights() - w)
    # per array (12 outputs x 32 inputs): at most 4 output columns differ, each now better
    q = p.tile_inputs
    for r in range(4):
        for c in range(2):
            rows, cols = slice(12 * r, 12 * r + 12), slice(q * c, q * c + q)
            col_err_sp = (e_sp[rows, cols] ** 2).sum(1)
            col_err_no = (e_no[rows, cols] ** 2).sum(1)
            changed = ~np.isclose(col_err_sp, col_err_no)
            assert changed.sum() <= 4
            assert np.all(col_err_sp[changed] < col_err_no[changed])
    assert np.linalg.norm(e_sp) < np.linalg.norm(e_no)
