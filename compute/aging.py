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

from compute.lazynumpy import np

from compute.device import DeviceProfile

T_READ_S = 250e-9  # aihwkit PCMLikeNoiseModel t_read (1/f fit parameter)
_ZERO_CLIP = 1e-7


def pcm_nu(g_target: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Per-device drift exponents for normalised targets g (aihwkit formula), z ~ N(0, 1).

    Computed in g's dtype (float32 when programming: the result ends in a uint8 code).
    """
    log_g = np.log(np.maximum(np.abs(g_target), _ZERO_CLIP))
    mu = np.clip(-0.0155 * log_g + 0.0244, 0.049, 0.1)
    log_g *= -0.0125
    log_g -= 0.0059
    sig = np.clip(log_g, 0.008, 0.045, out=log_g)
    sig *= z
    sig += mu
    return np.abs(sig, out=sig)


def pcm_read_sigma(g_prog: np.ndarray, g_drift: np.ndarray, t_total_s: float) -> np.ndarray:
    """Std of the accumulated 1/f noise at total time t (= t_inference + t0), normalised units."""
    g_abs = np.abs(g_prog)
    q_s = np.power(g_abs, g_abs.dtype.type(0.65), out=g_abs)
    np.maximum(q_s, 1e-3, out=q_s)
    np.divide(0.0088, q_s, out=q_s)
    np.minimum(q_s, 0.2, out=q_s)
    q_s *= np.abs(g_drift)
    q_s *= math.sqrt(math.log((t_total_s + T_READ_S) / (2 * T_READ_S)))
    return q_s


def age(profile: DeviceProfile, g_target: np.ndarray, g_prog: np.ndarray,
        z_nu: np.ndarray | None, z_read: np.ndarray | None) -> np.ndarray:
    """Conductances at the profile's inference time, from programmed ones (normalised units).

    ``z_nu`` and ``z_read`` are standard normals of g_prog's shape from the
    caller's keyed streams (drift exponent, accumulated read noise); each is
    only needed (and may be None otherwise) when the profile has the PCM effect.
    Returns a new array in g_prog's dtype.
    """
    t0 = profile.drift_t0_s
    t = profile.read_time_s + t0
    if profile.drift_model == "pcm":
        # (t/t0)^-nu as exp(-nu ln(t/t0)): one exp per device instead of a pow
        decay = pcm_nu(g_target, z_nu)
        decay *= -math.log(t / t0)
        g = np.exp(decay, out=decay)
        g *= g_prog
    elif profile.drift_model == "fixed" and profile.drift_nu > 0:
        g = g_prog * g_prog.dtype.type((t / t0) ** (-profile.drift_nu))
    else:
        g = g_prog.copy()
    if profile.read_noise_model == "pcm":
        noise = pcm_read_sigma(g_prog, g, t)
        noise *= z_read
        g += noise
    return np.maximum(g, 0.0, out=g)


def compensation(baseline: np.ndarray, current: np.ndarray) -> np.ndarray:
    """aihwkit global drift compensation factor from two calibration reads.

    ``baseline``/``current``: outputs of an all-ones read (..., outputs) right
    after programming and at inference time; factor = mean|baseline| / mean|current|.
    """
    ref = np.maximum(np.mean(np.abs(baseline), axis=-1), 1e-12)
    cur = np.maximum(np.mean(np.abs(current), axis=-1), 1e-12)
    return ref / cur
