"""Write a dense-layer list as the files users bring: ONNX (built with ``onnx.helper``) and
safetensors (with the layer list in its metadata).

Why: the demo, the benchmarks and the tests need real model files of trained networks
(scikit-learn's digits MLP) without a PyTorch or skl2onnx dependency. The ONNX graph is
what ``torch.onnx.export`` produces for ``nn.Linear`` stacks: ``Gemm`` with ``transB=1``
over (out, in) weights, then the activation.
"""

from __future__ import annotations

import json
from pathlib import Path

from compute.lazynumpy import np

from compute.mlp import Layer

_ONNX_ACT = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softmax": "Softmax"}


def save_onnx(layers: list[Layer], path: str | Path, opset: int = 17) -> Path:
    """``Gemm(transB=1)`` + activation per layer; input ``X`` is (batch, in)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev = [], [], "X"
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        inits += [numpy_helper.from_array(np.asarray(layer.weight, np.float32), f"fc{i}.weight"),
                  numpy_helper.from_array(np.asarray(layer.bias, np.float32), f"fc{i}.bias")]
        gemm_out = "Y" if last and layer.activation == "identity" else f"gemm{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"],
                                      [gemm_out], transB=1, name=f"fc{i}"))
        prev = gemm_out
        if layer.activation != "identity":
            out = "Y" if last else f"act{i}"
            attrs = {"axis": -1} if layer.activation == "softmax" else {}
            nodes.append(helper.make_node(_ONNX_ACT[layer.activation], [prev], [out],
                                          name=f"{layer.activation}{i}", **attrs))
            prev = out
    n_in = int(layers[0].weight.shape[1])
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT,
                                       ["batch", int(layers[-1].weight.shape[0])])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="sedma")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def save_safetensors(layers: list[Layer], path: str | Path) -> Path:
    """PyTorch-style ``fcI.weight`` (out, in) and ``fcI.bias`` plus ``sedma.layers``."""
    from safetensors.numpy import save_file

    tensors, spec = {}, []
    for i, layer in enumerate(layers):
        tensors[f"fc{i}.weight"] = np.ascontiguousarray(layer.weight, np.float32)
        tensors[f"fc{i}.bias"] = np.ascontiguousarray(layer.bias, np.float32)
        spec.append({"weight": f"fc{i}.weight", "bias": f"fc{i}.bias",
                     "activation": layer.activation})
    save_file(tensors, str(path), metadata={"sedma.layers": json.dumps(spec)})
    return Path(path)
