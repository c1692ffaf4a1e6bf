"""An MLP served by the mesh: each layer's weights deployed as a resident matrix.

Only the weights live on the crossbars (that is all the arrays compute); biases and
activations are applied digitally by the caller between layers, so a forward pass sends
each layer's activations to the holders of that layer's blocks and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compute.mlp import Layer, apply_activation
from node.client import Client


@dataclass
class MeshMLP:
    """Layers deployed under ``name-L<i>``; call :meth:`deploy` once, then :meth:`logits`."""

    name: str
    layers: list[Layer]
    device: str | None = None

    def layer_name(self, i: int) -> str:
        return f"{self.name}-L{i}"

    def deploy(self, client: Client, replicas: int | None = None, seed: int = 0) -> list[dict]:
        """Program every layer on the mesh; returns the deploy job records."""
        return [client.deploy(self.layer_name(i), layer.weight, self.device, replicas, seed + i)
                for i, layer in enumerate(self.layers)]

    def logits(self, client: Client, x: np.ndarray, read_seed: int = 0) -> np.ndarray:
        """Forward pass of column inputs ``x`` (in, B); the last softmax is left out."""
        h = np.asarray(x, dtype=np.float32)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            z = client.infer(self.layer_name(i), h, read_seed + i) + layer.bias[:, None]
            h = z if i == last else apply_activation(layer.activation, z)
        return h

    def predict(self, client: Client, x: np.ndarray, read_seed: int = 0) -> np.ndarray:
        return np.argmax(self.logits(client, x, read_seed), axis=0)
