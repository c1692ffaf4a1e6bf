"""Programming a matrix onto crossbar tiles once, then reading it many times.

Layout. W (M, K) is cut into tiles of ``tile_outputs`` rows x ``tile_inputs``
columns of W (see ``DeviceProfile``). Each input (column of W) drives one word
line; each output (row of W) is read on one bit line (offset mapping) or on a
pair of bit lines whose currents are subtracted (differential mapping). Partial
sums of tiles that share output rows are digitised per tile and added in
digital, as real tiled accelerators do.

Reproducibility. Every random draw is keyed by ``(seed, purpose, global tile
row)`` and, for read noise, the request's ``read_seed``. Draws always cover a
full tile row (all K inputs, all tile_outputs rows) and are cropped afterwards,
so programming rows [r0, r1) of W on one node yields exactly the state that
programming all of W and slicing gives — placement does not change results.

Memory. Non-ideal profiles keep one int16 fixed-point effective conductance
per weight (LSB = 2^-14 Gmax; IR drop, faults, noise and levels are folded in)
plus one float32 digital scale per tile. Fault maps are not kept: they are
regenerated from the seed on demand. ``ideal`` keeps float32 weights.

Speed. ``matmul`` has no Python loop per tile per input: for a chunk of tile
rows (all of them for moderate sizes) one GEMM per tile column computes every
tile's partial sums for the whole batch; read noise, ADC and the digital
accumulation are whole-array operations on the (tile col, row, batch) stack.
We tried a thread pool over chunks and a stacked batched matmul: neither beat
this on 2 cores, and nested BLAS threads degrade badly under load.
"""

from __future__ import annotations

import statistics
import threading
from typing import Any

import numpy as np

from compute.device import DeviceProfile

STATE_FORMAT = "sedma.crossbar/1"
CODE_FRAC_BITS = 14  # int16 codes: value = code * 2^-14 (in units of Gmax), range +-2
_CODE_LSB = 2.0 ** -CODE_FRAC_BITS
_STREAM_PROG, _STREAM_FAULT, _STREAM_READ = 1, 2, 3
_CHUNK_ELEMS = 1 << 20  # partial sums per chunk (4 MiB scratch: stays cache-friendly)
_MAX_SEED = 2**63 - 1


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

    Why: numpy's ziggurat costs ~8 ns per sample on our target machines, and
    read noise needs M*B*(tiles per row) fresh samples per read, which alone
    would blow the 3x-of-float32 budget. Indexing this table with 16 random
    bits is ~4x cheaper. It is a discretised normal truncated at 4.3 sigma;
    its variance is exactly 1 and its shape is indistinguishable from a
    Gaussian at the sample sizes we use.
    """
    global _NORMAL_TABLE
    with _TABLE_LOCK:
        if _NORMAL_TABLE is None:
            nd = statistics.NormalDist()
            probs = (np.arange(65536) + 0.5) / 65536.0
            q = np.array([nd.inv_cdf(float(p)) for p in probs], dtype=np.float64)
            q /= np.sqrt(np.mean(q * q))
            _NORMAL_TABLE = q.astype(np.float32)
        return _NORMAL_TABLE


def _table_normals(key: tuple[int, ...], n: int) -> np.ndarray:
    """n standard-normal float32 samples (quantile table) from the stream ``key``.

    SFC64 raw words are the cheapest keyed random bits numpy offers; fancy
    indexing with uint16 is faster than ``np.take`` (no cast to intp).
    """
    bits = np.random.SFC64(np.random.SeedSequence(list(key)))
    idx = bits.random_raw(-(-n // 4)).view(np.uint16)[:n]
    return _normal_table()[idx]


# ---------------------------------------------------------------------------
# Programming (one tile row at a time; programming is the rare operation)
# ---------------------------------------------------------------------------

def _poly(coeffs: tuple[float, ...], g: np.ndarray) -> np.ndarray:
    """Evaluate an ascending polynomial with Horner's rule."""
    out = np.zeros_like(g)
    for c in reversed(coeffs):
        out = out * g + c
    return out


