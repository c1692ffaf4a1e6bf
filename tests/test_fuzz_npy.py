""".npy operands as the CLI loads them: broken files are one-line usage errors."""

from __future__ import annotations

import struct

from node.cli import UsageError, load_npy


def npy_bytes(header: str, body: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy file with this literal header text (padded as numpy pads it)."""
    h = header.encode("latin-1" if version != (3, 0) else "utf-8", errors="replace")
    size = struct.Struct("<H" if version == (1, 0) else "<I")
    pre = 8 + size.size
    h += b" " * ((64 - (pre + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + size.pack(len(h)) + h + body


def test_regression_empty_zip_and_huge_files_are_usage_errors(tmp_path):
    """Found by fuzzing: EOFError (empty file), BadZipFile (a .npz-looking file) and
    MemoryError (a header declaring 7 TiB) escaped load_npy as tracebacks."""
    cases = {"empty": b"", "zip": b"PK\x03\x04garbage",
             "huge": npy_bytes("{'descr': '<f8', 'fortran_order': False, "
                               "'shape': (1000000000000,), }", bytes(16))}
    for name, data in cases.items():
        path = tmp_path / f"{name}.npy"
        path.write_bytes(data)
        try:
            load_npy(str(path))
        except UsageError as exc:
            assert str(path) in str(exc)
        else:
            raise AssertionError(f"{name} loaded")
