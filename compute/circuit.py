"""IR drop: a crossbar array solved as a resistive circuit, and its fast calibrated stand-in.

The circuit (the one CrossSim's ``array_simulator`` solves). Word line i (one
per input) is driven at voltage ``V_i`` from its left end; bit line j (one per
device column) ends in a sense amplifier that holds it at virtual ground at
the bottom, after the last word line. Every cell (i, j) is a conductance
``G_ij`` between word-line node (i, j) and bit-line node (i, j); neighbouring
nodes on a line are joined by one wire segment ``r`` (ohm), and so is the first
word-line node to its driver and the last bit-line node to its sense amp.

Units: conductances in units of Gmax, voltages in units of V_read, so currents
are in Gmax*V_read and the wire enters only through the dimensionless
``rho = r * Gmax``.

Solver. With cell currents ``I``, the word-line node voltages are
``V_i - rho * sum_l I_il (min(j, l) + 1)`` and the bit-line node voltages
``rho * sum_l I_lj (R - max(i, l))`` — two cumulative sums each. We iterate
``I <- I + a (G (Vrow(I) - Vcol(I)) - I)``: the map's eigenvalues are real and
in [0, L] (G times a symmetric positive-definite Green's matrix), L bounded by
Gershgorin per tile, so the damping ``a = 2 / (2 + L)`` always converges. It is
batched over tiles and input vectors and needs no factorisation; the direct
sparse solve (``solve_direct``, scipy) is the independent reference it is
validated against.

Fast mode. The circuit is linear, but its transfer matrix is as big as the
array, so for large runs we keep per tile one factor per word line and one
per bit line: a calibration solve with every word line at the same voltage
gives each cell's voltage ratio ``a_ij``; the bit-line factor makes every
column's calibration current exact and the word-line factor carries the drop
along each word line. The error this leaves against the solve is measured in
tests/test_crossbar_circuit.py and bench/crossbar.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from compute.lazynumpy import np

MAX_ITER = 2000


@dataclass(frozen=True)
class CircuitResult:
    """Bit-line currents (T, C, B) and how the iteration ended."""

    currents: np.ndarray
    iterations: int
    residual: float


def wire_rho(wire_ohm: float, g_max_us: float) -> float:
    """Dimensionless wire parameter: segment resistance times Gmax."""
    return float(wire_ohm) * float(g_max_us) * 1e-6


def _green_row_sums(n: int) -> np.ndarray:
    """Row sums of the (min(j, l) + 1) Green's matrix of a line driven at index 0."""
    j = np.arange(n, dtype=np.float64)
    # sum_{l<j} (l + 1) + (n - j)(j + 1)
    return j * (j + 1) / 2 + (n - j) * (j + 1)


def damping(g: np.ndarray, rho: float) -> np.ndarray:
    """Per-tile damping 2 / (2 + L), L a Gershgorin bound of the iteration map's spectrum."""
    t, r, c = g.shape
    bound = _green_row_sums(c)[None, None, :] + _green_row_sums(r)[::-1][None, :, None]
    lam = rho * np.max(g * bound, axis=(1, 2))
    return (2.0 / (2.0 + lam)).reshape(t, 1, 1, 1)


def _node_drop(i: np.ndarray, rho: float) -> np.ndarray:
    """Vrow - Vcol minus the driver voltage, for cell currents i (T, R, C, B)."""
    # word line: segment k carries the current of cells k.. C-1 (reverse cumsum)
    seg_row = np.cumsum(i[:, :, ::-1], axis=2)[:, :, ::-1]
    v_row = np.cumsum(seg_row, axis=2)
    # bit line: the segment below node k carries the cells 0..k; node i sits above segments i..R-1
    seg_col = np.cumsum(i, axis=1)
    v_col = np.cumsum(seg_col[:, ::-1], axis=1)[:, ::-1]
    return -rho * (v_row + v_col)


