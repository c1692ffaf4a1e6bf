"""What happens to programmed conductances between programming and an inference time.

PCM follows IBM aihwkit's statistical model (``inference/noise/pcm.py``,
fitted by Nandakumar et al. 2019 / Joshi et al. 2020):

* drift: ``G(t) = G_prog * ((t + t0) / t0) ** -nu`` with a per-device ``nu``
  drawn once, ``nu ~ |N(mu(g), sigma(g))|`` where ``g = G_target/Gmax`` and
  ``mu = clip(-0.0155 ln g + 0.0244, 0.049, 0.1)``,
  ``sigma = clip(-0.0125 ln g - 0.0059, 0.008, 0.045)``;
* accumulated 1/f read noise since programming, drawn once per inference
  time: ``sigma = |G(t)| * Q_s * sqrt(ln((t + t0 + t_read) / (2 t_read)))`` with
  ``Q_s = min(0.2, 0.0088 / max(1e-3, (|G_prog|/Gmax) ** 0.65))`` — i.e.
  proportional to ``g ** 0.35`` and ~0 near g = 0.

The "fixed" model (every device drifts with the profile's ``drift_nu``) is kept
for analytic tests. Global drift compensation is estimated the way aihwkit's
``GlobalDriftCompensation`` does (``inference/compensation/drift.py``): read
the array with an all-ones input right after programming and again at the
inference time; the ratio of the mean absolute outputs rescales every output.

Pure functions over arrays; the random draws come from the caller's keyed
generator so that programming stays a function of (weights, seed, position).
"""

from __future__ import annotations

import math

import numpy as np

from compute.device import DeviceProfile

T_READ_S = 250e-9  # aihwkit PCMLikeNoiseModel t_read (1/f fit parameter)
_ZERO_CLIP = 1e-7


def pcm_nu(g_target: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Per-device drift exponents for normalised targets g (aihwkit formula), z ~ N(0, 1)."""
    g_rel = np.maximum(np.abs(g_target), _ZERO_CLIP)
    log_g = np.log(g_rel)
    mu = np.clip(-0.0155 * log_g + 0.0244, 0.049, 0.1)
    sig = np.clip(-0.0125 * log_g - 0.0059, 0.008, 0.045)
    return np.abs(mu + sig * z)


def pcm_read_sigma(g_prog: np.ndarray, g_drift: np.ndarray, t_total_s: float) -> np.ndarray:
    """Std of the accumulated 1/f noise at total time t (= t_inference + t0), normalised units."""
    q_s = np.minimum(0.0088 / np.maximum(np.abs(g_prog) ** 0.65, 1e-3), 0.2)
    return np.abs(g_drift) * q_s * math.sqrt(math.log((t_total_s + T_READ_S) / (2 * T_READ_S)))


def age(profile: DeviceProfile, g_target: np.ndarray, g_prog: np.ndarray,
        z_nu: np.ndarray, z_read: np.ndarray) -> np.ndarray:
    """Conductances at the profile's inference time, from programmed ones (normalised units).

    ``z_nu`` and ``z_read`` are standard normals of g_prog's shape from the
    caller's keyed streams (drift exponent, accumulated read noise).
    """
    t0 = profile.drift_t0_s
    t = profile.read_time_s + t0
    g = g_prog
    if profile.drift_model == "pcm":
        g = g_prog * (t / t0) ** (-pcm_nu(g_target, z_nu))
    elif profile.drift_model == "fixed" and profile.drift_nu > 0:
        g = g_prog * (t / t0) ** (-profile.drift_nu)
    if profile.read_noise_model == "pcm":
        g = g + pcm_read_sigma(g_prog, g, t) * z_read
    return np.maximum(g, 0.0)


def compensation(baseline: np.ndarray, current: np.ndarray) -> np.ndarray:
    """aihwkit global drift compensation factor from two calibration reads.

    ``baseline``/``current``: outputs of an all-ones read (..., outputs) right
    after programming and at inference time; factor = mean|baseline| / mean|current|.
    """
    ref = np.maximum(np.mean(np.abs(baseline), axis=-1), 1e-12)
    cur = np.maximum(np.mean(np.abs(current), axis=-1), 1e-12)
    return ref / cur
