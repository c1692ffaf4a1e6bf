"""Small MLPs deployed layer by layer onto crossbars, activations digital in between.

Why digital activations: the arrays only do W @ x; biases and non-linearities
are cheap vector work that real chips also do in digital periphery, and the
daemon's mesh demo reuses ``apply_activation`` between remote layers.

Conventions: y = act(W @ x + b) with W (out, in) and inputs as column vectors
x (in, B). "Logits" are the last layer's pre-softmax values (softmax is
monotonic, so predictions are their argmax).
"""

from __future__ import annotations

from dataclasses import dataclass

from compute.lazynumpy import np

from compute.crossbar import ProgrammedMatrix
from compute.device import DeviceProfile

ACTIVATIONS = ("relu", "identity", "softmax", "tanh", "sigmoid")


@dataclass
class Layer:
    """One dense layer: y = activation(weight @ x + bias)."""

    weight: np.ndarray  # (out, in) float32
    bias: np.ndarray  # (out,) float32
    activation: str

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32).reshape(-1)
        problem = layer_problem(self.weight.shape, self.bias.shape, self.activation)
        if problem:
            raise ValueError(problem)


def layer_problem(weight_shape: tuple, bias_shape: tuple, activation: str) -> str | None:
    """What is wrong with a dense layer of these shapes, or None: one rule for every layer type."""
    if len(weight_shape) != 2 or tuple(bias_shape) != (weight_shape[0],):
        return (f"a layer needs weight (out, in) and bias (out,), got "
                f"{tuple(weight_shape)} and {tuple(bias_shape)}")
    if activation not in ACTIVATIONS:
        return f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}"
    return None


def apply_activation(name: str, z: np.ndarray) -> np.ndarray:
    """Element-wise (or per-column for softmax) activation on (out, B) or (out,)."""
    if name == "relu":
        return np.maximum(z, 0, dtype=z.dtype)
    if name == "identity":
        return z
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return (1.0 / (1.0 + np.exp(-z))).astype(z.dtype, copy=False)
    if name == "softmax":
        e = np.exp(z - np.max(z, axis=0, keepdims=True))
        return e / np.sum(e, axis=0, keepdims=True)
    raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


def _hidden_activation(layers: list[Layer], i: int) -> str:
    """The last layer's softmax is left out so that the result is logits."""
    act = layers[i].activation
    return "identity" if i == len(layers) - 1 and act == "softmax" else act


def _as_columns(x: np.ndarray, n_in: int) -> tuple[np.ndarray, bool]:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (1, 2) or x.shape[0] != n_in:
        raise ValueError(f"inputs must be ({n_in},) or ({n_in}, B) column vectors, got {x.shape}")
    return (x[:, None], True) if x.ndim == 1 else (x, False)


def float_forward(layers: list[Layer], x: np.ndarray) -> np.ndarray:
    """Reference float32 inference: logits (out, B) for inputs (in, B)."""
    h, vector = _as_columns(x, layers[0].weight.shape[1])
    for i, layer in enumerate(layers):
        h = apply_activation(_hidden_activation(layers, i), layer.weight @ h + layer.bias[:, None])
    return h[:, 0] if vector else h


def layer_seed(seed: int, i: int) -> int:
    """Independent, reproducible seed per layer."""
    return int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class CrossbarMLP:
    """An MLP whose weight matrices live on programmed crossbars."""

    def __init__(self, layers: list[Layer], matrices: list[ProgrammedMatrix]) -> None:
        self.layers = layers
        self.matrices = matrices

    @classmethod
    def program(cls, layers: list[Layer], profile: DeviceProfile, seed: int) -> "CrossbarMLP":
        """Program every layer's weights once (each layer gets its own seed)."""
        if not layers:
            raise ValueError("an MLP needs at least one layer")
        for a, b in zip(layers, layers[1:]):
            if a.weight.shape[0] != b.weight.shape[1]:
                raise ValueError(f"layer sizes do not chain: {a.weight.shape} then {b.weight.shape}")
        mats = [ProgrammedMatrix.program(l.weight, profile, layer_seed(seed, i)) for i, l in enumerate(layers)]
        return cls(list(layers), mats)

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.matrices)

    def predict_logits(self, x: np.ndarray, read_seed: int = 0) -> np.ndarray:
        """Logits (out, B) for inputs (in, B); read noise keyed by read_seed."""
        h, vector = _as_columns(x, self.layers[0].weight.shape[1])
        for i, (layer, pm) in enumerate(zip(self.layers, self.matrices)):
            z = pm.matmul(h, read_seed=layer_seed(read_seed, i)) + layer.bias[:, None]
            h = apply_activation(_hidden_activation(self.layers, i), z)
        return h[:, 0] if vector else h

    def predict(self, x: np.ndarray, read_seed: int = 0) -> np.ndarray:
        """Class indices (B,) (or a scalar for one input)."""
        return np.argmax(self.predict_logits(x, read_seed), axis=0)
