"""Read model files into a :class:`compute.model.Model`, with the ecosystem's own libraries.

- ``.onnx`` through the ``onnx`` package: MLP-shaped graphs (MatMul, Gemm with
  transA/transB/alpha/beta, Add, Relu, Tanh, Sigmoid, Softmax, Flatten, Reshape, Identity,
  Constant) are lowered to dense layers by a small symbolic walk over the (topologically
  sorted) nodes. Anything else fails at once, naming the operator and the node.
- ``.safetensors`` through ``safetensors``: tensors plus a layer list, read from the file's
  metadata (key ``sedma.layers``, JSON) or from a file beside it (``FILE.json``,
  ``FILE.layers.json`` or ``FILE.toml``). Weights follow PyTorch's ``Linear``: (out, in),
  inputs are rows.
- ``.npy``: a single matrix W (inputs are columns, ``Y = W @ X``), as ``deploy`` always took.

Large weights are not copied into memory: ``.npy`` and safetensors tensors are memory-mapped
(safetensors' layout is a JSON header followed by raw little-endian arrays, which is what
makes them mmap-able), so a deploy can stream them block by block. Every error is one line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute.lazynumpy import np

from compute.model import DenseLayer as Layer, FileMatrix, Model, ModelError

SUFFIXES = (".npy", ".onnx", ".safetensors")
METADATA_KEY = "sedma.layers"


def read_model(path: str | Path) -> Model:
    """Read ``path`` by its suffix; raise ModelError with a one-line reason."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ModelError(f"{path.name}: unknown model format {suffix or '(no suffix)'!r}; "
                         f"expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    reader = {".npy": read_npy, ".onnx": read_onnx, ".safetensors": read_safetensors}[suffix]
    try:
        return reader(path)
    except ModelError as exc:
        text = str(exc)
        raise ModelError(text if text.startswith(path.name) else f"{path.name}: {text}") from None


def _build(kind: str, layout: str, layers: list[Layer], input_shape: tuple[int, ...] = (),
           has_bias: bool = True) -> Model:
    return Model(kind, layout, layers, tuple(input_shape), has_bias)


# --------------------------------------------------------------------------- .npy
def read_npy(path: Path) -> Model:
    """A single matrix W (read block by block later); ``Y = W @ X`` with X in columns."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError, EOFError) as exc:
        raise ModelError(f"{path.name}: not a readable .npy array ({_short(exc)})") from None
    if len(shape) != 2 or dtype.kind not in "fiu" or 0 in shape:
        raise ModelError(f"{path.name}: expected a non-empty 2-D numeric matrix, got "
                         f"{dtype} {shape}")
    if fortran or dtype.hasobject:
        w = np.load(path, allow_pickle=False).astype(np.float32)   # rare: read it whole
    else:
        if path.stat().st_size < offset + math.prod(shape) * dtype.itemsize:
            raise ModelError(f"{path.name}: not a readable .npy array (the file is truncated)")
        w = FileMatrix(str(path), offset, shape, dtype)
    layer = _layer(w, np.zeros(shape[0], np.float32), "identity", "the matrix")
    return _build("matrix", "columns", [layer], has_bias=False)


def _layer(w: np.ndarray, b: np.ndarray, activation: str, what: str) -> Layer:
    try:
        return Layer(w, b, activation)
    except ModelError as exc:
        raise ModelError(f"{what}: {exc}") from None


# --------------------------------------------------------------------------- safetensors
def read_safetensors(path: Path) -> Model:
    """Tensors from ``path`` chained by the layer list in its metadata or beside it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            names = set(f.keys())
    except Exception as exc:  # the Rust reader raises its own error types
        raise ModelError(f"{path.name}: not a readable safetensors file ({_short(exc)})") from None
    spec = _layer_spec(path, metadata)
    tensors = _mmap_safetensors(path)
    layers = []
    for i, entry in enumerate(spec["layers"]):
        w = _tensor(tensors, names, entry.get("weight"), f"layer {i} weight")
        if w.ndim != 2:
            raise ModelError(f"layer {i}: weight {entry['weight']!r} is {w.ndim}-D; expected "
                             "(out, in)")
        bname = entry.get("bias")
        b = (np.zeros(w.shape[0], np.float32) if bname is None
             else _tensor(tensors, names, bname, f"layer {i} bias"))
        layers.append(_layer(w, b, str(entry.get("activation", "identity")), f"layer {i}"))
    shape = spec.get("input_shape") or ()
    return _build("safetensors", "rows", layers, tuple(int(v) for v in shape))


