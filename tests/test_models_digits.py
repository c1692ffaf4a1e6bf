"""Evidence (issue 9): the digits MLP (scikit-learn) exported to ONNX and to safetensors,
deployed from the files on a 3-node mesh and run inside it on every device preset.

Accuracies are printed (run with -s). In ``ideal`` mode the mesh equals onnxruntime to
float32 rounding; on every preset the two file formats give the same output (same weights,
same seeds), whichever format the user brought.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from compute.device import PRESETS
from compute.digits import load_digits_split, train_digits_mlp
from compute.mlp import float_forward
from compute.modelsave import save_onnx, save_safetensors
from node.client import Client

MIN_ACCURACY = {"ideal": 0.95, "rram": 0.85, "pcm": 0.80, "conservative": 0.0}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    layers = train_digits_mlp(seed=0)
    _, _, xte, yte = load_digits_split(0)
    return layers, save_onnx(layers, root / "digits.onnx"), \
        save_safetensors(layers, root / "digits.safetensors"), xte, yte


def test_digits_mlp_from_onnx_and_safetensors_on_every_preset(cluster, digits):
    layers, onnx_path, st_path, xte, yte = digits
    cluster.start(3)
    cluster.wait_converged(alive=2)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    oracle = sess.run(None, {"X": xte})[0]
    float_acc = float(np.mean(np.argmax(float_forward(layers, xte.T), axis=0) == yte))
    print(f"\nfloat accuracy {float_acc:.4f} on {len(yte)} test digits")
    with Client(cluster.nodes[1].socket) as c:
        for preset in PRESETS:
            c.deploy(f"onnx-{preset}", onnx_path, device=preset, seed=3)
            c.deploy(f"st-{preset}", st_path, device=preset, seed=3)
            y_onnx = c.infer(f"onnx-{preset}", xte, 9)
            y_st = c.infer(f"st-{preset}", xte, 9)
            acc = float(np.mean(np.argmax(y_onnx, axis=1) == yte))
            print(f"{preset:13} accuracy {acc:.4f} (onnx) "
                  f"{np.mean(np.argmax(y_st, axis=1) == yte):.4f} (safetensors)")
            np.testing.assert_array_equal(y_onnx, y_st)
            assert acc >= MIN_ACCURACY[preset]
            if preset == "ideal":
                assert np.abs(y_onnx - oracle).max() <= 1e-5
                assert acc == float_acc
