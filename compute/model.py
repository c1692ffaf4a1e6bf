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
import os
from dataclasses import dataclass, field

from compute.lazynumpy import np

from compute.mlp import ACTIVATIONS, apply_activation, layer_problem

LAYOUTS = ("rows", "columns")
KINDS = ("matrix", "onnx", "safetensors")


class ModelError(ValueError):
    """A model cannot be read, built or run; the message is one line for the user."""


class FileMatrix:
    """A C-ordered matrix stored at ``offset`` in a file, read row range by row range.

    Why not ``np.memmap``: every page of a mapping that was touched counts in the process's
    resident set, so checking and streaming a 1 GiB weight through a mapping makes the
    daemon look (and, under pressure, behave) 1 GiB large. ``os.pread`` of one block at a
    time keeps the daemon's memory at a few blocks whatever the model's size.
    """

    ndim = 2

    def __init__(self, path: str, offset: int, shape: tuple[int, int], dtype: np.dtype) -> None:
        self.path, self.offset = str(path), int(offset)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.row_bytes = self.shape[1] * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Rows ``rows`` (a step-1 slice) as float32, read from the file now."""
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("FileMatrix supports row slices only")
        start, stop, _ = rows.indices(self.shape[0])
        stop = max(start, stop)
        size = (stop - start) * self.row_bytes
        buf = bytearray(size)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [buf], self.offset + start * self.row_bytes) if size else 0
        finally:
            os.close(fd)
        if got != size:
            raise ModelError(f"{os.path.basename(self.path)}: file ends inside the weights "
                             "(truncated)")
        arr = np.frombuffer(buf, self.dtype).reshape(stop - start, self.shape[1])
        return arr.astype(np.float32, copy=False)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self[0:self.shape[0]]
        return arr if dtype is None else arr.astype(dtype, copy=False)


@dataclass
class DenseLayer:
    """``y = activation(weight @ x + bias)``; the weight may stay in its file (FileMatrix)."""

    weight: "np.ndarray | FileMatrix"
    bias: np.ndarray
    activation: str

    def __post_init__(self) -> None:
        if isinstance(self.weight, np.ndarray) and self.weight.dtype != np.float32:
            self.weight = np.asarray(self.weight, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32).reshape(-1)
        problem = layer_problem(self.weight.shape, self.bias.shape, self.activation)
        if problem:
            raise ModelError(problem)


@dataclass
class Model:
    """Dense layers applied in order, with the layout the user's inputs come in.

    ``input_shape`` is the per-sample shape the file declares (e.g. ``(8, 8)`` for an ONNX
    graph that starts with Flatten); inputs are flattened to ``in_features`` first.
    """

    kind: str
    layout: str
    layers: list[DenseLayer]
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
        return sum(int(layer.weight.nbytes) for layer in self.layers)

    def shapes(self) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in layer.weight.shape) for layer in self.layers]


#: Rows checked for NaN/inf at a time, so a memory-mapped 1 GiB weight never needs a
#: 1 GiB temporary.
FINITE_CHUNK_BYTES = 16 << 20


def check_layers(layers: list[DenseLayer]) -> None:
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
        step = max(1, FINITE_CHUNK_BYTES // max(1, w.shape[1] * w.dtype.itemsize))
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


def finish_layer(layer: DenseLayer, z: np.ndarray) -> np.ndarray:
    """Bias and activation on a gathered layer output ``z = W @ h`` (columns)."""
    z += layer.bias[:, None]
    return apply_activation(layer.activation, z)


def reference_forward(model: Model, x: np.ndarray) -> np.ndarray:
    """Float32 numpy forward in the model's own layout (the ``ideal`` mode's expectation)."""
    h, single = to_columns(model.layout, model.input_shape, x)
    for layer in model.layers:
        h = finish_layer(layer, np.asarray(layer.weight) @ h)
    return from_columns(model.layout, h, single)
