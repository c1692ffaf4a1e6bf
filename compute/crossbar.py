"""Programming a matrix onto crossbar tiles once, then reading it many times.

Layout. W (M, K) is cut into tiles of ``tile_outputs`` rows x ``tile_inputs``
columns of W (see ``DeviceProfile``). Each input (column of W) drives one word
line; each output (row of W) is read on one bit line (offset mapping) or on a
pair of adjacent bit lines whose currents are subtracted (differential
mapping). Partial sums of tiles that share output rows are digitised per tile
and added in digital, as real tiled accelerators do.

Device state. Every device keeps one uint8 conductance code (LSB = Gmax/200,
so up to 1.275 Gmax): its conductance at the profile's inference time
(``read_time_s``), after level quantisation, programming noise, stuck faults,
the verify-read repair (``compute.faultmap``), per-device drift and the
accumulated 1/f noise (``compute.aging``) — so 2 bytes per weight for pairs.
Input-dependent effects are computed from these codes at every read: DAC,
IR drop (``compute.circuit``: a per-read circuit solve, or the fast
calibrated per-tile factors), per-device read noise, output noise, ADC with
a per-tile calibrated range and bound management, drift compensation. Per
tile a few float32 are kept: the digital scale, the ADC range, the drift
compensation factor and, in fast IR-drop mode, one factor per word line and
bit line. ``ideal`` keeps float32 weights.

Reproducibility. Every programming draw is keyed by ``(seed, purpose, global
tile row)`` and always covers a full tile row before cropping, so programming
rows [r0, r1) of W on one node yields exactly the state that programming all
of W and slicing gives — placement does not change results. Read noise is
keyed by ``(seed, read_seed, column of X)`` with a counter-based generator
(Philox) advanced to the global tile row, so a vector's result does not depend
on its batch-mates nor on where its rows were placed.

Speed. A read is float32 throughout, with scratch preallocated per call and
nothing cached across requests (each computes W @ X with its own read noise).
Per tile row: the uint8 codes are decoded once into one float32 buffer (two
in-place passes), the inputs are scaled per tile (ADC unit, word-line IR
factors), and one batched GEMM writes every tile's partial sums, laid out
(tile row, column of X, tile column, output) so that each column's noise —
drawn for all columns at once with one table lookup — is added without a
transposing copy. The ADC is a bare rint unless something saturates; the
digital sum over tile columns is one batched matmul. Programming is float32
too (see the section below). The circuit IR-drop mode is the exception: it
solves each tile's circuit for the batch (slow; for validation and small
layers).
"""

from __future__ import annotations

import threading
from typing import Any

from compute.lazynumpy import np

from compute import aging, circuit, faultmap
from compute.device import DeviceProfile

STATE_FORMAT = "sedma.crossbar/2"
#: States saved before per-device codes (one int16 effective conductance per weight).
LEGACY_FORMAT = "sedma.crossbar/1"
G_CODE_STEPS = 200  # uint8 device codes: G = code * Gmax / 200, up to 1.275 Gmax
G_LSB = 1.0 / G_CODE_STEPS
_STREAM_PROG, _STREAM_FAULT, _STREAM_READ, _STREAM_AGE, _STREAM_REPAIR, _STREAM_SPARE = 1, 2, 3, 4, 5, 6
_CHUNK_ELEMS = 1 << 21  # partial sums per chunk (8 MiB scratch, and as much for its noise)
_MAX_SEED = 2**63 - 1
_BOUND_STEPS = 10  # bound management: re-read at up to 2^-10 of the input


def row_granularity(profile: DeviceProfile) -> int:
    """Rows of W one tile covers; row blocks on different nodes start at multiples of it."""
    return profile.tile_outputs


# ---------------------------------------------------------------------------
# Random streams
# ---------------------------------------------------------------------------

def _rng(*key: int) -> np.random.Generator:
    """A generator keyed by integers only, so any node derives the same stream."""
    return np.random.default_rng(list(key))


_TABLE_LOCK = threading.Lock()
_NORMAL_TABLE: np.ndarray | None = None


def _normal_table() -> np.ndarray:
    """65536 standard-normal quantiles, renormalised to unit variance.

    Why: numpy's ziggurat costs ~8 ns per sample, and read noise needs
    M*B*(tiles per row) fresh samples per read. Indexing this table with 16
    random bits is ~4x cheaper. It is a discretised normal truncated at 4.3
    sigma; its variance is exactly 1.
    """
    global _NORMAL_TABLE
    with _TABLE_LOCK:
        if _NORMAL_TABLE is None:
            import statistics   # here, not at start: statistics pulls in decimal and fractions

            nd = statistics.NormalDist()
            probs = (np.arange(65536) + 0.5) / 65536.0
            q = np.array([nd.inv_cdf(float(p)) for p in probs], dtype=np.float64)
            q /= np.sqrt(np.mean(q * q))
            _NORMAL_TABLE = q.astype(np.float32)
        return _NORMAL_TABLE


