"""Property-based fuzzing of ``.npy`` operands as the CLI loads them (node/cli.py load_npy).

Whatever a file holds — object arrays (pickles), strings, complex or structured dtypes,
a header declaring terabytes, a truncated header or body, a zip, plain garbage — loading
it gives a numeric array equal to what was saved, or a one-line :class:`UsageError`.
Never another exception, never an allocation the file cannot back. NaN/Inf load here
(a file may hold them) and are refused by the daemon with a one-line error
(tests/test_fuzz_daemon.py).
"""

from __future__ import annotations

import io
import struct

import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from node.cli import UsageError, load_npy

NUMERIC = ["<f4", ">f8", "<f2", "|i1", "<i4", ">i8", "|u1", "<u8"]
OTHER = ["|b1", "<c8", "<U3", "|S2", "<M8[s]", "<m8[s]"]


def write(tmp_path_factory, data: bytes) -> str:
    path = tmp_path_factory.mktemp("npy") / "x.npy"
    path.write_bytes(data)
    return str(path)


def saved(arr: np.ndarray, fortran: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(arr) if fortran and arr.ndim > 1 else arr, allow_pickle=True)
    return buf.getvalue()


def load_or_usage_error(path: str) -> np.ndarray | None:
    try:
        arr = load_npy(path)
    except UsageError as exc:
        assert "\n" not in str(exc).strip()
        return None
    assert isinstance(arr, np.ndarray) and arr.dtype.kind in "fiu"
    return arr


any_arrays = st.sampled_from(NUMERIC + OTHER).flatmap(lambda dt: hnp.arrays(
    np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)))


@given(any_arrays, st.booleans())
def test_saved_arrays_load_exactly_or_are_refused_as_not_numeric(tmp_path_factory, arr, fortran):
    got = load_or_usage_error(write(tmp_path_factory, saved(arr, fortran)))
    if arr.dtype.kind in "fiu":
        assert got is not None
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert np.array_equal(got, arr, equal_nan=arr.dtype.kind == "f")
    else:
        assert got is None


@given(st.lists(st.integers(0, 3) | st.none() | st.text(max_size=3), max_size=4))
def test_object_arrays_are_refused_without_unpickling(tmp_path_factory, items):
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    assert load_or_usage_error(write(tmp_path_factory, saved(arr))) is None


def npy_bytes(header: str, body: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy file with this literal header text (padded as numpy pads it)."""
    h = header.encode("latin-1" if version != (3, 0) else "utf-8", errors="replace")
    size = struct.Struct("<H" if version == (1, 0) else "<I")
    pre = 8 + size.size
    h += b" " * ((64 - (pre + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + size.pack(len(h)) + h + body


shapes = st.lists(st.integers(0, 8) | st.integers(0, 2**63) | st.integers(-3, -1)
                  | st.just(2**32), max_size=4).map(tuple)
headers = st.builds(
    lambda d, f, s: f"{{'descr': {d!r}, 'fortran_order': {f!r}, 'shape': {s!r}, }}",
    st.sampled_from(NUMERIC + OTHER + ["|O", "<f16", "xx", "", "|V4", "[('a', '<f4')]"])
    | st.text(max_size=5),
    st.booleans() | st.integers(0, 2), shapes)


@given(headers | st.text(max_size=60), st.binary(max_size=200),
       st.sampled_from([(1, 0), (2, 0), (3, 0)]))
def test_forged_headers_and_bodies_never_allocate_beyond_the_file(tmp_path_factory, header,
                                                                   body, version):
    """Huge declared shapes, negative or wrapping dimensions, unknown dtypes: refused."""
    data = npy_bytes(header, body, version)
    arr = load_or_usage_error(write(tmp_path_factory, data))
    if arr is not None:
        assert arr.nbytes <= len(body)


@given(any_arrays, st.data())
def test_truncated_files_are_refused(tmp_path_factory, arr, data):
    blob = saved(arr)
    cut = data.draw(st.integers(0, len(blob) - 1))
    got = load_or_usage_error(write(tmp_path_factory, blob[:cut]))
    # only a cut inside trailing bytes nobody needs (there are none) could still load
    assert got is None or got.nbytes == 0


@given(st.binary(max_size=300) | st.just(b"") | st.binary(max_size=40).map(
    lambda b: b"PK\x03\x04" + b) | st.binary(max_size=40).map(lambda b: b"\x93NUMPY" + b))
def test_arbitrary_bytes_are_refused(tmp_path_factory, data):
    load_or_usage_error(write(tmp_path_factory, data))


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
