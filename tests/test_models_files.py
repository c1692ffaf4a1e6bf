"""Model files (issue 9): ONNX, safetensors and .npy lowered to dense layers.

ONNX graphs are built with onnx.helper and run by onnxruntime (the test-only oracle); the
float32 reference forward of the lowered model must equal it to float32 rounding. Bad files
fail with one line that names what is wrong.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compute.model import ModelError, reference_forward
from compute.modelfile import read_model

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def save_graph(path, nodes, inits, in_shape, out_name="Y", opset=17):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", *in_shape])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path


def onnxruntime_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


def assert_float32_equal(got, want):
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= 2e-6 * scale * 8, np.abs(got - want).max()


def torch_like_mlp(path, sizes=(20, 32, 16, 5)):
    """Gemm with transB=1 (weights (out, in)) and Relu, then Softmax, as PyTorch exports.

    Weights are scaled by 1/sqrt(fan-in), as trained networks are: with unit-variance
    weights the logits grow to hundreds and softmax amplifies float32 rounding (of any
    summation order, onnxruntime's included) past what "float32 rounding" means."""
    nodes, inits, prev = [], {}, "X"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        inits[f"w{i}"], inits[f"b{i}"] = rand(n_out, n_in) / np.float32(np.sqrt(n_in)), rand(n_out)
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}"], transB=1,
                                      name=f"fc{i}"))
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("Softmax" if last else "Relu", [f"g{i}"],
                                      ["Y" if last else f"h{i}"], axis=1) if last else
                     helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
        prev = f"h{i}"
    return save_graph(path, nodes, inits, [sizes[0]])


def test_pytorch_style_gemm_transb_graph_equals_onnxruntime(tmp_path):
    path = torch_like_mlp(tmp_path / "m.onnx")
    model = read_model(path)
    assert model.kind == "onnx" and model.layout == "rows"
    assert model.shapes() == [(32, 20), (16, 32), (5, 16)]
    assert [l.activation for l in model.layers] == ["relu", "relu", "softmax"]
    x = rand(7, 20)
    assert_float32_equal(reference_forward(model, x), onnxruntime_run(path, x))


def test_matmul_add_tanh_sigmoid_flatten_reshape_identity_constant(tmp_path):
    w0, b0, w1, w2 = rand(12, 8), rand(8), rand(8, 6), rand(6, 3)
    nodes = [
        helper.make_node("Flatten", ["X"], ["f"], axis=1, name="flat"),
        helper.make_node("MatMul", ["f", "w0"], ["m0"], name="mm0"),
        helper.make_node("Add", ["b0", "m0"], ["a0"], name="bias0"),          # const first
        helper.make_node("Tanh", ["a0"], ["t0"], name="tanh0"),
        helper.make_node("Constant", [], ["shape"], name="c",
                         value=numpy_helper.from_array(np.array([-1, 8], np.int64))),
        helper.make_node("Reshape", ["t0", "shape"], ["r0"], name="reshape"),
        helper.make_node("Identity", ["r0"], ["i0"], name="id"),
        helper.make_node("Gemm", ["i0", "w1"], ["g1"], alpha=0.5, name="gemm1"),  # no C
        helper.make_node("Sigmoid", ["g1"], ["s1"], name="sig"),
        helper.make_node("Gemm", ["s1", "w2", "c2"], ["Y"], alpha=2.0, beta=-0.25, name="gemm2"),
    ]
    path = save_graph(tmp_path / "m.onnx", nodes,
                      {"w0": w0, "b0": b0, "w1": w1, "w2": w2, "c2": rand(1, 3)}, [3, 4])
    model = read_model(path)
    assert model.input_shape == (3, 4)
    assert [l.activation for l in model.layers] == ["tanh", "sigmoid", "identity"]
    x = rand(5, 3, 4)
    assert_float32_equal(reference_forward(model, x), onnxruntime_run(path, x))


def test_two_linear_maps_in_a_row_become_two_layers(tmp_path):
    path = save_graph(tmp_path / "m.onnx", [
        helper.make_node("MatMul", ["X", "a"], ["h"]),
        helper.make_node("MatMul", ["h", "b"], ["Y"])], {"a": rand(4, 6), "b": rand(6, 2)}, [4])
    model = read_model(path)
    assert model.shapes() == [(6, 4), (2, 6)]
    x = rand(3, 4)
    assert_float32_equal(reference_forward(model, x), onnxruntime_run(path, x))


def test_unsupported_operator_fails_naming_operator_and_node(tmp_path):
    path = save_graph(tmp_path / "m.onnx", [
        helper.make_node("MatMul", ["X", "w"], ["h"], name="mm"),
        helper.make_node("LeakyRelu", ["h"], ["Y"], name="act_7")], {"w": rand(4, 3)}, [4])
    with pytest.raises(ModelError) as err:
        read_model(path)
    msg = str(err.value)
    assert "LeakyRelu" in msg and "act_7" in msg and "m.onnx" in msg and "\n" not in msg


def test_onnx_shapes_that_do_not_chain_are_refused(tmp_path):
    path = save_graph(tmp_path / "m.onnx", [
        helper.make_node("MatMul", ["X", "a"], ["h"], name="first"),
        helper.make_node("MatMul", ["h", "b"], ["Y"], name="second")],
        {"a": rand(4, 6), "b": rand(5, 2)}, [4])
    with pytest.raises(ModelError, match="second.*do not chain"):
        read_model(path)