class ColumnNoise:
    """Standard normals per (column of X, global tile row) for one (seed, read_seed).

    Philox is counter-based: the 256-bit counter is set to (tile row x blocks
    per row, column), so any node reading any span of tile rows of any column
    draws exactly the samples the whole read would, and a column's noise does
    not depend on the other columns in the batch. One generator per read;
    moving between columns is a counter update, not a new key derivation.
    """

    def __init__(self, seed: int, read_seed: int) -> None:
        key = np.random.SeedSequence([seed, _STREAM_READ, read_seed]).generate_state(2, np.uint64)
        self._bits = np.random.Philox(key=key)
        self._state = self._bits.state
        self._table = _normal_table()

    def normals(self, col: int, first_row: int, n_rows: int, per_row: int) -> np.ndarray:
        """(n_rows, per_row) float32 standard normals for column ``col`` from tile row ``first_row``."""
        return self.block(1, first_row, n_rows, per_row, first_col=col)[0]

    def block(self, n_cols: int, first_row: int, n_rows: int, per_row: int, first_col: int = 0) -> np.ndarray:
        """(n_cols, n_rows, per_row) float32 normals: columns [first_col, first_col + n_cols).

        One Philox call per column fills that column's raw bits; a single table
        lookup then turns the whole block into normals.
        """
        blocks = -(-per_row // 16)  # one Philox block = 4 words = 16 uint16 samples
        words = n_rows * blocks * 4
        raw = np.empty((n_cols, words), dtype=np.uint64)
        state = self._state
        for i in range(n_cols):
            state["state"]["counter"] = np.array([first_row * blocks, first_col + i, 0, 0], dtype=np.uint64)
            state["buffer_pos"] = 4  # drop any buffered words
            self._bits.state = state
            raw[i] = self._bits.random_raw(words)
        idx = raw.view(np.uint16).reshape(n_cols, n_rows, blocks * 16)
        return self._table[idx if blocks * 16 == per_row else idx[..., :per_row]]


# ---------------------------------------------------------------------------
# Programming (one tile row at a time; programming is the rare operation)
#
# Speed: everything is float32 (a device's state is stored as a uint8 code, so
# float64 buys nothing), random draws are made in float32 and only for the
# effects the profile has, and the per-tile calibrations (IR-drop factors, ADC
# range) work on the tile row's devices in array layout, built once from the
# uint8 codes. Sums over a tile accumulate in float64.
# ---------------------------------------------------------------------------


def _poly(coeffs: tuple[float, ...], g: np.ndarray) -> np.ndarray:
    """Evaluate an ascending polynomial with Horner's rule, in g's dtype, in place."""
    out = np.full_like(g, coeffs[-1] if coeffs else 0.0)
    for c in reversed(coeffs[:-1]):
        out *= g
        out += c
    return out


def _pad_cols(a: np.ndarray, q: int, n_tc: int) -> np.ndarray:
    """(p, K, ...) -> (p, n_tc, q, ...) with zero padding of the last tile column."""
    p, k = a.shape[:2]
    if k == n_tc * q:
        return a.reshape((p, n_tc, q) + a.shape[2:])
    out = np.zeros((p, n_tc * q) + a.shape[2:], dtype=a.dtype)
    out[:, :k] = a
    return out.reshape((p, n_tc, q) + a.shape[2:])


def _tile_scales(w: np.ndarray, profile: DeviceProfile, n_tc: int) -> np.ndarray:
    """Per-tile mapping range: max |w| (abs-max), or clip_sigma x std of the tile's weights."""
    tiles = _pad_cols(w, profile.tile_inputs, n_tc)  # (p, n_tc, q)
    wmax = np.abs(tiles).max(axis=(0, 2)).astype(np.float64)
    if profile.clip_sigma > 0:
        k = w.shape[1]
        counts = np.minimum(profile.tile_inputs, k - np.arange(n_tc) * profile.tile_inputs) * w.shape[0]
        std = np.sqrt(np.square(tiles).sum(axis=(0, 2), dtype=np.float64) / counts)
        wmax = np.minimum(wmax, profile.clip_sigma * std)
    wmax[wmax == 0] = 1.0
    return wmax.astype(np.float32)


def _targets(wn: np.ndarray, profile: DeviceProfile) -> np.ndarray:
    """Target normalised conductances (p, K, devices) float32 for weights in [-1, 1],
    snapped to the 2^level_bits programmable levels in [Gmin, Gmax] when the device has levels."""
    gmin = profile.g_min_us / profile.g_max_us
    span = 1.0 - gmin
    levels = 2**profile.level_bits - 1 if profile.level_bits else 0

    def place(frac: np.ndarray) -> np.ndarray:  # frac in [0, 1] of the window -> conductance
        if levels:
            frac = np.rint(frac * np.float32(levels), out=frac)
            frac *= np.float32(span / levels)
        else:
            frac *= np.float32(span)
        frac += np.float32(gmin)
        return frac

    if profile.mapping == "differential":
        out = np.empty(wn.shape + (2,), dtype=np.float32)
        out[..., 0] = place(np.maximum(wn, 0))
        out[..., 1] = place(np.maximum(-wn, 0))
        return out
    frac = (wn + np.float32(1.0)) * np.float32(0.5)
    return place(frac)[..., None]


def _prog_sigma(g: np.ndarray, profile: DeviceProfile) -> np.ndarray:
    """Programming-noise std (normalised) at target g, from the profile's polynomial in uS."""
    if not profile.prog_noise_poly_us or profile.prog_noise_scale == 0:
        return np.zeros_like(g)
    sigma = _poly(profile.prog_noise_poly_us, g)
    np.maximum(sigma, 0.0, out=sigma)
    sigma *= np.float32(profile.prog_noise_scale / profile.g_max_us)
    return sigma


def _has_faults(profile: DeviceProfile) -> bool:
    return profile.stuck_at_gmin_rate > 0 or profile.stuck_at_gmax_rate > 0


def _stuck(u: np.ndarray, profile: DeviceProfile) -> tuple[np.ndarray, np.ndarray]:
    """Stuck-at-Gmin / stuck-at-Gmax masks from uniforms u."""
    lo = u < profile.stuck_at_gmin_rate
    hi = (u >= profile.stuck_at_gmin_rate) & (u < profile.stuck_at_gmin_rate + profile.stuck_at_gmax_rate)
    return lo, hi


def _fault_draws(profile: DeviceProfile, seed: int, tile_row: int, p: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stuck-at-Gmin / stuck-at-Gmax masks (p, K, devices) of one tile row."""
    shape = (profile.tile_outputs, k, profile.devices_per_weight)
    u = _rng(seed, _STREAM_FAULT, tile_row).random(shape, dtype=np.float32)[:p]
    return _stuck(u, profile)


def _draws(rng: np.random.Generator, profile: DeviceProfile, full: tuple[int, ...],
           p: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Programming-noise normals and (if the profile has faults) fault uniforms for one tile row.

    Drawn for the full tile row and cropped to p outputs, so a block's draws do not
    depend on where the matrix ends.
    """
    z = rng.standard_normal(full, dtype=np.float32)[:p]
    u = rng.random(full, dtype=np.float32)[:p] if _has_faults(profile) else None
    return z, u


def _program_devices(target: np.ndarray, z: np.ndarray, u: np.ndarray | None,
                     profile: DeviceProfile) -> np.ndarray:
    """Programming noise then stuck faults: what the devices hold right after programming."""
    g = _prog_sigma(target, profile)
    g *= z
    g += target
    np.maximum(g, 0.0, out=g)
    if u is not None:
        lo, hi = _stuck(u, profile)
        g[lo] = profile.g_min_us / profile.g_max_us
        g[hi] = 1.0
    return g


def _repair(target: np.ndarray, g: np.ndarray, profile: DeviceProfile, seed: int, tile_row: int,
            n_tc: int) -> np.ndarray:
    """Fault-aware mapping of one tile row (differential pairs): partner, then spares.

    The verify read is one vectorised comparison over the tile row; re-programming
    (partners, spare columns) is computed only for the devices it concerns. The
    random draws still cover the full tile row (cropped and indexed), so a device's
    draws depend on its position only.
    """
    gmin = profile.g_min_us / profile.g_max_us
    q, g_rows = profile.tile_inputs, profile.tile_outputs
    p, k, d = g.shape
    full = (g_rows, k, d)

    def fix(tgt: np.ndarray, dev: np.ndarray, rng: np.random.Generator, where: np.ndarray | None) -> np.ndarray:
        """Verify ``dev`` (n, 2) against ``tgt``; re-program partners of stuck devices.

        ``where``: flat weight indices of the rows of tgt/dev in the tile row (None: all).
        """
        flagged = faultmap.flag_stuck(tgt, dev, _prog_sigma(tgt, profile))
        new_t, redo = faultmap.partner_targets(tgt, dev, flagged, gmin)
        z, u = _draws(rng, profile, full, p)
        z, u = z.reshape(p * k, d), None if u is None else u.reshape(p * k, d)
        if where is not None:
            z, u = z[where], None if u is None else u[where]
        pick = np.nonzero(redo)
        out = dev.copy()
        out[pick] = _program_devices(new_t[pick], z[pick], None if u is None else u[pick], profile)
        return out

    flat_t = target.reshape(p * k, d)
    g = fix(flat_t, g.reshape(p * k, d), _rng(seed, _STREAM_REPAIR, tile_row), None).reshape(p, k, d)
    n_spares = profile.spare_cols // d
    if n_spares == 0:
        return g
    errs = faultmap.column_errors(target, g, q, n_tc)
    chosen = faultmap.choose_spares(errs, n_spares)
    # spare pairs of every array of this tile row, programmed afresh: (n_spares, n_tc * q, d)
    rng = _rng(seed, _STREAM_SPARE, tile_row)
    sp_z = rng.standard_normal((n_spares, n_tc * q, d), dtype=np.float32)
    sp_u = rng.random((n_spares, n_tc * q, d), dtype=np.float32) if _has_faults(profile) else None
    rows, cols = np.nonzero(faultmap.expand_columns(chosen, q, k))  # weights of the chosen columns
    where = rows * k + cols
    slot = faultmap.spare_slots(chosen)[rows, cols // q]
    spare = _program_devices(flat_t[where], sp_z[slot, cols], None if sp_u is None else sp_u[slot, cols], profile)
    spare = fix(flat_t[where], spare, _rng(seed, _STREAM_SPARE, tile_row, 1), where)
    # column errors of the spares (only chosen columns have any), as faultmap.column_errors
    err = (spare[:, 0] - spare[:, 1]) - (flat_t[where, 0] - flat_t[where, 1])
    cell = rows * n_tc + cols // q
    spare_errs = np.bincount(cell, weights=(err * err).astype(np.float64), minlength=p * n_tc).reshape(p, n_tc)
    use = (chosen & (spare_errs < errs))[rows, cols // q]
    out = g.reshape(p * k, d)
    out[where[use]] = spare[use]
    return g


def _age_draws(profile: DeviceProfile, seed: int, tile_row: int, full: tuple[int, ...],
               p: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Standard normals for the per-device drift exponent and the accumulated 1/f noise,
    drawn only for the effects the profile has."""
    if profile.drift_model != "pcm" and profile.read_noise_model != "pcm":
        return None, None
    rng = _rng(seed, _STREAM_AGE, tile_row)
    z_nu = rng.standard_normal(full, dtype=np.float32)[:p] if profile.drift_model == "pcm" else None
    z_read = rng.standard_normal(full, dtype=np.float32)[:p] if profile.read_noise_model == "pcm" else None
    return z_nu, z_read


def _program_tile_row(w: np.ndarray, profile: DeviceProfile, seed: int, tile_row: int,
                      n_tc: int) -> dict[str, np.ndarray]:
    """Program one tile row: device codes (devices, p, K) and the per-tile parameters."""
    p, k = w.shape
    q, d = profile.tile_inputs, profile.devices_per_weight
    full = (profile.tile_outputs, k, d)
    wmax = _tile_scales(w, profile, n_tc)
    wn = w / np.repeat(wmax, q)[:k][None, :]
    np.clip(wn, -1.0, 1.0, out=wn)
    target = _targets(wn, profile)
    z = _rng(seed, _STREAM_PROG, tile_row).standard_normal(full, dtype=np.float32)[:p]
    # faults have their own stream, so fault_masks() can regenerate them
    u = _rng(seed, _STREAM_FAULT, tile_row).random(full, dtype=np.float32)[:p] if _has_faults(profile) else None
    g_prog = _program_devices(target, z, u, profile)
    if profile.fault_aware and d == 2:
        g_prog = _repair(target, g_prog, profile, seed, tile_row, n_tc)
    z_nu, z_read = _age_draws(profile, seed, tile_row, full, p)
    g_t = aging.age(profile, target, g_prog, z_nu, z_read)
    g_t *= np.float32(G_CODE_STEPS)
    np.rint(g_t, out=g_t)
    np.clip(g_t, 0, 255, out=g_t)
    codes = g_t.astype(np.uint8)
    phys = _tile_devices(codes, q, n_tc)  # (n_tc, q, p*d) conductances in array layout
    ir_row, ir_col = _ir_factors(phys, k, profile)
    out = {
        "codes": np.moveaxis(codes, -1, 0),
        "scales": _digital_scale(wmax, profile),
        "gdc": _drift_compensation(g_prog, codes, profile, n_tc),
        "adc": _adc_ranges(phys, k, ir_row, ir_col, profile),
    }
    if ir_row is not None:
        out["ir_row"], out["ir_col"] = ir_row, ir_col
    return out


def _tile_devices(codes: np.ndarray, q: int, n_tc: int) -> np.ndarray:
    """(p, K, d) uint8 codes -> (n_tc, q, p*d) float32 conductances (units of Gmax) in array
    layout, word lines x bit lines; word lines past K are zero."""
    p, k, d = codes.shape
    tiles = _pad_cols(codes, q, n_tc)  # (p, n_tc, q, d)
    phys = tiles.transpose(1, 2, 0, 3).reshape(n_tc, q, p * d).astype(np.float32)
    phys *= np.float32(G_LSB)
    return phys


def _ir_factors(phys: np.ndarray, k: int, profile: DeviceProfile) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Fast-mode IR-drop factors per tile, float16 as stored: (n_tc, rows) word-line and (n_tc, cols) bit-line."""
    if profile.wire_ohm_per_cell == 0 or profile.ir_drop_mode != "fast":
        return None, None
    n_tc, q, used_cols = phys.shape
    rho = circuit.wire_rho(profile.wire_ohm_per_cell, profile.g_max_us)
    row_f = np.ones((n_tc, profile.rows), dtype=np.float16)
    col_f = np.ones((n_tc, profile.cols), dtype=np.float16)
    full_tc = k // q  # tile columns with every word line in use
    if full_tc:
        r, c = circuit.fast_factors(phys[:full_tc], rho)
        row_f[:full_tc, :q], col_f[:full_tc, :used_cols] = r, c
    if full_tc < n_tc:  # the partial last tile column: a smaller array
        width = k - full_tc * q
        r, c = circuit.fast_factors(phys[full_tc:, :width], rho)
        row_f[full_tc:, :width], col_f[full_tc:, :used_cols] = r, c
    return row_f, col_f


def _effective(g: np.ndarray, profile: DeviceProfile) -> np.ndarray:
    """Per-weight effective conductance seen by the sense amp (units of Gmax).

    Offset mapping subtracts an ideal reference column at Gmid in analog.
    """
    if profile.mapping == "differential":
        return g[..., 0] - g[..., 1]
    return g[..., 0] - _g_mid(profile)


def _g_mid(profile: DeviceProfile) -> float:
    return (1.0 + profile.g_min_us / profile.g_max_us) / 2


def _tile_sums(a: np.ndarray, q: int, n_tc: int) -> np.ndarray:
    """(p, K) -> per-tile sums over the tile's inputs (p, n_tc), accumulated in float64."""
    return _pad_cols(a, q, n_tc).sum(axis=2, dtype=np.float64)


def _drift_compensation(g_prog: np.ndarray, codes: np.ndarray, profile: DeviceProfile,
                        n_tc: int) -> np.ndarray:
    """Per-tile global drift compensation from all-ones calibration reads (aihwkit's GDC)."""
    if not profile.drift_compensation:
        return np.ones(n_tc, dtype=np.float32)
    q = profile.tile_inputs
    base = _tile_sums(_effective(g_prog, profile), q, n_tc).T  # (n_tc, p)
    now = _tile_sums(_effective(codes.astype(np.float32), profile), q, n_tc).T * G_LSB
    return aging.compensation(base, now).astype(np.float32)


def _adc_ranges(phys: np.ndarray, k: int, ir_row: np.ndarray | None, ir_col: np.ndarray | None,
                profile: DeviceProfile) -> np.ndarray:
    """Per-tile ADC full scale (units of Gmax*V_read).

    "calibrated": ``adc_headroom`` x the largest output rms of the tile for
    i.i.d. uniform [0, 1] inputs (ReLU-like activations after the DAC's
    abs-max scaling): E[I^2] = sum d^2 / 12 + (sum d)^2 / 4, with the fast
    IR-drop factors as the reads will see them.
    """
    n_tc, q, _ = phys.shape
    if profile.adc_bits == 0 or profile.adc_calibration == "fixed":
        return np.full(n_tc, profile.adc_range, dtype=np.float32)
    g = phys
    if ir_row is not None:
        g = phys * ir_row[:, :q, None].astype(np.float32)
        g *= ir_col[:, None, :phys.shape[2]].astype(np.float32)
    if profile.mapping == "differential":
        eff = g[:, :, 0::2] - g[:, :, 1::2]  # (n_tc, q, p)
    else:
        eff = g - np.float32(_g_mid(profile))
        eff[k // q:, k % q or q:] = 0.0  # word lines past K carry no weight
    s1 = eff.sum(axis=1, dtype=np.float64)
    s2 = np.square(eff).sum(axis=1, dtype=np.float64)
    rms = np.sqrt(s2 / 12.0 + s1 * s1 / 4.0).max(axis=1)
    rng = profile.adc_headroom * rms
    rng[rng <= 0] = 1.0
    return rng.astype(np.float32)


def _weights_with_ir(g: np.ndarray, ir_row: np.ndarray | None, ir_col: np.ndarray | None,
                     profile: DeviceProfile, n_tc: int) -> np.ndarray:
    """Effective per-weight conductance (p, K) including fast IR-drop factors."""
    if ir_row is None:
        return _effective(g, profile)
    p, k, d = g.shape
    q = profile.tile_inputs
    tc = np.arange(k) // q
    row = ir_row[tc, np.arange(k) % q].astype(np.float64)[None, :, None]  # (1, K, 1)
    colidx = np.arange(p)[:, None] * d + np.arange(d)[None, :]  # (p, d)
    col = ir_col[:, colidx][tc].transpose(1, 0, 2).astype(np.float64)  # (p, K, d)
    return _effective(g * row * col, profile) if profile.mapping == "differential" else \
        (g[..., 0] * row[..., 0] * col[..., 0] - _g_mid(profile))


def _digital_scale(wmax: np.ndarray, profile: DeviceProfile) -> np.ndarray:
    """Factor from effective conductance (units of Gmax) back to weight units."""
    span = 1.0 - profile.g_min_us / profile.g_max_us
    factor = 1.0 / span if profile.mapping == "differential" else 2.0 / span
    return (wmax.astype(np.float64) * factor).astype(np.float32)


# ---------------------------------------------------------------------------
# Reading helpers
# ---------------------------------------------------------------------------

def dac_quantise(x: np.ndarray, profile: DeviceProfile) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (K, B) -> (normalised inputs in [-1, 1], per-column digital scale (B,)).

    Per-vector abs-max scaling (``dac_input_range=None``) keeps the DAC range
    used whatever the activation magnitudes; a fixed range clips (saturates).
    """
    if profile.dac_input_range is None:
        xs = np.max(np.abs(x), axis=0).astype(np.float32)
        xs[xs == 0] = 1.0
        xn = x / xs
    else:
        xs = np.full(x.shape[1], profile.dac_input_range, dtype=np.float32)
        xn = np.clip(x / np.float32(profile.dac_input_range), -1.0, 1.0)
    if profile.dac_bits:
        levels = np.float32(2 ** (profile.dac_bits - 1) - 1)
        xn = np.rint(xn * levels) / levels
    return xn.astype(np.float32, copy=False), xs


def adc_quantise(i: np.ndarray, lsb: np.ndarray | float, profile: DeviceProfile,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Digitise currents: round to the LSB; beyond full scale saturate, or with bound
    management re-read at 1/2^n of the input (n up to 10), which keeps the value at a
    2^n times coarser step. ``out`` may be ``i`` (in place)."""
    if profile.adc_bits == 0:
        return i
    top = np.float32(2 ** (profile.adc_bits - 1) - 1)
    if out is i and np.ndim(lsb) == 0 and float(lsb) == 1.0:
        codes = i  # already in converter steps
    else:
        codes = np.divide(i, lsb, out=out) if out is not None else (i / lsb).astype(i.dtype, copy=False)
    saturates = codes.size and max(float(codes.max()), -float(codes.min())) > top
    if profile.bound_management and saturates:
        over = np.abs(codes) > top
        n = np.minimum(np.ceil(np.log2(np.abs(codes[over]) / top)), _BOUND_STEPS)
        step = np.exp2(n).astype(codes.dtype)
        codes[over] = np.clip(np.rint(codes[over] / step), -top, top) * step
        inside = ~over
        codes[inside] = np.rint(codes[inside])
    else:
        np.rint(codes, out=codes)
        np.clip(codes, -top, top, out=codes)
    if codes is not i or float(np.max(lsb)) != 1.0:
        codes *= np.asarray(lsb, dtype=codes.dtype)
    return codes


# ---------------------------------------------------------------------------
# The programmed matrix
# ---------------------------------------------------------------------------

_TILE_KEYS = ("scales", "adc", "gdc")


class ProgrammedMatrix:
    """Frozen programmed state of rows [row_offset, row_offset+M) of a global W."""

    def __init__(self, profile: DeviceProfile, shape: tuple[int, int], row_offset: int, seed: int,
                 codes: np.ndarray | None, tiles: dict[str, np.ndarray] | None,
                 weights: np.ndarray | None) -> None:
        self.profile = profile
        self.shape = (int(shape[0]), int(shape[1]))
        self.row_offset = int(row_offset)
        self.seed = int(seed)
        self.codes = codes  # uint8 (devices, M, K), non-ideal profiles
        self.tiles = tiles or {}  # float32 per-tile parameters, non-ideal profiles
        self.weights = weights  # float32 (M, K), ideal profile only
        self.converted_from: str | None = None  # set when read from an older state format

    @property
    def scales(self) -> np.ndarray | None:
        """Per-tile digital scale (tile rows, tile cols)."""
        return self.tiles.get("scales")

    # -- construction -----------------------------------------------------
    @classmethod
    def program(cls, w: np.ndarray, profile: DeviceProfile, seed: int, row_offset: int = 0) -> "ProgrammedMatrix":
        """Program rows [row_offset, row_offset+M) of a global W once.

        Everything up to the inference time is frozen here; the result is a
        pure function of (w, profile, seed, row_offset).
        """
        w = _check_weights(w)
        _check_seed(seed, "seed")
        g = row_granularity(profile)
        if not isinstance(row_offset, (int, np.integer)) or row_offset < 0 or row_offset % g:
            raise ValueError(f"row_offset must be a non-negative multiple of {g}, got {row_offset!r}")
        if profile.is_ideal:
            return cls(profile, w.shape, row_offset, seed, None, None, np.array(w, dtype=np.float32))
        m, k = w.shape
        n_tr, n_tc = profile.tile_grid((m, k))
        codes = np.empty((profile.devices_per_weight, m, k), dtype=np.uint8)
        tiles = {key: np.empty((n_tr, n_tc), dtype=np.float32) for key in _TILE_KEYS}
        if profile.wire_ohm_per_cell > 0 and profile.ir_drop_mode == "fast":
            tiles["ir_row"] = np.empty((n_tr, n_tc, profile.rows), dtype=np.float16)
            tiles["ir_col"] = np.empty((n_tr, n_tc, profile.cols), dtype=np.float16)
        first = row_offset // g
        for r in range(n_tr):
            rows = slice(r * g, min(m, (r + 1) * g))
            part = _program_tile_row(w[rows], profile, seed, first + r, n_tc)
            codes[:, rows] = part.pop("codes")
            for key, val in part.items():
                tiles[key][r] = val
        return cls(profile, (m, k), row_offset, seed, codes, tiles, None)

    # -- introspection ----------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Resident bytes actually held (equals ``profile.resident_bytes(shape)``)."""
        if self.weights is not None:
            return int(self.weights.nbytes)
        return int(self.codes.nbytes + sum(a.nbytes for a in self.tiles.values()))

    def conductances(self) -> np.ndarray:
        """Device conductances at the inference time, (M, K, devices) float64 in units of Gmax."""
        if self.codes is None:
            raise ValueError("the ideal profile keeps weights, not devices")
        return np.moveaxis(self.codes, 0, -1).astype(np.float64) * G_LSB

    def effective_weights(self) -> np.ndarray:
        """The weights a noise-free read computes with (float32): device codes, fast
        IR-drop factors, drift compensation and digital scale; no DAC/ADC/read noise.
        """
        if self.weights is not None:
            return self.weights.copy()
        prof = self.profile
        q, g = prof.tile_inputs, row_granularity(prof)
        m, k = self.shape
        gdev = self.conductances()
        out = np.empty((m, k))
        n_tc = self.scales.shape[1]
        for r in range(self.scales.shape[0]):
            rows = slice(r * g, min(m, (r + 1) * g))
            ir_row = self.tiles["ir_row"][r] if "ir_row" in self.tiles else None
            ir_col = self.tiles["ir_col"][r] if "ir_col" in self.tiles else None
            eff = _weights_with_ir(gdev[rows], ir_row, ir_col, prof, n_tc)
            factor = (self.scales[r] * self.tiles["gdc"][r]).astype(np.float64)
            out[rows] = eff * np.repeat(factor, q)[:k][None, :]
        return out.astype(np.float32)

    def fault_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Regenerate the raw (stuck_at_gmin, stuck_at_gmax) masks (M, K, devices per weight).

        These are the devices' faults before any repair by fault-aware mapping.
        """
        m, k = self.shape
        d = self.profile.devices_per_weight
        lo = np.zeros((m, k, d), dtype=bool)
        hi = np.zeros((m, k, d), dtype=bool)
        if self.weights is not None:
            return lo, hi
        g = row_granularity(self.profile)
        first = self.row_offset // g
        for r in range(-(-m // g)):
            rows = slice(r * g, min(m, (r + 1) * g))
            lo[rows], hi[rows] = _fault_draws(self.profile, self.seed, first + r, rows.stop - rows.start, k)
        return lo, hi

    # -- reading ----------------------------------------------------------
    def matmul(self, x: np.ndarray, read_seed: int = 0, *, tile_rows: tuple[int, int] | None = None) -> np.ndarray:
        """Y = W @ X through the arrays; (K,B) or (K,) float32 -> (M,B) or (M,).

        Thread-safe: reads only immutable state, all scratch is per call. The
        inference time is the profile's ``read_time_s`` (program with another
        profile time to read at another time: same seed, same devices).
        ``tile_rows=(t0, t1)`` reads only tile rows [t0, t1) (output rows
        [t0*g, min(M, t1*g)) for g = ``row_granularity``): the same values the
        full read gives there, so callers may split one read across threads.
        """
        x = np.asarray(x)
        vector = x.ndim == 1
        x2 = _check_inputs(x, self.shape[1])
        _check_seed(read_seed, "read_seed")
        g = row_granularity(self.profile)
        t0, t1 = _tile_range(tile_rows, -(-self.shape[0] // g))
        lo, hi = t0 * g, min(self.shape[0], t1 * g)
        if self.weights is not None:
            y = self.weights[lo:hi] @ x2
        elif x2.shape[1] == 0:
            y = np.zeros((hi - lo, 0), dtype=np.float32)
        else:
            y = _read(self, x2, read_seed, t0, t1)
        return y[:, 0] if vector else y

    # -- persistence ------------------------------------------------------
    def to_state(self) -> dict:
        """Plain dict (numpy arrays, ints, strs, nested dicts) to persist or ship."""
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "profile": self.profile.to_dict(),
            "shape": [self.shape[0], self.shape[1]],
            "row_offset": self.row_offset,
            "seed": self.seed,
        }
        if self.weights is not None:
            state["weights"] = self.weights
        else:
            state["codes"] = self.codes
            state.update(self.tiles)
        return state

    @classmethod
    def from_state(cls, state: dict) -> "ProgrammedMatrix":
        """Rebuild from ``to_state`` output; ValueError on anything inconsistent.

        An ``ideal`` block in the older ``crossbar/1`` format is converted (its weights
        are stored the same way; ``converted_from`` is set); any other ``crossbar/1``
        block raises ``LegacyStateError`` (a ValueError) that says to deploy it again.
        """
        if isinstance(state, dict) and state.get("format") == LEGACY_FORMAT:
            return _legacy_ideal(state, cls)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a programmed-matrix state (format must be {STATE_FORMAT!r})")
        profile = DeviceProfile.from_dict(state.get("profile"))
        shape = _state_shape(state.get("shape"))
        row_offset, seed = state.get("row_offset"), state.get("seed")
        if (not isinstance(row_offset, (int, np.integer)) or isinstance(row_offset, bool) or row_offset < 0
                or row_offset % row_granularity(profile)):
            raise ValueError(f"bad row_offset in state: {row_offset!r}")
        _check_seed(seed, "seed")
        if profile.is_ideal:
            weights = _state_array(state, "weights", np.float32, shape)
            return cls(profile, shape, row_offset, seed, None, None, weights)
        codes = _state_array(state, "codes", np.uint8, (profile.devices_per_weight,) + shape)
        grid = profile.tile_grid(shape)
        tiles = {key: _state_array(state, key, np.float32, grid) for key in _TILE_KEYS}
        if profile.wire_ohm_per_cell > 0 and profile.ir_drop_mode == "fast":
            tiles["ir_row"] = _state_array(state, "ir_row", np.float16, grid + (profile.rows,))
            tiles["ir_col"] = _state_array(state, "ir_col", np.float16, grid + (profile.cols,))
        for key, arr in tiles.items():
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"state {key!r} contains non-finite values")
        return cls(profile, shape, row_offset, seed, codes, tiles, None)


class LegacyStateError(ValueError):
    """A state saved by an older engine that cannot be converted to today's format."""


def _legacy_ideal(state: dict, cls: type) -> ProgrammedMatrix:
    """An ``ideal`` ``crossbar/1`` state as today's matrix, or LegacyStateError.

    Why only ``ideal``: its float32 weights are stored exactly as today, so nothing
    the user deployed is lost. A non-ideal ``crossbar/1`` block kept one int16
    effective conductance per weight, with that engine's IR drop, faults and noise
    folded in: neither the per-device G+/G- codes this engine reads nor the
    deployed weights can be recovered from it.
    """
    try:
        profile = DeviceProfile.from_dict(state.get("profile"))
    except ValueError:
        profile = None
    if profile is None or not profile.is_ideal:
        device = profile.name if profile is not None else "unknown"
        raise LegacyStateError(
            f"programmed by an older sedma ({LEGACY_FORMAT}) on device {device!r}, which kept one "
            "effective conductance per weight instead of the per-device codes this version reads; "
            "it cannot be converted: deploy the matrix again")
    matrix = cls.from_state({**state, "format": STATE_FORMAT})
    matrix.converted_from = LEGACY_FORMAT
    return matrix


def _tile_range(tile_rows: tuple[int, int] | None, n_tr: int) -> tuple[int, int]:
    if tile_rows is None:
        return 0, n_tr
    t0, t1 = (int(t) for t in tile_rows)
    if not 0 <= t0 < t1 <= n_tr:
        raise ValueError(f"tile_rows {tile_rows!r} outside 0..{n_tr}")
    return t0, t1


def _read(pm: ProgrammedMatrix, x: np.ndarray, read_seed: int, t0: int, t1: int) -> np.ndarray:
    """The non-ideal read path over tile rows [t0, t1): DAC, arrays, noise, ADC, digital sum.

    Partial sums live in one preallocated float32 block laid out (tile row, column of X,
    tile column, output): the tile GEMMs write X^T W^T straight into it, and each column
    of X owns contiguous runs of (tile column, output) — the order its noise stream is
    drawn in — so noise is added without a transposing copy. Tile rows are read in
    chunks of about ``_CHUNK_ELEMS`` partial sums (bounded scratch for tall matrices).
    """
    prof = pm.profile
    m, k = pm.shape
    g, q = row_granularity(prof), prof.tile_inputs
    n_tc = pm.scales.shape[1]
    b = x.shape[1]
    xn, xs = dac_quantise(x, prof)
    xt = np.zeros((b, n_tc * q), dtype=np.float32)
    xt[:, :k] = xn.T
    std = _noise_std(prof, xt, n_tc)
    streams = ColumnNoise(pm.seed, read_seed) if std is not None else None
    base = t0 * g
    y = np.empty((min(m, t1 * g) - base, b), dtype=np.float32)
    per_chunk = max(1, min(t1 - t0, _CHUNK_ELEMS // (g * n_tc * b)))
    scratch = np.empty((per_chunk, b, n_tc, g), dtype=np.float32)
    for r0 in range(t0, t1, per_chunk):
        r1 = min(t1, r0 + per_chunk)
        part = scratch[:r1 - r0]
        unit = _current_unit(pm, r0, r1)
        if prof.wire_ohm_per_cell > 0 and prof.ir_drop_mode == "circuit":
            _currents_circuit(pm, xt, r0, r1, unit, part)
        else:
            _currents(pm, xt, r0, r1, unit, part)
        if streams is not None:
            _add_noise(part, std, unit, streams, pm.row_offset // g + r0)
        _digitise(part, prof)
        lo, hi = r0 * g, min(m, r1 * g)
        y[lo - base:hi - base] = _sum_tiles(pm, part, r0, r1, unit)[:hi - lo]
    y *= xs[None, :]
    return y


def _current_unit(pm: ProgrammedMatrix, r0: int, r1: int) -> np.ndarray:
    """Per-tile unit of the analog outputs (nr, n_tc): the ADC step, so that the
    converter is a rint and a clip; Gmax*V_read without an ADC."""
    if pm.profile.adc_bits == 0:
        return np.ones((r1 - r0, pm.scales.shape[1]), dtype=np.float32)
    return pm.tiles["adc"][r0:r1] / np.float32(2 ** (pm.profile.adc_bits - 1) - 1)


def _noise_std(prof: DeviceProfile, xt: np.ndarray, n_tc: int) -> np.ndarray | None:
    """Std of each tile's output noise per read, (B, n_tc), units of Gmax*V_read.

    Per-device additive read noise N(0, s^2) (the "device" model) makes the
    bit-line current I = sum_q (g_q + n_q) x_q Gaussian around the clean
    current with variance s^2 * devices * sum_q x_q^2; the output noise adds
    ``out_noise^2``. We draw that output noise directly: K times fewer samples.
    """
    s_dev = prof.read_noise_us / prof.g_max_us if prof.read_noise_model == "device" else 0.0
    if s_dev == 0 and prof.out_noise == 0:
        return None
    xc = xt.reshape(xt.shape[0], n_tc, -1)
    sums = np.einsum("bcq,bcq->bc", xc, xc)
    var = sums * np.float32(s_dev * s_dev * prof.devices_per_weight) + np.float32(prof.out_noise ** 2)
    return np.sqrt(var, dtype=np.float32)


def _decode_tile_row(pm: ProgrammedMatrix, lo: int, hi: int, ratio: np.ndarray | None,
                     out: np.ndarray) -> None:
    """Device codes of output rows [lo, hi) -> float32 analog weights in code units (p, K).

    Differential: G+ - G-; offset: G - Gmid. With fast IR drop, G- (or Gmid) is
    pre-scaled by ``ratio`` (n_tc, p) = cf-/cf+ per tile and output, and the
    output is scaled by cf+ after the GEMM: two passes over the codes, not three.
    """
    prof = pm.profile
    c0 = pm.codes[0, lo:hi]
    diff = prof.mapping == "differential"
    if ratio is None:
        if diff:
            np.subtract(c0, pm.codes[1, lo:hi], out=out, dtype=np.float32)
        else:
            np.subtract(c0, np.float32(_g_mid(prof) / G_LSB), out=out, dtype=np.float32)
        return
    q, k = prof.tile_inputs, c0.shape[1]
    full = k // q
    for a, z, tiles in ((0, full * q, slice(0, full)), (full * q, k, slice(full, full + 1))):
        if z <= a:
            continue
        n = tiles.stop - tiles.start
        shape = (c0.shape[0], n, (z - a) // n)
        r = ratio[tiles].T[:, :, None]  # (p, n, 1)
        dst = out[:, a:z].reshape(shape)
        if diff:  # in place: -G- * ratio, then + G+
            np.multiply(pm.codes[1, lo:hi, a:z].reshape(shape), -r, out=dst)
            np.add(dst, c0[:, a:z].reshape(shape), out=dst)
        else:
            np.subtract(c0[:, a:z].reshape(shape), r, out=dst)


def _currents(pm: ProgrammedMatrix, xt: np.ndarray, r0: int, r1: int, unit: np.ndarray,
              part: np.ndarray) -> None:
    """Analog tile outputs in units of ``unit`` into ``part`` (nr, B, n_tc, g), tile rows [r0, r1).

    Per tile row: the codes are decoded once into a float32 buffer, the inputs are
    scaled per tile (the output unit and the word-line IR factors are per tile and
    per word line), then one batched GEMM (a GEMM per tile) writes X^T W^T into
    its place in ``part``; the bit-line IR factors scale the outputs.
    """
    prof = pm.profile
    m, k = pm.shape
    g, q, d = row_granularity(prof), prof.tile_inputs, prof.devices_per_weight
    n_tc = pm.scales.shape[1]
    b = xt.shape[0]
    buf = np.empty((g, k), dtype=np.float32)
    xr = np.empty((b, n_tc, q), dtype=np.float32)
    gain = (np.float32(G_LSB) / unit).astype(np.float32)  # (nr, n_tc)
    ir = "ir_row" in pm.tiles
    if ir:
        ir_row = pm.tiles["ir_row"][r0:r1].astype(np.float32)  # float16 math is slow
        ir_col = pm.tiles["ir_col"][r0:r1, :, :g * d].astype(np.float32).reshape(r1 - r0, n_tc, g, d)
        cf0 = np.ascontiguousarray(ir_col[..., 0])  # (nr, n_tc, g) G+ (or single device) factors
    x3 = xt.reshape(b, n_tc, q)
    full = k // q  # tile columns with every word line in use
    for i, r in enumerate(range(r0, r1)):
        lo, hi = r * g, min(m, (r + 1) * g)
        p = hi - lo
        ratio = None
        if ir:
            cf = ir_col[i, :, :p]  # (n_tc, p, d)
            ratio = cf[..., 1] / cf[..., 0] if d == 2 else np.float32(_g_mid(prof) / G_LSB) / cf[..., 0]
            np.multiply(x3, (ir_row[i] * gain[i, :, None])[None], out=xr)
        else:
            np.multiply(x3, gain[i, None, :, None], out=xr)
        w = buf[:p]
        _decode_tile_row(pm, lo, hi, ratio, w)
        if full:  # one batched GEMM over the tile row's full tile columns: (full, B, q) @ (full, q, p)
            np.matmul(xr[:, :full].transpose(1, 0, 2), w[:, :full * q].reshape(p, full, q).transpose(1, 2, 0),
                      out=part[i, :, :full, :p].transpose(1, 0, 2))
        if full < n_tc:  # the partial last tile column: only real inputs, no GEMM work on padding
            np.matmul(xr[:, full, :k - full * q], w[:, full * q:].T, out=part[i, :, full, :p])
        if p < g:
            part[i, :, :, p:] = 0.0  # rows past the matrix end: cropped later, but keep them finite
        if ir:
            part[i, :, :, :p] *= cf0[i, None, :, :p]


def _currents_circuit(pm: ProgrammedMatrix, xt: np.ndarray, r0: int, r1: int, unit: np.ndarray,
                      part: np.ndarray) -> None:
    """Tile outputs with IR drop solved as a circuit for this read's inputs, tile by tile."""
    prof = pm.profile
    m, k = pm.shape
    g, q, d = row_granularity(prof), prof.tile_inputs, prof.devices_per_weight
    n_tc = pm.scales.shape[1]
    rho = circuit.wire_rho(prof.wire_ohm_per_cell, prof.g_max_us)
    part[...] = 0.0
    for i, r in enumerate(range(r0, r1)):
        lo, hi = r * g, min(m, (r + 1) * g)
        gdev = np.moveaxis(pm.codes[:, lo:hi], 0, -1).astype(np.float64) * G_LSB  # (p, K, d)
        for c in range(n_tc):
            width = min(q, k - c * q)
            arr = gdev[:, c * q:c * q + width].transpose(1, 0, 2).reshape(width, -1)  # word x bit lines
            v = xt[:, c * q:c * q + width].T
            cur = circuit.solve(arr[None], v, rho).currents[0]  # (p*d, B)
            out = cur[0::2] - cur[1::2] if d == 2 else cur - _g_mid(prof) * v.sum(axis=0)
            part[i, :, c, :hi - lo] = out.T / unit[i, c]


def _add_noise(part: np.ndarray, std: np.ndarray, unit: np.ndarray, streams: "ColumnNoise",
               first: int) -> None:
    """Fresh noise per (tile, output, column), keyed by (seed, read_seed, column, global tile row).

    ``std`` (B, n_tc) in Gmax*V_read; ``part`` is in per-tile ADC units ``unit`` (nr, n_tc).
    """
    nr, b, n_tc, g = part.shape
    z = streams.block(b, first, nr, n_tc * g).reshape(b, nr, n_tc, g)
    z *= (std[:, None, :] / unit[None, :, :])[..., None]
    part += z.transpose(1, 0, 2, 3)


def _digitise(part: np.ndarray, prof: DeviceProfile) -> None:
    """ADC per tile, in place: outputs are already in its steps, so it is a rint unless
    something saturates (then ``adc_quantise`` clips or applies bound management)."""
    if not prof.adc_bits:
        return
    top = 2 ** (prof.adc_bits - 1) - 1
    if part.size and max(float(part.max()), -float(part.min())) > top:
        adc_quantise(part, np.float32(1.0), prof, out=part)
    else:
        np.rint(part, out=part)


def _sum_tiles(pm: ProgrammedMatrix, part: np.ndarray, r0: int, r1: int, unit: np.ndarray) -> np.ndarray:
    """Digital accumulation over tile columns with each tile's scale: (nr * g, B)."""
    nr, b, n_tc, g = part.shape
    digital = pm.scales[r0:r1] * pm.tiles["gdc"][r0:r1] * unit  # (nr, n_tc)
    out = np.matmul(digital[:, None, None, :], part)  # (nr, B, 1, g)
    return out.reshape(nr, b, g).transpose(0, 2, 1).reshape(nr * g, b)


# ---------------------------------------------------------------------------
# Validation helpers and the one-shot API
# ---------------------------------------------------------------------------

def _check_seed(seed: Any, what: str) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"{what} must be an int in [0, 2^63), got {seed!r}")


def _check_weights(w: Any) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"weights must be a non-empty 2-D array, got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.number):
        raise ValueError(f"weights must be numeric, got {w.dtype}")
    w = w.astype(np.float32, copy=False)
    if not np.all(np.isfinite(w)):
        raise ValueError("weights contain NaN or inf")
    return w


def _check_inputs(x: np.ndarray, k: int) -> np.ndarray:
    if x.ndim not in (1, 2) or x.shape[0] != k:
        raise ValueError(f"inputs must have shape ({k},) or ({k}, B), got {x.shape}")
    x2 = x.reshape(k, -1) if x.ndim == 1 else x
    return x2.astype(np.float32, copy=False)


def _state_shape(shape: Any) -> tuple[int, int]:
    if (not isinstance(shape, (list, tuple)) or len(shape) != 2
            or not all(isinstance(v, int) and v > 0 for v in shape)):
        raise ValueError(f"bad shape in state: {shape!r}")
    return int(shape[0]), int(shape[1])


def _state_array(state: dict, key: str, dtype: type, shape: tuple[int, int]) -> np.ndarray:
    arr = state.get(key)
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"state is missing array {key!r}")
    if arr.dtype != dtype or arr.shape != tuple(shape):
        raise ValueError(f"state array {key!r} must be {np.dtype(dtype).name} {tuple(shape)}, "
                         f"got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def crossbar_matmul(a: np.ndarray, b: np.ndarray, profile: DeviceProfile, seed: int,
                    row_offset: int = 0, read_seed: int = 0) -> np.ndarray:
    """One-shot: program a's rows as the weights and apply them to b.

    ``ideal`` takes the fast path (plain float32 ``a @ b``), which is exactly
    what programming and reading an ideal matrix computes.
    """
    if profile.is_ideal:
        _check_seed(seed, "seed")
        a32 = _check_weights(a)
        b_arr = np.asarray(b)
        y = a32 @ _check_inputs(b_arr, a32.shape[1])
        return y[:, 0] if b_arr.ndim == 1 else y
    return ProgrammedMatrix.program(a, profile, seed, row_offset).matmul(b, read_seed)