def _tile_scales(w: np.ndarray, profile: DeviceProfile, n_tc: int) -> np.ndarray:
    """Per-tile max |w| over a tile row's tiles; zero tiles get 1 to avoid 0/0."""
    q = profile.tile_inputs
    k = w.shape[1]
    padded = np.zeros((w.shape[0], n_tc * q), dtype=np.float32)
    padded[:, :k] = np.abs(w)
    wmax = padded.reshape(w.shape[0], n_tc, q).max(axis=(0, 2))
    wmax[wmax == 0] = 1.0
    return wmax.astype(np.float32)


def _targets(wn: np.ndarray, profile: DeviceProfile) -> np.ndarray:
    """Target normalised conductances (p, K, devices) for weights in [-1, 1]."""
    gmin = profile.g_min_us / profile.g_max_us
    span = 1.0 - gmin
    if profile.mapping == "differential":
        return np.stack([gmin + np.maximum(wn, 0) * span, gmin + np.maximum(-wn, 0) * span], axis=-1)
    return (gmin + span / 2 + wn * (span / 2))[..., None]


def _quantise_levels(g: np.ndarray, profile: DeviceProfile) -> np.ndarray:
    """Snap targets to the 2^bits programmable levels in [Gmin, Gmax]."""
    if profile.level_bits == 0:
        return g
    gmin = profile.g_min_us / profile.g_max_us
    step = (1.0 - gmin) / (2**profile.level_bits - 1)
    return gmin + np.rint((g - gmin) / step) * step


