"""Who this node is (a persistent id in its data dir) and which cluster it may join."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from node.config import ConfigError

ID_FILE = "node_id"
MAX_KEY_BYTES = 4096


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory private to this user (mode 0700)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create data dir {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"data dir {path} is not writable")
    return path


def load_node_id(data_dir: Path) -> str:
    """The node's id, created once (atomically) and kept across restarts."""
    path = data_dir / ID_FILE
    if path.exists():
        text = path.read_text().strip()
        if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
            return text
        raise ConfigError(f"{path} does not hold a node id; remove it to get a new one")
    node_id = secrets.token_hex(16)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(node_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return node_id


def load_cluster_key(path: str | None) -> bytes | None:
    """The shared secret that admits nodes to the cluster (None: an open cluster)."""
    if not path:
        return None
    try:
        key = Path(path).expanduser().read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read cluster key {path}: {exc.strerror}") from None
    if not 16 <= len(key) <= MAX_KEY_BYTES:
        raise ConfigError(f"cluster key {path} must hold 16 to {MAX_KEY_BYTES} bytes "
                          "(e.g. `head -c 32 /dev/urandom | base64 > key`)")
    return key
