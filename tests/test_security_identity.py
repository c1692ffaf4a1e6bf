"""Node identity in the data dir, the cluster keyring, and the honest open mode."""

from __future__ import annotations

import logging

import pytest

from node.config import ConfigError, build_config
from node.net.identity import (IDENTITY_FILE, LEGACY_ID_FILE, load_identity, load_keyring,
                               new_cluster_key)
from protocol.identity import node_id_for


def test_the_identity_key_is_created_once_private_and_the_id_is_its_hash(tmp_path):
    first = load_identity(tmp_path)
    path = tmp_path / IDENTITY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert first.node_id == node_id_for(first.public_key)
    assert len(first.node_id) == 32 and int(first.node_id, 16) >= 0   # the old id format
    again = load_identity(tmp_path)
    assert again.node_id == first.node_id and again.public_key == first.public_key


def test_a_legacy_node_id_is_migrated_with_a_clear_log_line(tmp_path, caplog):
    (tmp_path / LEGACY_ID_FILE).write_text("0123456789abcdef0123456789abcdef\n")
    with caplog.at_level(logging.WARNING, logger="sedma.identity"):
        identity = load_identity(tmp_path)
    assert identity.node_id != "0123456789abcdef0123456789abcdef"
    assert "migrated data dir" in caplog.text and "01234567" in caplog.text
    assert not (tmp_path / LEGACY_ID_FILE).exists()
    assert (tmp_path / (LEGACY_ID_FILE + ".old")).read_text().startswith("0123456789abcdef")
    assert load_identity(tmp_path).node_id == identity.node_id      # migrated once


def test_a_corrupt_identity_key_is_a_clear_error_not_a_new_identity(tmp_path):
    (tmp_path / IDENTITY_FILE).write_bytes(b"not a key")
    with pytest.raises(ConfigError, match="not a readable identity key"):
        load_identity(tmp_path)


def test_a_keyring_reads_lines_and_files_in_order_without_duplicates(tmp_path):
    a, b, c = new_cluster_key(), new_cluster_key(), new_cluster_key()
    (tmp_path / "ring").write_bytes(a + b)
    (tmp_path / "more").write_bytes(b + c)
    ring = load_keyring([str(tmp_path / "ring"), str(tmp_path / "more")])
    assert ring == [a.strip(), b.strip(), c.strip()]
    (tmp_path / "bin").write_bytes(b"\xff\x00\n" * 8)           # a binary key: one key
    assert load_keyring(str(tmp_path / "bin")) == [b"\xff\x00\n" * 7 + b"\xff\x00"]
    (tmp_path / "short").write_text("tooshort\n")
    with pytest.raises(ConfigError, match="16 to"):
        load_keyring(str(tmp_path / "short"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_keyring(str(tmp_path / "missing"))
    assert load_keyring(None) == []


@pytest.mark.parametrize("listen", ["0.0.0.0:7946", "192.0.2.1:7946", "example.org:7946",
                                    "[::]:7946"])
def test_an_open_mesh_may_not_listen_beyond_loopback_unless_told(listen):
    with pytest.raises(ConfigError, match="without a cluster key"):
        build_config(None, {"listen": listen})
    assert build_config(None, {"listen": listen, "open": True}).open
    assert build_config(None, {"listen": listen, "cluster_key": "k"}).cluster_key == ["k"]


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:7946", "[::1]:7946"])
def test_loopback_needs_no_key(listen):
    assert build_config(None, {"listen": listen}).cluster_key == []