def _layer_spec(path: Path, metadata: dict[str, str]) -> dict:
    """The layer list: metadata first, else a JSON or TOML file beside the weights."""
    text, source = metadata.get(METADATA_KEY), f"{path.name} metadata"
    if text is None:
        for side in (path.with_suffix(".json"), Path(f"{path}.layers.json"),
                     path.with_suffix(".toml")):
            if side.is_file():
                text, source = side.read_text(), side.name
                break
    if text is None:
        raise ModelError(f"{path.name}: no layer list (metadata key {METADATA_KEY!r}, or "
                         f"{path.stem}.json / {path.stem}.toml beside it)")
    import tomllib   # model files are read on a worker thread; an idle daemon needs none

    try:
        spec = tomllib.loads(text) if source.endswith(".toml") else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ModelError(f"{source}: unreadable layer list ({_short(exc)})") from None
    if isinstance(spec, list):
        spec = {"layers": spec}
    if (not isinstance(spec, dict) or not isinstance(spec.get("layers"), list)
            or not spec["layers"] or not all(isinstance(e, dict) for e in spec["layers"])):
        raise ModelError(f"{source}: the layer list must be a non-empty list of "
                         '{"weight": ..., "bias": ..., "activation": ...}')
    return spec


def _mmap_safetensors(path: Path) -> dict[str, "np.ndarray | FileMatrix"]:
    """2-D tensors as FileMatrix (read block by block later), small ones in memory.

    safe_open validated the header already; safetensors stores a JSON header then raw
    little-endian C-ordered arrays at the offsets it lists, which is what lets a deploy
    read any row range without loading the tensor.
    """
    dtypes = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I32": "<i4", "I64": "<i8"}
    with open(path, "rb") as f:
        (n,) = np.frombuffer(f.read(8), "<u8")
        header = json.loads(f.read(int(n)))
    base = 8 + int(n)
    out: dict[str, np.ndarray | FileMatrix] = {}
    for name, info in header.items():
        if name == "__metadata__" or info.get("dtype") not in dtypes:
            continue
        start, _ = info["data_offsets"]
        shape = tuple(info["shape"])
        dtype = np.dtype(dtypes[info["dtype"]])
        if len(shape) == 2 and math.prod(shape):
            out[name] = FileMatrix(str(path), base + start, shape, dtype)
        else:
            out[name] = np.asarray(np.fromfile(path, dtype, math.prod(shape), offset=base + start)
                                   .reshape(shape), np.float32)
    return out


def _tensor(tensors: dict[str, np.ndarray], names: set[str], name: Any, what: str) -> np.ndarray:
    if not isinstance(name, str) or name not in names:
        raise ModelError(f"{what}: no tensor named {name!r} in the file")
    if name not in tensors:
        raise ModelError(f"{what}: tensor {name!r} is not a float or integer tensor")
    return tensors[name]