def solve(g: np.ndarray, v: np.ndarray, rho: float, tol: float = 1e-7,
          max_iter: int = MAX_ITER) -> CircuitResult:
    """Solve the array circuit for every tile and input vector at once.

    ``g`` (T, R, C) cell conductances, ``v`` (T, R, B) or (R, B) word-line
    driver voltages. Returns the bit-line currents at the sense amps (T, C, B).
    Stops when the largest current update is below ``tol`` times the largest
    current (or raises after ``max_iter`` sweeps: a bug, since it converges).
    """
    g = np.asarray(g, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 2:
        v = np.broadcast_to(v[None], (g.shape[0],) + v.shape)
    g4 = g[..., None]
    v4 = v[:, :, None, :]
    ideal = g4 * v4
    if rho == 0:
        return CircuitResult(ideal.sum(axis=1), 0, 0.0)
    a = damping(g, rho)
    cur = ideal.copy()
    scale = max(float(np.max(np.abs(ideal))), 1e-30)
    for it in range(1, max_iter + 1):
        new = g4 * (v4 + _node_drop(cur, rho))
        step = new - cur
        cur += a * step
        res = float(np.max(np.abs(step))) / scale
        if res < tol:
            return CircuitResult(cur.sum(axis=1), it, res)
    raise RuntimeError(f"IR-drop circuit did not converge in {max_iter} sweeps (residual {res:.2e})")


def cell_voltage_ratio(g: np.ndarray, rho: float, tol: float = 1e-5) -> np.ndarray:
    """(Vrow - Vcol) / V_drive of every cell (T, R, C) with all word lines driven equally."""
    g = np.asarray(g, dtype=np.float64)
    if rho == 0:
        return np.ones_like(g)
    a = damping(g, rho)
    g4 = g[..., None]
    cur = g4.copy()
    for _ in range(MAX_ITER):
        new = g4 * (1.0 + _node_drop(cur, rho))
        step = new - cur
        cur += a * step
        if float(np.max(np.abs(step))) < tol * max(float(np.max(g)), 1e-30):
            break
    return 1.0 + _node_drop(cur, rho)[..., 0]


def first_order_ratio(g: np.ndarray, rho: float) -> np.ndarray:
    """Cell voltage ratios (T, R, C) for equal drive, from one sweep: 1 / (1 + d).

    ``d`` is the relative drop the undisturbed currents (I = G V) would cause;
    the resummation 1/(1 + d) is exact for a single series path and, on the
    preset arrays, within 0.2 % (0.35 Ohm) to 2 % (2.5 Ohm) of the converged
    ratios (tests/test_crossbar_circuit.py) — at 1/10 of the solve's cost.
    """
    g = np.asarray(g, dtype=np.float32)  # a calibration: float32 sums are ample, and 2x faster
    drop = _line_drop(g.transpose(0, 2, 1)).transpose(0, 2, 1)  # word lines: driven at index 0
    drop += _line_drop(g[:, ::-1])[:, ::-1]  # bit lines: sense amp after the last word line
    drop *= np.float32(rho)
    drop += 1.0
    return np.divide(1.0, drop, out=drop)


def _line_drop(i: np.ndarray) -> np.ndarray:
    """Voltage drop (per unit wire resistance) at every node of lines driven at index 0 of axis 1.

    ``i`` (T, N, L): cell currents, N nodes along each of the L lines. The segment
    before node n carries the currents of nodes n..N-1 (a suffix sum); the drop at
    node n sums the segments up to it (a prefix sum of those). Both sums are loops
    over N with vector adds across (T, L): numpy's cumsum along a strided axis is
    several times slower, and this is most of a programming's IR-drop calibration.
    """
    t, n, lines = i.shape
    seg = np.empty((t, n, lines), dtype=np.float32)
    seg[:, n - 1] = i[:, n - 1]
    for k in range(n - 2, -1, -1):
        np.add(seg[:, k + 1], i[:, k], out=seg[:, k])
    for k in range(1, n):
        np.add(seg[:, k - 1], seg[:, k], out=seg[:, k])
    return seg


def fast_factors(g: np.ndarray, rho: float, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile (word-line factors (T, R), bit-line factors (T, C)) for the fast mode.

    From a calibration read with all word lines at the same voltage (one
    sweep, ``first_order_ratio``; or the converged solve with ``exact``): the
    word-line factor is the conductance-weighted mean voltage ratio along the
    word line; the bit-line factor then makes each bit line's calibration
    current match. The fast read computes ``I_j = f_j * sum_i G_ij e_i x_i``.
    """
    g = np.asarray(g, dtype=np.float64 if exact else np.float32)
    if rho == 0:
        return np.ones(g.shape[:2]), np.ones((g.shape[0], g.shape[2]))
    ratio = cell_voltage_ratio(g, rho) if exact else first_order_ratio(g, rho)
    weighted = g * ratio
    g_row = g.sum(axis=2, dtype=np.float64)
    row_f = np.where(g_row > 0, weighted.sum(axis=2, dtype=np.float64) / np.maximum(g_row, 1e-30), 1.0)
    approx = np.einsum("trc,tr->tc", g, row_f.astype(g.dtype))
    target = weighted.sum(axis=1, dtype=np.float64)
    col_f = np.where(approx > 0, target / np.maximum(approx, 1e-30), 1.0)
    return row_f, col_f


def fast_currents(g: np.ndarray, v: np.ndarray, row_f: np.ndarray, col_f: np.ndarray) -> np.ndarray:
    """Bit-line currents (T, C, B) of the fast mode, for comparison with ``solve``."""
    g = np.asarray(g, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 2:
        v = np.broadcast_to(v[None], (g.shape[0],) + v.shape)
    return col_f[:, :, None] * np.einsum("trc,trb->tcb", g, row_f[:, :, None] * v)


def solve_direct(g: np.ndarray, v: np.ndarray, rho: float) -> np.ndarray:
    """Independent reference: nodal analysis of one tile, sparse direct solve (scipy).

    ``g`` (R, C), ``v`` (R, B); returns bit-line currents (C, B). Unknowns are
    all 2RC node voltages; KCL at every node gives a symmetric positive-definite
    system that scipy's SuperLU factorises once for all B right-hand sides.
    """
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    g = np.asarray(g, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    r, c = g.shape
    n = r * c
    w = 1.0 / rho  # wire segment conductance in units of Gmax
    row = np.arange(n).reshape(r, c)  # word-line node ids
    col = row + n  # bit-line node ids
    rows, cols, vals = [], [], []

    def link(a: np.ndarray, b: np.ndarray, cond: np.ndarray | float) -> None:
        cond = np.broadcast_to(cond, a.shape).ravel()
        a, b = a.ravel(), b.ravel()
        rows.extend([a, b, a, b])
        cols.extend([a, b, b, a])
        vals.extend([cond, cond, -cond, -cond])

    link(row[:, :-1], row[:, 1:], w)  # word-line segments
    link(col[:-1, :], col[1:, :], w)  # bit-line segments
    link(row, col, g)  # the cells
    diag_extra = np.zeros(2 * n)
    diag_extra[row[:, 0]] += w  # driver segment to the source
    diag_extra[col[-1, :]] += w  # sense-amp segment to virtual ground
    a = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(2 * n, 2 * n))
    a = a + sp.diags(diag_extra)
    rhs = np.zeros((2 * n, v.shape[1]))
    rhs[row[:, 0]] = w * v
    volts = spla.splu(a.tocsc()).solve(rhs)
    return w * volts[col[-1, :]]
