"""Structured log lines: ``ts=... level=... logger=... node=... msg="..."``.

One line per event, key=value, so a person can read it and a machine can grep it.
"""

from __future__ import annotations

import logging
import sys
import time


class KeyValueFormatter(logging.Formatter):
    def __init__(self, node: str = "-") -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage().replace('"', "'")
        line = (f'ts={ts}.{int(record.msecs):03d}Z level={record.levelname} '
                f'logger={record.name} node={self.node} msg="{msg}"')
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def setup(node: str, level: str = "INFO") -> None:
    """Route every ``sedma.*`` logger to stderr with the key=value format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(node))
    root = logging.getLogger("sedma")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
