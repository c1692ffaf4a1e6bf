"""Fault-aware mapping: repair stuck devices found by a verify read after programming.

How real chips are used: after programming, a verify read measures every
device; a device far from its target (stuck at Gmin or Gmax, or a programming
outlier) is taken as fixed at the value read, and

1. its differential partner is re-programmed so that the pair's difference is
   the target again (``G- = s - d`` when G+ reads ``s``, ``G+ = s + d`` when G-
   does), as far as the partner's window [Gmin, Gmax] allows;
2. per array, the output columns whose remaining error is largest move to the
   array's spare column pairs (``spare_cols / 2`` of them), which are programmed
   afresh — with their own faults, repaired the same way — and a spare is only
   used when it verifies better than the column it replaces. (The spare is
   modelled at the position of the column it replaces; its IR drop is that
   column's.)

Pure functions over one tile row's arrays, shapes (p outputs, K inputs, 2
devices); random draws come from the caller's keyed generators.
"""

from __future__ import annotations

from compute.lazynumpy import np

#: A device reading further than this many programming sigmas (or 2 % of
#: Gmax, whichever is larger) from its target is treated as stuck.
VERIFY_SIGMAS = 4.0
VERIFY_FLOOR = 0.02


def flag_stuck(target: np.ndarray, read: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Verify read: which devices are far from their target (bool, same shape)."""
    return np.abs(read - target) > np.maximum(VERIFY_SIGMAS * sigma, VERIFY_FLOOR)


def partner_targets(target: np.ndarray, read: np.ndarray, flagged: np.ndarray,
                    g_min: float) -> tuple[np.ndarray, np.ndarray]:
    """New targets for the partners of flagged devices, and which devices get re-programmed.

    Differential pairs only: diff d = t+ - t-; a flagged G+ reading s needs
    G- = s - d, a flagged G- reading s needs G+ = s + d, clipped to [g_min, 1].
    Pairs with both devices flagged are left as they are.
    """
    d = target[..., 0] - target[..., 1]
    fp, fm = flagged[..., 0], flagged[..., 1]
    new = target.copy()
    redo = np.zeros_like(flagged)
    only_p, only_m = fp & ~fm, fm & ~fp
    new[..., 1] = np.where(only_p, np.clip(read[..., 0] - d, g_min, 1.0), new[..., 1])
    new[..., 0] = np.where(only_m, np.clip(read[..., 1] + d, g_min, 1.0), new[..., 0])
    redo[..., 1] = only_p
    redo[..., 0] = only_m
    return new, redo


def column_errors(target: np.ndarray, g: np.ndarray, q: int, n_tc: int) -> np.ndarray:
    """Squared error of each output column pair per array: (p, n_tc)."""
    err = (g[..., 0] - g[..., 1]) - (target[..., 0] - target[..., 1])
    p, k = err.shape
    padded = np.zeros((p, n_tc * q))
    padded[:, :k] = err * err
    return padded.reshape(p, n_tc, q).sum(axis=2)


def choose_spares(errors: np.ndarray, n_spares: int) -> np.ndarray:
    """Per array, the output columns to try on spares: (p, n_tc) bool, worst first."""
    p, n_tc = errors.shape
    chosen = np.zeros_like(errors, dtype=bool)
    take = min(n_spares, p)
    if take == 0:
        return chosen
    worst = np.argsort(-errors, axis=0, kind="stable")[:take]  # (take, n_tc)
    for c in range(n_tc):
        rows = worst[:, c]
        chosen[rows[errors[rows, c] > 0], c] = True
    return chosen


def spare_slots(chosen: np.ndarray) -> np.ndarray:
    """Index of the spare pair each chosen column uses within its array (-1 if none)."""
    slots = np.cumsum(chosen, axis=0) - 1
    return np.where(chosen, slots, -1)


def expand_columns(mask_pc: np.ndarray, q: int, k: int) -> np.ndarray:
    """(p, n_tc) per-array column mask -> (p, K) per-weight mask."""
    return np.repeat(mask_pc, q, axis=1)[:, :k]
