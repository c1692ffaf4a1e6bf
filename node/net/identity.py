"""Who this node is (an Ed25519 identity key in its data dir) and which cluster keys admit it.

The identity key is created once, on first start, as ``identity.key`` (PKCS#8 PEM, mode
0600, written to a temporary file, fsynced and renamed so a crash never leaves half a key);
the node id is the hash of its public key (:mod:`protocol.identity`). A data dir from
before identities held a random ``node_id`` that no key backs; it is migrated: the node
gets a key-derived id, the old file is kept as ``node_id.old`` and the change is logged
(peers see the old id leave and the new one join; replicas it held are repaired by the
mesh like those of any departed node).

Cluster keys form a keyring (memberlist's model): the first key is the one this node dials
with, every key is accepted from peers, so a mesh moves to a new key without downtime by
(1) adding the new key second everywhere, (2) moving it first, (3) dropping the old one.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.config import ConfigError
from protocol.identity import Identity

log = logging.getLogger("sedma.identity")

IDENTITY_FILE = "identity.key"
LEGACY_ID_FILE = "node_id"
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 4096
MAX_KEYS = 16


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory private to this user (mode 0700)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create data dir {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"data dir {path} is not writable")
    return path


def load_identity(data_dir: Path) -> Identity:
    """The node's identity key, created on first start (and migrating a legacy id)."""
    path = data_dir / IDENTITY_FILE
    if path.exists():
        return Identity(_read_private_key(path))
    identity = Identity.generate()
    write_private(path, identity.private_bytes())
    legacy = data_dir / LEGACY_ID_FILE
    if legacy.exists():
        old = legacy.read_text(errors="replace").strip()[:64]
        os.replace(legacy, legacy.with_name(LEGACY_ID_FILE + ".old"))
        log.warning("migrated data dir %s: node id %s was not bound to a key; this node is "
                    "now %s (hash of its new identity key %s); peers will see %s leave",
                    data_dir, old[:8], identity.node_id[:8], IDENTITY_FILE, old[:8])
    else:
        log.info("created identity key %s: node id %s", path, identity.node_id)
    return identity


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a readable identity key ({exc}); restore it from "
                          "a backup, or remove it to become a new node") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by others; fixing its mode to 0600", path)
        os.chmod(path, 0o600)
    return key


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file atomically, mode 0600 from its creation (never world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def new_cluster_key() -> bytes:
    """A fresh cluster key as written by ``sedma keygen``: 32 random bytes, base64."""
    return base64.b64encode(os.urandom(32)) + b"\n"


def load_keyring(paths: list[str] | str | None) -> list[bytes]:
    """The cluster keys, first the one to dial with ([] : an open cluster).

    Each file holds one key per line (text keys such as ``sedma keygen`` writes), or one
    binary key; several files add up, in order, duplicates dropped.
    """
    if not paths:
        return []
    if isinstance(paths, str):
        paths = [paths]
    keys: list[bytes] = []
    for path in paths:
        for key in _keys_in(path):
            if key not in keys:
                keys.append(key)
    if not keys:
        raise ConfigError(f"cluster key file(s) {', '.join(paths)} hold no key")
    if len(keys) > MAX_KEYS:
        raise ConfigError(f"at most {MAX_KEYS} cluster keys (got {len(keys)})")
    return keys


def _keys_in(path: str) -> list[bytes]:
    try:
        raw = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read cluster key {path}: {exc.strerror}") from None
    try:
        lines = raw.decode("ascii").split("\n")
        keys = [line.strip().encode() for line in lines if line.strip()]
    except UnicodeDecodeError:  # a binary key: the whole file
        keys = [raw.strip()]
    for key in keys:
        if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
            raise ConfigError(f"cluster key {path}: every key must hold {MIN_KEY_BYTES} to "
                              f"{MAX_KEY_BYTES} bytes (make one with `sedma keygen FILE`)")
    return keys
