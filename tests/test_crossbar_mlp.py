"""MLP deployment: activations, float reference, layer-by-layer crossbar inference."""

import numpy as np
import pytest

from compute.device import PRESETS
from compute.mlp import CrossbarMLP, Layer, apply_activation, float_forward


def _layers(seed: int = 0) -> list[Layer]:
    rng = np.random.default_rng(seed)
    return [
        Layer(rng.standard_normal((20, 12)) * 0.3, rng.standard_normal(20) * 0.1, "relu"),
        Layer(rng.standard_normal((5, 20)) * 0.3, rng.standard_normal(5) * 0.1, "softmax"),
    ]


def test_apply_activation_values() -> None:
    z = np.array([[-1.0, 2.0], [3.0, -4.0]], np.float32)
    np.testing.assert_array_equal(apply_activation("relu", z), [[0, 2], [3, 0]])
    np.testing.assert_array_equal(apply_activation("identity", z), z)
    s = apply_activation("softmax", z)
    np.testing.assert_allclose(s.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(s[:, 0], np.exp([-1, 3]) / np.exp([-1, 3]).sum(), rtol=1e-6)
    np.testing.assert_allclose(apply_activation("sigmoid", np.zeros(3, np.float32)), 0.5)
    with pytest.raises(ValueError, match="unknown activation"):
        apply_activation("gelu2", z)


def test_float_forward_matches_manual_computation() -> None:
    layers = _layers()
    x = np.random.default_rng(1).standard_normal((12, 7)).astype(np.float32)
    h = np.maximum(layers[0].weight @ x + layers[0].bias[:, None], 0)
    logits = layers[1].weight @ h + layers[1].bias[:, None]  # final softmax left out
    np.testing.assert_allclose(float_forward(layers, x), logits, rtol=1e-6)
    np.testing.assert_allclose(float_forward(layers, x[:, 0]), logits[:, 0], rtol=1e-6)


def test_ideal_crossbar_mlp_equals_float_exactly() -> None:
    layers = _layers()
    x = np.random.default_rng(2).standard_normal((12, 30)).astype(np.float32)
    net = CrossbarMLP.program(layers, PRESETS["ideal"], seed=0)
    np.testing.assert_array_equal(net.predict_logits(x), float_forward(layers, x))
    assert net.predict(x).shape == (30,)


def test_noisy_mlp_is_reproducible_and_seed_dependent() -> None:
    layers = _layers()
    x = np.random.default_rng(3).standard_normal((12, 30)).astype(np.float32)
    a = CrossbarMLP.program(layers, PRESETS["pcm"], seed=1).predict_logits(x, read_seed=4)
    b = CrossbarMLP.program(layers, PRESETS["pcm"], seed=1).predict_logits(x, read_seed=4)
    c = CrossbarMLP.program(layers, PRESETS["pcm"], seed=2).predict_logits(x, read_seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_layer_and_chain_validation() -> None:
    with pytest.raises(ValueError, match="bias"):
        Layer(np.zeros((3, 4)), np.zeros(4), "relu")
    with pytest.raises(ValueError, match="unknown activation"):
        Layer(np.zeros((3, 4)), np.zeros(3), "swish9")
    bad = [Layer(np.zeros((3, 4)), np.zeros(3), "relu"), Layer(np.zeros((2, 5)), np.zeros(2), "identity")]
    with pytest.raises(ValueError, match="do not chain"):
        CrossbarMLP.program(bad, PRESETS["rram"], seed=0)
    with pytest.raises(ValueError, match="column vectors"):
        float_forward(_layers(), np.zeros((7, 12), np.float32))