def _fault_draws(profile: DeviceProfile, seed: int, tile_row: int, p: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stuck-at-Gmin / stuck-at-Gmax masks (p, K, devices) of one tile row."""
    shape = (profile.tile_outputs, k, profile.devices_per_weight)
    u = _rng(seed, _STREAM_FAULT, tile_row).random(shape, dtype=np.float32)[:p]
    lo = u < profile.stuck_at_gmin_rate
    hi = (u >= profile.stuck_at_gmin_rate) & (u < profile.stuck_at_gmin_rate + profile.stuck_at_gmax_rate)
    return lo, hi


def _wire_resistance(profile: DeviceProfile, out_pos: np.ndarray, k: int) -> np.ndarray:
    """Series wire resistance (ohm) seen by each device (p, K, devices).

    First-order IR-drop model: drivers sit at the left end of each word line
    (input q), sense amplifiers at the bottom of each bit line. A device on
    bit line c and word line q sits behind (c + 1) word-line segments and
    (rows - q) bit-line segments.
    """
    q = (np.arange(k) % profile.tile_inputs).astype(np.float64)
    d = profile.devices_per_weight
    col = out_pos[:, None, None] * d + np.arange(d)[None, None, :]
    segments = (col + 1) + (profile.rows - q)[None, :, None]
    return profile.wire_ohm_per_cell * segments


def _program_tile_row(w: np.ndarray, profile: DeviceProfile, seed: int, tile_row: int,
                      n_tc: int) -> tuple[np.ndarray, np.ndarray]:
    """Program one tile row: returns (int16 codes (p, K), digital scales (n_tc,))."""
    p, k = w.shape
    q = profile.tile_inputs
    wmax = _tile_scales(w, profile, n_tc)
    wn = w.astype(np.float64) / np.repeat(wmax, q)[:k][None, :]
    g = _quantise_levels(_targets(wn, profile), profile)
    if profile.prog_noise_poly_us and profile.prog_noise_scale > 0:
        sigma = np.maximum(_poly(profile.prog_noise_poly_us, g), 0.0) * (profile.prog_noise_scale / profile.g_max_us)
        z = _rng(seed, _STREAM_PROG, tile_row).standard_normal((profile.tile_outputs, k, g.shape[-1]))[:p]
        g = np.maximum(g + sigma * z, 0.0)
    if profile.stuck_at_gmin_rate > 0 or profile.stuck_at_gmax_rate > 0:
        lo, hi = _fault_draws(profile, seed, tile_row, p, k)
        g = np.where(lo, profile.g_min_us / profile.g_max_us, np.where(hi, 1.0, g))
    if profile.wire_ohm_per_cell > 0:
        out_pos = np.arange(p)  # rows of this tile row, local to the tile
        g = g / (1.0 + g * (profile.g_max_us * 1e-6) * _wire_resistance(profile, out_pos, k))
    v = _effective(g, profile)
    codes = np.clip(np.rint(v / _CODE_LSB), -32768, 32767).astype(np.int16)
    return codes, _digital_scale(wmax, profile)


def _effective(g: np.ndarray, profile: DeviceProfile) -> np.ndarray:
    """Per-weight effective conductance seen by the sense amp (units of Gmax).

    Offset mapping subtracts an ideal reference column at Gmid in analog.
    """
    if profile.mapping == "differential":
        return g[..., 0] - g[..., 1]
    gmin = profile.g_min_us / profile.g_max_us
    return g[..., 0] - (1.0 + gmin) / 2


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


def adc_lsb(profile: DeviceProfile) -> float:
    """ADC step in units of Gmax*V_read (signed converter, symmetric range)."""
    return profile.adc_range / (2 ** (profile.adc_bits - 1) - 1)


def adc_quantise(i: np.ndarray, profile: DeviceProfile) -> np.ndarray:
    """Digitise normalised currents: round to the LSB, saturate at +-adc_range."""
    if profile.adc_bits == 0:
        return i
    lsb = adc_lsb(profile)
    top = 2 ** (profile.adc_bits - 1) - 1
    return (np.clip(np.rint(i / lsb), -top, top) * lsb).astype(i.dtype, copy=False)


def drift_factor(profile: DeviceProfile, elapsed_s: float) -> float:
    """Power-law drift G(t)/G(t0) = (t/t0)^-nu for t > t0, 1 before."""
    if profile.drift_nu == 0 or elapsed_s <= profile.drift_t0_s:
        return 1.0
    return float((elapsed_s / profile.drift_t0_s) ** (-profile.drift_nu))


# ---------------------------------------------------------------------------
# The programmed matrix
# ---------------------------------------------------------------------------

class ProgrammedMatrix:
    """Frozen programmed state of rows [row_offset, row_offset+M) of a global W."""

    def __init__(self, profile: DeviceProfile, shape: tuple[int, int], row_offset: int, seed: int,
                 codes: np.ndarray | None, scales: np.ndarray | None,
                 weights: np.ndarray | None) -> None:
        self.profile = profile
        self.shape = (int(shape[0]), int(shape[1]))
        self.row_offset = int(row_offset)
        self.seed = int(seed)
        self.codes = codes  # int16 (M, K), non-ideal profiles
        self.scales = scales  # float32 (tile rows, tile cols), non-ideal profiles
        self.weights = weights  # float32 (M, K), ideal profile only

    # -- construction -----------------------------------------------------
    @classmethod
    def program(cls, w: np.ndarray, profile: DeviceProfile, seed: int, row_offset: int = 0) -> "ProgrammedMatrix":
        """Program rows [row_offset, row_offset+M) of a global W once.

        Quantisation, programming noise, faults and IR drop are frozen here;
        the result is a pure function of (w, profile, seed, row_offset).
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
        codes = np.empty((m, k), dtype=np.int16)
        scales = np.empty((n_tr, n_tc), dtype=np.float32)
        first = row_offset // g
        for r in range(n_tr):
            rows = slice(r * g, min(m, (r + 1) * g))
            codes[rows], scales[r] = _program_tile_row(w[rows], profile, seed, first + r, n_tc)
        return cls(profile, (m, k), row_offset, seed, codes, scales, None)

    # -- introspection ----------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Resident bytes actually held (equals ``profile.resident_bytes(shape)``)."""
        if self.weights is not None:
            return int(self.weights.nbytes)
        return int(self.codes.nbytes + self.scales.nbytes)

    def effective_weights(self) -> np.ndarray:
        """The weights the array would compute with, noise-free and at t0 (float32).

        For diagnostics and tests; materialises a float32 (M, K) copy.
        """
        if self.weights is not None:
            return self.weights.copy()
        q = self.profile.tile_inputs
        g = row_granularity(self.profile)
        m, k = self.shape
        per_col = np.repeat(self.scales, q, axis=1)[:, :k]
        per_elem = np.repeat(per_col, g, axis=0)[:m]
        return (self.codes.astype(np.float32) * np.float32(_CODE_LSB)) * per_elem

    def fault_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Regenerate (stuck_at_gmin, stuck_at_gmax) bool masks (M, K, devices per weight)."""
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
    def matmul(self, x: np.ndarray, read_seed: int = 0, *, elapsed_s: float | None = None,
               tile_rows: tuple[int, int] | None = None) -> np.ndarray:
        """Y = W @ X through the arrays; (K,B) or (K,) float32 -> (M,B) or (M,).

        Thread-safe: reads only immutable state, all scratch is per call.
        ``elapsed_s`` (time since programming, for drift) defaults to the
        profile's ``read_time_s``. ``tile_rows=(t0, t1)`` reads only tile rows
        [t0, t1) (output rows [t0*g, min(M, t1*g)) for g = ``row_granularity``):
        the same values the full read gives there, since noise is keyed by the
        tile's position, so callers may split one read across threads.
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
            t = self.profile.read_time_s if elapsed_s is None else float(elapsed_s)
            y = _read(self, x2, read_seed, t, t0, t1)
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
            state["scales"] = self.scales
        return state

    @classmethod
    def from_state(cls, state: dict) -> "ProgrammedMatrix":
        """Rebuild from ``to_state`` output; ValueError on anything inconsistent."""
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
        codes = _state_array(state, "codes", np.int16, shape)
        scales = _state_array(state, "scales", np.float32, profile.tile_grid(shape))
        if not np.all(np.isfinite(scales)):
            raise ValueError("state 'scales' contains non-finite values")
        return cls(profile, shape, row_offset, seed, codes, scales, None)


def _tile_range(tile_rows: tuple[int, int] | None, n_tr: int) -> tuple[int, int]:
    if tile_rows is None:
        return 0, n_tr
    t0, t1 = (int(t) for t in tile_rows)
    if not 0 <= t0 < t1 <= n_tr:
        raise ValueError(f"tile_rows {tile_rows!r} outside 0..{n_tr}")
    return t0, t1


def _read(pm: ProgrammedMatrix, x: np.ndarray, read_seed: int, elapsed_s: float,
          t0: int = 0, t1: int | None = None) -> np.ndarray:
    """The non-ideal read path: DAC, stacked tile matmuls, read noise, ADC, digital sum.

    Reads tile rows [t0, t1) only (all by default)."""
    prof = pm.profile
    m, k = pm.shape
    g, q = row_granularity(prof), prof.tile_inputs
    n_tr, n_tc = pm.scales.shape
    b = x.shape[1]
    xn, xs = dac_quantise(x, prof)
    drift = drift_factor(prof, elapsed_s)
    unit = adc_lsb(prof) if prof.adc_bits else 1.0  # currents are computed in ADC LSBs
    xc = np.zeros((n_tc * q, b), dtype=np.float32)
    xc[:k] = xn * np.float32(drift * _CODE_LSB / unit)
    xc = xc.reshape(n_tc, q, b)
    noise_std = _read_noise_std(prof, xn, n_tc, unit)
    post = np.float32(unit / drift if prof.drift_compensation else unit)
    t1 = n_tr if t1 is None else t1
    base = t0 * g
    y = np.empty((min(m, t1 * g) - base, b), dtype=np.float32)
    per_chunk = max(1, _CHUNK_ELEMS // (g * n_tc * b))
    key = (pm.seed, read_seed, pm.row_offset // g)

    for r0 in range(t0, t1, per_chunk):  # bounded scratch for tall matrices
        r1 = min(t1, r0 + per_chunk)
        y[r0 * g - base:min(m, r1 * g) - base] = _read_chunk(pm, xc, r0, r1, noise_std, key, post)
    y *= xs[None, :]
    return y


def _read_noise_std(prof: DeviceProfile, xn: np.ndarray, n_tc: int, unit: float) -> np.ndarray | None:
    """Std of each tile's output current noise, (n_tc, 1, B), in current units.

    Per-device additive noise N(0, s^2) on every device, fresh per read,
    makes the bit-line current I = sum_q (g_q + n_q) x_q Gaussian around the
    clean current with variance s^2 * devices * sum_q x_q^2. We draw that
    output noise directly: same distribution, K times fewer samples.
    """
    if prof.read_noise_us == 0:
        return None
    q = prof.tile_inputs
    sq = np.zeros((n_tc * q, xn.shape[1]), dtype=np.float32)
    sq[: xn.shape[0]] = xn * xn
    sums = sq.reshape(n_tc, q, -1).sum(axis=1, keepdims=True)
    s = prof.read_noise_us / prof.g_max_us * np.sqrt(prof.devices_per_weight) / unit
    return (np.sqrt(sums) * np.float32(s)).astype(np.float32)


def _read_chunk(pm: ProgrammedMatrix, xc: np.ndarray, r0: int, r1: int,
                noise_std: np.ndarray | None, key: tuple[int, int, int], post: np.float32) -> np.ndarray:
    """Tile rows [r0, r1): one large GEMM per tile column gives every tile's partial sums.

    Why per tile column: each GEMM covers all tile rows of the chunk and the
    whole batch at once (few large BLAS calls instead of many small ones).
    """
    prof = pm.profile
    m, k = pm.shape
    g, q = row_granularity(prof), prof.tile_inputs
    n_tc = pm.scales.shape[1]
    lo, hi = r0 * g, min(m, r1 * g)
    nr, b = r1 - r0, xc.shape[2]
    rows = hi - lo
    part = np.empty((n_tc, nr * g, b), dtype=np.float32)  # (tile col, row, batch) currents
    part[:, rows:] = 0.0  # rows past the matrix end: cropped below, but keep them finite
    buf = np.empty((rows, q), dtype=np.float32)
    for c in range(n_tc):
        width = min(q, k - c * q)  # only real rows and inputs: no GEMM work on padding
        buf[:, :width] = pm.codes[lo:hi, c * q:c * q + width]  # int16 -> float32
        np.matmul(buf[:, :width], xc[c, :width], out=part[c, :rows])
    if noise_std is not None:
        _add_read_noise(part, noise_std, key, r0, nr, g)
    if prof.adc_bits:
        top = 2 ** (prof.adc_bits - 1) - 1
        np.rint(part, out=part)
        np.clip(part, -top, top, out=part)
    w = (pm.scales[r0:r1] * post)[:, None, :]  # (nr, 1, n_tc)
    per_row = part.reshape(n_tc, nr, g * b).transpose(1, 0, 2)  # (nr, n_tc, g*B)
    out = np.matmul(w, per_row)  # digital accumulation over tile cols
    return out.reshape(nr * g, b)[: hi - lo]


def _add_read_noise(part: np.ndarray, noise_std: np.ndarray, key: tuple[int, int, int],
                    r0: int, nr: int, g: int) -> None:
    """Fresh output noise per tile, keyed by (seed, read_seed, global tile row)."""
    seed, read_seed, first = key
    n_tc, _, b = part.shape
    for i in range(nr):
        z = _table_normals((seed, _STREAM_READ, read_seed, first + r0 + i), n_tc * g * b)
        z = z.reshape(n_tc, g, b)
        z *= noise_std
        part[:, i * g:(i + 1) * g] += z


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