def test_non_finite_weights_are_refused(tmp_path):
    w = rand(4, 3)
    w[2, 1] = np.nan
    path = save_graph(tmp_path / "m.onnx", [helper.make_node("MatMul", ["X", "w"], ["Y"])],
                      {"w": w}, [4])
    with pytest.raises(ModelError, match="NaN or infinity"):
        read_model(path)
    bad = rand(5, 5)
    bad[4, 4] = np.inf
    np.save(tmp_path / "w.npy", bad)
    with pytest.raises(ModelError, match="w.npy: layer 0: weights contain NaN"):
        read_model(tmp_path / "w.npy")


def test_corrupt_and_truncated_files_give_one_line(tmp_path):
    good = torch_like_mlp(tmp_path / "good.onnx")
    data = good.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00garbage" * 50)
    for name in ("trunc.onnx", "junk.onnx"):
        with pytest.raises(ModelError) as err:
            read_model(tmp_path / name)
        assert str(err.value).startswith(name) and "\n" not in str(err.value)
    np.save(tmp_path / "w.npy", rand(30, 30))
    raw = (tmp_path / "w.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:200])
    with pytest.raises(ModelError, match="t.npy: not a readable .npy"):
        read_model(tmp_path / "t.npy")
    save_safetensors(tmp_path / "s.safetensors")
    raw = (tmp_path / "s.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[: len(raw) - 10])
    with pytest.raises(ModelError, match="t.safetensors: not a readable safetensors"):
        read_model(tmp_path / "t.safetensors")
    with pytest.raises(ModelError, match="unknown model format"):
        read_model(tmp_path / "x.pt")


def save_safetensors(path, metadata=True, sizes=(10, 7, 3)):
    from safetensors.numpy import save_file

    tensors, spec = {}, []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        tensors[f"fc{i}.weight"], tensors[f"fc{i}.bias"] = rand(n_out, n_in), rand(n_out)
        spec.append({"weight": f"fc{i}.weight", "bias": f"fc{i}.bias",
                     "activation": "relu" if i < len(sizes) - 2 else "softmax"})
    save_file(tensors, str(path), metadata={"sedma.layers": json.dumps(spec)} if metadata else None)
    return tensors, spec


def torch_forward(tensors, spec, x):
    h = x
    for entry in spec:
        h = h @ tensors[entry["weight"]].T + tensors[entry["bias"]]
        if entry["activation"] == "relu":
            h = np.maximum(h, 0)
        else:
            e = np.exp(h - h.max(axis=1, keepdims=True))
            h = e / e.sum(axis=1, keepdims=True)
    return h


def test_safetensors_with_layer_list_in_metadata_or_beside(tmp_path):
    tensors, spec = save_safetensors(tmp_path / "a.safetensors")
    x = rand(4, 10)
    model = read_model(tmp_path / "a.safetensors")
    assert model.kind == "safetensors" and model.shapes() == [(7, 10), (3, 7)]
    assert_float32_equal(reference_forward(model, x), torch_forward(tensors, spec, x))

    tensors, spec = save_safetensors(tmp_path / "b.safetensors", metadata=False)
    with pytest.raises(ModelError, match="no layer list"):
        read_model(tmp_path / "b.safetensors")
    (tmp_path / "b.json").write_text(json.dumps({"layers": spec}))
    assert_float32_equal(reference_forward(read_model(tmp_path / "b.safetensors"), x),
                         torch_forward(tensors, spec, x))
    (tmp_path / "b.json").unlink()
    toml = "\n".join(f'[[layers]]\nweight = "{e["weight"]}"\nbias = "{e["bias"]}"\n'
                     f'activation = "{e["activation"]}"' for e in spec)
    (tmp_path / "b.toml").write_text(toml)
    assert read_model(tmp_path / "b.safetensors").shapes() == [(7, 10), (3, 7)]


def test_safetensors_bad_layer_lists(tmp_path):
    from safetensors.numpy import save_file

    t = {"a": rand(4, 3), "b": rand(5, 5)}
    cases = {
        "missing": ([{"weight": "nope"}], "no tensor named 'nope'"),
        "chain": ([{"weight": "a"}, {"weight": "b"}], "do not chain"),
        "act": ([{"weight": "a", "activation": "gelu"}], "unknown activation"),
        "empty": ([], "non-empty list"),
    }
    for name, (spec, msg) in cases.items():
        save_file(t, str(tmp_path / f"{name}.safetensors"), metadata={"sedma.layers": json.dumps(spec)})
        with pytest.raises(ModelError, match=msg):
            read_model(tmp_path / f"{name}.safetensors")


def test_npy_stays_a_single_column_matrix(tmp_path):
    w = rand(6, 4)
    np.save(tmp_path / "w.npy", w)
    model = read_model(tmp_path / "w.npy")
    assert model.kind == "matrix" and model.layout == "columns" and not model.has_bias
    x = rand(4, 3)
    np.testing.assert_array_equal(reference_forward(model, x), w @ x)
    with pytest.raises(ModelError, match=r"X has shape \(3, 4\)"):
        reference_forward(model, rand(3, 4))


def test_onnx_with_external_data_keeps_weights_in_their_file(tmp_path):
    from compute.model import FileMatrix

    src = torch_like_mlp(tmp_path / "src.onnx", sizes=(64, 96, 10))
    model = onnx.load(str(src))
    (tmp_path / "ext").mkdir()
    path = tmp_path / "ext" / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.bin", size_threshold=0)
    lowered = read_model(path)
    assert all(isinstance(l.weight, FileMatrix) for l in lowered.layers)
    x = rand(5, 64)
    assert_float32_equal(reference_forward(lowered, x), onnxruntime_run(path, x))
    data = (tmp_path / "ext" / "m.bin").read_bytes()
    (tmp_path / "ext" / "m.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="m.onnx: .*truncated"):
        read_model(path)
