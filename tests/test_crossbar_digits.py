"""Real data: an MLP trained on scikit-learn's bundled digits, deployed on crossbars."""

import numpy as np
import pytest

from compute.device import PRESETS
from compute.digits import load_digits_split, train_digits_mlp
from compute.mlp import CrossbarMLP, float_forward

SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def trained():
    layers = train_digits_mlp(seed=0)
    _, _, xte, yte = load_digits_split(seed=0)
    return layers, xte.T.copy(), yte


def _accuracy(layers, profile, xte, yte, seed: int) -> float:
    net = CrossbarMLP.program(layers, profile, seed=seed)
    return float(np.mean(net.predict(xte, read_seed=seed) == yte))


def test_split_is_scaled_float32_and_deterministic() -> None:
    a = load_digits_split(seed=0)
    b = load_digits_split(seed=0)
    assert a[0].dtype == np.float32 and a[0].shape[1] == 64
    assert 0.0 <= a[0].min() and a[0].max() <= 1.0
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_training_is_deterministic(trained) -> None:
    layers, _, _ = trained
    again = train_digits_mlp(seed=0)
    for a, b in zip(layers, again):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)


def test_ideal_matches_float_predictions_exactly_and_is_accurate(trained) -> None:
    layers, xte, yte = trained
    float_pred = np.argmax(float_forward(layers, xte), axis=0)
    net = CrossbarMLP.program(layers, PRESETS["ideal"], seed=0)
    pred = net.predict(xte)
    np.testing.assert_array_equal(pred, float_pred)
    acc = float(np.mean(pred == yte))
    print(f"\nideal accuracy {acc:.4f} (float {np.mean(float_pred == yte):.4f})")
    assert acc >= 0.95


@pytest.mark.parametrize("name", ["rram", "pcm", "conservative"])
def test_realistic_preset_accuracy_reported(trained, name: str) -> None:
    layers, xte, yte = trained
    accs = [_accuracy(layers, PRESETS[name], xte, yte, s) for s in SEEDS]
    print(f"\n{name}: accuracy mean {np.mean(accs):.4f} over seeds {SEEDS}: {np.round(accs, 4).tolist()}")
    assert all(0.0 <= a <= 1.0 for a in accs)
    assert np.mean(accs) > 0.1 - 3 * np.sqrt(0.09 / len(yte))  # not worse than guessing


def test_conservative_reaches_085_with_fault_aware_mapping_and_collapses_without(trained) -> None:
    layers, xte, yte = trained
    prof = PRESETS["conservative"]
    assert prof.fault_aware and prof.spare_cols == 32
    mitigated = np.mean([_accuracy(layers, prof, xte, yte, s) for s in SEEDS])
    raw = np.mean([_accuracy(layers, prof.with_changes(fault_aware=False), xte, yte, s) for s in SEEDS])
    print(f"\nconservative: {mitigated:.4f} with fault-aware mapping, {raw:.4f} without")
    assert mitigated >= 0.85
    assert raw < mitigated - 0.2


@pytest.mark.parametrize("name", ["rram", "pcm"])
def test_rram_and_pcm_stay_close_to_float(trained, name: str) -> None:
    layers, xte, yte = trained
    acc = np.mean([_accuracy(layers, PRESETS[name], xte, yte, s) for s in SEEDS])
    assert acc >= 0.92, acc


def test_accuracy_falls_monotonically_with_programming_noise(trained) -> None:
    layers, xte, yte = trained
    scales = (0.0, 1.0, 2.0, 4.0, 8.0)
    base = PRESETS["rram"]
    means, ses = [], []
    for s in scales:
        accs = np.array([_accuracy(layers, base.with_changes(prog_noise_scale=s), xte, yte, seed)
                         for seed in SEEDS])
        means.append(accs.mean())
        # MC error: spread across programming seeds plus binomial test-set error
        ses.append(np.sqrt(accs.var(ddof=1) / len(SEEDS) + accs.mean() * (1 - accs.mean()) / len(yte)))
    print("\nprog-noise scale -> accuracy:", dict(zip(scales, np.round(means, 4).tolist())))
    for i in range(len(scales) - 1):
        assert means[i + 1] <= means[i] + 2 * np.hypot(ses[i], ses[i + 1]), (scales[i + 1], means)
    assert means[0] - means[-1] > 0.1  # the effect is real, not flat
