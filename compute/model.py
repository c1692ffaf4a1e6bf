"""A model as the mesh sees it: a chain of dense layers, and its float32 reference forward.

Why a flat layer list: the crossbars only compute ``W @ x``; everything an MLP-shaped
network adds (bias, element-wise activation, softmax) is cheap digital work done on the
node that gathers a layer's output. So every supported file format (ONNX, safetensors,
``.npy``) is lowered to the same :class:`Model`, and the mesh deploys and runs that.

Layout: ``rows`` means samples are rows, as ONNX/onnxruntime and PyTorch take them
(``Y = act(X @ W.T + b)``); ``columns`` means samples are columns, the engine's own
convention (``Y = W @ X``, what a bare ``.npy`` matrix deployment has always meant).
Internally every forward runs on columns; :func:`to_columns`/:func:`from_columns` convert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from compute.mlp import ACTIVATIONS, Layer, apply_activation

LAYOUTS = ("rows", "columns")
KINDS = ("matrix", "onnx", "safetensors")


class ModelError(ValueError):
    """A model cannot be read, built or run; the message is one line for the user."""


@dataclass
class Model:
    """Dense layers applied in order, with the layout the user's inputs come in.

    ``input_shape`` is the per-sample shape the file declares (e.g. ``(8, 8)`` for an ONNX
    graph that starts with Flatten); inputs are flattened to ``in_features`` first.
    """

    kind: str
    layout: str
    layers: list[Layer]
    input_shape: tuple[int, ...] = ()
    has_bias: bool = True
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelError(f"unknown model kind {self.kind!r}")
        if self.layout not in LAYOUTS:
            raise ModelError(f"unknown layout {self.layout!r}")
        check_layers(self.layers)
        if not self.input_shape:
            self.input_shape = (self.in_features,)
        if math.prod(self.input_shape) != self.in_features:
            raise ModelError(f"input shape {self.input_shape} does not flatten to the first "
                             f"layer's {self.in_features} inputs")

    @property
    def in_features(self) -> int:
        return int(self.layers[0].weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.layers[-1].weight.shape[0])

    @property
    def weight_bytes(self) -> int:
        return sum(layer.weight.nbytes for layer in self.layers)

    def shapes(self) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in layer.weight.shape) for layer in self.layers]


#: Rows checked for NaN/inf at a time, so a memory-mapped 1 GiB weight never needs a
#: 1 GiB temporary.
FINITE_CHUNK_BYTES = 16 << 20


def check_layers(layers: list[Layer]) -> None:
    """Raise ModelError unless the layers chain and every number is finite."""
    if not layers:
        raise ModelError("the model has no layers")
    for i, (a, b) in enumerate(zip(layers, layers[1:])):
        if a.weight.shape[0] != b.weight.shape[1]:
            raise ModelError(f"layer shapes do not chain: layer {i} gives {a.weight.shape[0]} "
                             f"outputs but layer {i + 1} takes {b.weight.shape[1]} inputs")
    for i, layer in enumerate(layers):
        if layer.activation not in ACTIVATIONS:
            raise ModelError(f"layer {i}: unknown activation {layer.activation!r}")
        w = layer.weight
        step = max(1, FINITE_CHUNK_BYTES // max(1, w.shape[1] * w.itemsize))
        for r in range(0, w.shape[0], step):
            if not np.isfinite(w[r:r + step]).all():
                raise ModelError(f"layer {i}: weights contain NaN or infinity (rows from {r})")
        if not np.isfinite(layer.bias).all():
            raise ModelError(f"layer {i}: bias contains NaN or infinity")


def to_columns(model_layout: str, input_shape: tuple[int, ...], x: np.ndarray
               ) -> tuple[np.ndarray, bool]:
    """The user's X as (in_features, B) float32 columns; also whether X was one sample.

    Raises ModelError naming the expected and the received shape.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise ModelError(f"X has dtype {x.dtype}; expected numbers")
    n_in = math.prod(input_shape)
    if model_layout == "columns":
        if x.ndim == 1 and x.shape[0] == n_in:
            return x.astype(np.float32)[:, None], True
        if x.ndim == 2 and x.shape[0] == n_in:
            return x.astype(np.float32, copy=False), False
        raise ModelError(f"X has shape {x.shape}; this matrix takes ({n_in},) or ({n_in}, B)")
    if x.shape == tuple(input_shape):
        return x.reshape(n_in, 1).astype(np.float32), True
    if x.ndim >= 2 and x.shape[1:] == tuple(input_shape):
        rows = x.reshape(x.shape[0], n_in).astype(np.float32, copy=False)
        return np.ascontiguousarray(rows.T), False
    if x.ndim == 2 and x.shape[1] == n_in:
        return np.ascontiguousarray(x.astype(np.float32, copy=False).T), False
    want = ", ".join(str(v) for v in input_shape)
    raise ModelError(f"X has shape {x.shape}; this model takes (B, {want}) rows of samples")


def from_columns(model_layout: str, y: np.ndarray, single: bool) -> np.ndarray:
    """Columns (out, B) back to the user's layout."""
    if single:
        return y[:, 0]
    return y if model_layout == "columns" else np.ascontiguousarray(y.T)


def finish_layer(layer: Layer, z: np.ndarray) -> np.ndarray:
    """Bias and activation on a gathered layer output ``z = W @ h`` (columns)."""
    z += layer.bias[:, None]
    return apply_activation(layer.activation, z)


def reference_forward(model: Model, x: np.ndarray) -> np.ndarray:
    """Float32 numpy forward in the model's own layout (the ``ideal`` mode's expectation)."""
    h, single = to_columns(model.layout, model.input_shape, x)
    for layer in model.layers:
        h = finish_layer(layer, layer.weight @ h)
    return from_columns(model.layout, h, single)