# --------------------------------------------------------------------------- ONNX
def read_onnx(path: Path) -> Model:
    """Lower an MLP-shaped ONNX graph to dense layers (see the module docstring)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, truncated file, ...
        raise ModelError(f"{path.name}: not a readable ONNX model ({_short(exc)})") from None
    return _Lowering(proto.graph, path.parent).run()


def _initializer(init: Any, base: Path) -> "np.ndarray | FileMatrix":
    """An initializer's value; a 2-D float one in an external data file stays there
    (read block by block at deploy), which is how ONNX stores models over 2 GB."""
    from onnx import TensorProto, numpy_helper

    if init.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(init)
    info = {e.key: e.value for e in init.external_data}
    where = (base / info.get("location", "")).resolve()
    if where.parent != base.resolve() or not where.is_file():
        raise ModelError(f"initializer {init.name!r}: external data {info.get('location')!r} "
                         "must be a file beside the model")
    dtypes = {TensorProto.FLOAT: "<f4", TensorProto.DOUBLE: "<f8", TensorProto.INT64: "<i8",
              TensorProto.INT32: "<i4"}
    if init.data_type not in dtypes:
        raise ModelError(f"initializer {init.name!r}: unsupported external data type")
    dtype, shape = np.dtype(dtypes[init.data_type]), tuple(int(d) for d in init.dims)
    offset = int(info.get("offset", 0))
    if where.stat().st_size < offset + math.prod(shape) * dtype.itemsize:
        raise ModelError(f"initializer {init.name!r}: external data file {where.name} is "
                         "truncated")
    if len(shape) == 2 and math.prod(shape):
        return FileMatrix(str(where), offset, shape, dtype)
    return np.fromfile(where, dtype, math.prod(shape), offset=offset).reshape(shape)


@dataclass
class _Act:
    """The one running activation tensor: a pending ``W @ h + b`` not yet closed."""

    features: int
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


@dataclass
class _Lowering:
    graph: Any
    base: Path
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    act_names: set[str] = field(default_factory=set)
    layers: list[Layer] = field(default_factory=list)
    act: _Act | None = None
    input_shape: tuple[int, ...] = ()

    def run(self) -> Model:
        for init in self.graph.initializer:
            self.consts[init.name] = _initializer(init, self.base)
        self._input()
        for i, node in enumerate(self.graph.node):
            self._node(node, node.name or f"#{i}")
        if len(self.graph.output) != 1 or self.graph.output[0].name not in self.act_names:
            raise ModelError("the graph's single output must be the network's output")
        self._close("identity")
        if not self.layers:
            raise ModelError("the graph has no MatMul or Gemm: nothing to put on crossbars")
        return _build("onnx", "rows", self.layers, self.input_shape)

    def _input(self) -> None:
        inputs = [v for v in self.graph.input if v.name not in self.consts]
        if len(inputs) != 1:
            raise ModelError(f"the graph must have exactly one input, it has {len(inputs)}")
        t = inputs[0].type.tensor_type
        if t.elem_type not in (1, 11):  # FLOAT, DOUBLE
            raise ModelError(f"input {inputs[0].name!r} must be a float tensor")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if len(dims) < 2 or any(d is None or d <= 0 for d in dims[1:]):
            raise ModelError(f"input {inputs[0].name!r} must be (batch, features...) with known "
                             f"feature sizes, got {dims}")
        self.input_shape = tuple(int(d) for d in dims[1:])
        self.act_names.add(inputs[0].name)
        self.act = _Act(math.prod(self.input_shape) if len(dims) == 2 else -1)

    # --- helpers
    def _is_act(self, name: str) -> bool:
        return name in self.act_names

    def _const(self, name: str, node: str, op: str) -> np.ndarray:
        if name not in self.consts:
            raise ModelError(f"{op} node {node!r}: input {name!r} is neither the network's "
                             "activation nor a constant")
        return self.consts[name]

    def _close(self, activation: str) -> None:
        """End the pending linear map as a layer with ``activation``."""
        a = self.act
        if a.weight is None:
            return
        bias = a.bias if a.bias is not None else np.zeros(a.weight.shape[0], np.float32)
        self.layers.append(_layer(a.weight, bias, activation, f"layer {len(self.layers)}"))
        self.act = _Act(a.weight.shape[0])

    def _set_output(self, node: Any, keep: bool = False) -> None:
        if not keep:
            self.act_names = set()
        self.act_names.add(node.output[0])

    def _flat(self, op: str, node: str) -> int:
        if self.act.features < 0:
            raise ModelError(f"{op} node {node!r} needs a flat (batch, features) input; add "
                             "a Flatten first")
        return self.act.features

    # --- operators
    def _node(self, node: Any, label: str) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise ModelError(f"unsupported operator {node.domain}.{op} in node {label!r}")
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise ModelError(f"unsupported operator {op} in node {label!r} (supported: MatMul, "
                             "Gemm, Add, Relu, Tanh, Sigmoid, Softmax, Flatten, Reshape, "
                             "Identity, Constant)")
        ins = [n for n in node.input]
        if not any(self._is_act(n) for n in ins) and op not in ("Constant",):
            if all(n in self.consts for n in ins if n):
                raise ModelError(f"{op} node {label!r} computes on constants only; fold it "
                                 "into the weights before export")
            raise ModelError(f"{op} node {label!r} does not read the network's activation")
        handler(node, label, {a.name: _attr(a) for a in node.attribute})

    def _op_Constant(self, node, label, attrs) -> None:
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in attrs:
                self.consts[node.output[0]] = np.asarray(attrs[key])
                return
        raise ModelError(f"Constant node {label!r}: unsupported attribute(s) {sorted(attrs)}")

    def _op_Identity(self, node, label, attrs) -> None:
        self._set_output(node, keep=True)

    def _op_Flatten(self, node, label, attrs) -> None:
        if attrs.get("axis", 1) != 1:
            raise ModelError(f"Flatten node {label!r}: only axis=1 keeps samples apart")
        if self.act.features < 0:
            self.act.features = math.prod(self.input_shape)
        self._set_output(node)

    def _op_Reshape(self, node, label, attrs) -> None:
        target = [int(v) for v in self._const(node.input[1], label, "Reshape").reshape(-1)]
        feats = self.act.features if self.act.features > 0 else math.prod(self.input_shape)
        if self.act.weight is not None:
            feats = self.act.weight.shape[0]
        ok = len(target) == 2 and target[0] in (0, -1) and target[1] in (feats, -1) and target != [-1, -1]
        if not ok:
            raise ModelError(f"Reshape node {label!r} to {target} changes how samples are laid "
                             f"out; only (batch, {feats}) is supported")
        if self.act.weight is None:
            self.act.features = feats
        self._set_output(node)

    def _op_MatMul(self, node, label, attrs) -> None:
        a, b = node.input
        if not self._is_act(a):
            raise ModelError(f"MatMul node {label!r}: only activation @ constant is supported")
        w = np.asarray(self._const(b, label, "MatMul"), np.float32)
        if w.ndim != 2:
            raise ModelError(f"MatMul node {label!r}: weight must be 2-D, got {w.shape}")
        self._linear(np.ascontiguousarray(w.T), None, label, "MatMul")
        self._set_output(node)

    def _op_Gemm(self, node, label, attrs) -> None:
        a, b = node.input[0], node.input[1]
        if not self._is_act(a) or attrs.get("transA", 0):
            raise ModelError(f"Gemm node {label!r}: only A = the activation, transA=0 is "
                             "supported")
        w = self._const(b, label, "Gemm")
        if w.ndim != 2:
            raise ModelError(f"Gemm node {label!r}: B must be 2-D, got {w.shape}")
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        # transB=1 (PyTorch's export) already stores (out, in): a weight in an external
        # file can then stay there until the deploy streams it.
        if not (attrs.get("transB", 0) and isinstance(w, FileMatrix) and alpha == 1.0):
            w = np.asarray(w, np.float32)
            w = np.ascontiguousarray(w if attrs.get("transB", 0) else w.T)
            if alpha != 1.0:
                w = w * np.float32(alpha)
        c = None
        if len(node.input) > 2 and node.input[2]:
            c = self._bias(self._const(node.input[2], label, "Gemm"), w.shape[0], label, "Gemm")
            if beta != 1.0:
                c = c * np.float32(beta)
        self._linear(w, c, label, "Gemm")
        self._set_output(node)

    def _linear(self, w_out_in: "np.ndarray | FileMatrix", bias: np.ndarray | None,
                label: str, op: str) -> None:
        self._close("identity")
        feats = self._flat(op, label)
        if w_out_in.shape[1] != feats:
            raise ModelError(f"{op} node {label!r}: shapes do not chain: the activation has "
                             f"{feats} features but the weight maps {w_out_in.shape[1]} inputs "
                             f"to {w_out_in.shape[0]}")
        self.act.weight = w_out_in
        self.act.bias = bias

    def _bias(self, c: np.ndarray, out: int, label: str, op: str) -> np.ndarray:
        c = np.asarray(c, np.float32)
        if c.size == 1:
            return np.full(out, float(c.reshape(-1)[0]), np.float32)
        if c.reshape(-1).shape == (out,) and (c.ndim == 1 or c.shape[0] == 1):
            return c.reshape(-1).copy()
        raise ModelError(f"{op} node {label!r}: bias of shape {c.shape} is not one value per "
                         f"output ({out})")

    def _op_Add(self, node, label, attrs) -> None:
        a, b = node.input
        if self._is_act(a) == self._is_act(b):
            raise ModelError(f"Add node {label!r}: only activation + constant is supported")
        const = self._const(b if self._is_act(a) else a, label, "Add")
        if self.act.weight is None:
            raise ModelError(f"Add node {label!r} adds to a value that is not the output of a "
                             "MatMul/Gemm; only a bias after a linear map is supported")
        c = self._bias(const, self.act.weight.shape[0], label, "Add")
        self.act.bias = c if self.act.bias is None else self.act.bias + c
        self._set_output(node)

    def _activation(self, node, label: str, name: str) -> None:
        if self.act.weight is not None:
            self._close(name)
        elif self.layers and self.layers[-1].activation == "identity":
            self.layers[-1].activation = name
        else:
            raise ModelError(f"{node.op_type} node {label!r} is not applied to the output of a "
                             "MatMul/Gemm (two activations in a row are not supported)")
        self._set_output(node)

    def _op_Relu(self, node, label, attrs) -> None:
        self._activation(node, label, "relu")

    def _op_Tanh(self, node, label, attrs) -> None:
        self._activation(node, label, "tanh")

    def _op_Sigmoid(self, node, label, attrs) -> None:
        self._activation(node, label, "sigmoid")

    def _op_Softmax(self, node, label, attrs) -> None:
        if attrs.get("axis", -1) not in (1, -1):
            raise ModelError(f"Softmax node {label!r}: only the feature axis (1 or -1) is "
                             "supported")
        self._activation(node, label, "softmax")


def _attr(a: Any) -> Any:
    from onnx import helper, numpy_helper

    value = helper.get_attribute_value(a)
    if hasattr(value, "data_type"):  # a TensorProto
        return numpy_helper.to_array(value)
    return list(value) if isinstance(value, (list, tuple)) else value


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
