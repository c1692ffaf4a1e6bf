"""An in-process daemon for tests that need to reach inside it (fault injection)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import AsyncIterator

from node.config import NodeConfig
from node.daemon import Daemon


@contextlib.asynccontextmanager
async def running_daemon(tmp_path: Path, name: str = "n1",
                         **overrides) -> AsyncIterator[Daemon]:
    """Start a daemon on loopback in this event loop; shut it down afterwards."""
    cfg = NodeConfig(listen="127.0.0.1:0", data_dir=str(tmp_path / name), name=name,
                     socket=str(tmp_path / f"{name}.sock"), capacity=10.0, workers=2,
                     shutdown_grace=1.0, **overrides).validate()
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.shutdown()
