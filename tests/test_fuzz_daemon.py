"""A real daemon fed fuzzed bytes on its peer port and its local socket, and fuzzed (but
well-typed) API requests with odd operands: it keeps serving, answers every request with a
result or a one-line user error (never "internal error"), leaks no task, leaves no
half-written file, and its mesh still computes exact results afterwards.

They run the profile's budget like every decoder (300 examples in CI, 10,000 under
``make fuzz``): one example costs a daemon a few milliseconds.
"""

from __future__ import annotations

import dataclasses
import socket
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from node import api
from node.client import Client, DaemonError
from protocol.framing import fragments
from protocol.handshake import Hello
from protocol.messages import encode_message
from tests.daemons import Cluster, wait_for
from protocol.messages import _hints
from tests.test_fuzz_codec import (forged_maps, safe_payload_or_none, strategy_for,
                                   valid_messages)

pytestmark = pytest.mark.slow
BUDGET = settings(suppress_health_check=list(HealthCheck))   # a module fixture is intended


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """Two daemons, joined and in steady state (first RTT sample taken)."""
    c = Cluster(tmp_path_factory.mktemp("fuzzd"))
    try:
        c.start(2, extra=["--capacity", "10"])
        c.wait_converged(alive=1)
        wait_for(lambda: c.nodes[0].peers()[0]["rtt_ms"] is not None, 30, "a first RTT sample")
        c.baseline_tasks = c.nodes[0].status()["tasks"]
        yield c
    finally:
        c.cleanup()


# ---------------------------------------------------------------------------- raw bytes

def wire(payload: bytes, sid: int = 0) -> bytes:
    """A payload as the peer port frames it: u32 length, fragment header, bytes."""
    out = b""
    for frame in fragments(sid, [payload]):
        body = b"".join(bytes(p) for p in frame)
        out += struct.pack(">I", len(body)) + body
    return out


def message_bytes(msg) -> bytes:
    return b"".join(bytes(p) for p in encode_message(msg))


hellos = st.builds(Hello, **{f.name: strategy_for(_hints(Hello)[f.name])
                             for f in dataclasses.fields(Hello)})
blobs = st.one_of(
    st.binary(max_size=2000),                                             # noise
    st.binary(max_size=300).map(lambda b: struct.pack(">I", len(b)) + b),  # framed noise
    st.binary(max_size=300).map(wire),                                    # fragments of noise
    hellos.map(lambda h: wire(message_bytes(h))),                         # a stranger's Hello
    hellos.flatmap(lambda h: st.binary(max_size=200).map(
        lambda junk: wire(message_bytes(h)) + junk)),                     # Hello, then garbage
    valid_messages().map(lambda m: wire(message_bytes(m))),               # any message, no handshake
    forged_maps().map(safe_payload_or_none).filter(bool).map(wire),       # forged typed maps
    st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n)))        # a bare length


def send_tcp(address: str, data: bytes) -> None:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        _send_and_drain(s, data)


def send_unix(path, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        _send_and_drain(s, data)


def _send_and_drain(s: socket.socket, data: bytes) -> None:
    """Send everything, close our side, read until the daemon closes or goes quiet."""
    s.settimeout(1)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    except (socket.timeout, ConnectionError):
        pass


@BUDGET
@given(st.lists(blobs, min_size=1, max_size=4))
def test_fuzzed_bytes_on_both_sockets_leave_the_daemon_serving(mesh, data):
    n1 = mesh.nodes[0]
    for blob in data:
        send_tcp(n1.address, blob)
        send_unix(n1.socket, blob)
    assert n1.status()["id"]


# ----------------------------------------------------------------------- API requests

odd_arrays = st.sampled_from(["<f4", ">f8", "<f2", "|i1", "<u8", ">i8", "|b1"]).flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                         max_side=6),
                          elements=hnp.from_dtype(np.dtype(dt), allow_nan=True,
                                                  allow_infinity=True)
                          if np.dtype(dt).kind == "f" else None))
names = st.sampled_from(["w", "m1", "a.b", "-x", ".hidden", "", "x" * 65, "../up", "a/b"]) \
    | st.text(max_size=8)
devices = st.none() | st.sampled_from(["ideal", "rram", "pcm", "nope", ""])
ints = st.integers(-2, 4) | st.integers(-2**63, 2**64 - 1)
floats = st.floats() | st.integers(-5, 5).map(float)
job_ids = st.sampled_from(["", "nope", "../../etc/passwd"]) | st.text(max_size=10) | st.just("$JOB")

def matrix(rows, cols, dtype="<f4"):
    """A 2-D operand of the right shape, finite or (rarely) holding NaN/Inf."""
    finite = hnp.arrays(np.dtype(dtype), (rows, cols), elements=st.floats(-1e3, 1e3, width=32))
    return st.one_of(finite, finite, finite, hnp.arrays(np.dtype(dtype), (rows, cols)))


sides = st.integers(1, 9)
POOL = ["w0", "w1", "w2"]           # deploy names that repeat, so infers find them
well_formed = st.one_of(
    st.tuples(sides, sides, sides).flatmap(lambda s: st.builds(
        api.SubmitRequest, st.just("matmul"), matrix(s[0], s[1]), matrix(s[1], s[2]),
        st.none() | st.sampled_from(["ideal", "rram"]), st.integers(0, 2**63 - 1))),
    sides.flatmap(lambda m: st.builds(
        api.DeployRequest, st.sampled_from(POOL), matrix(m, 4, "<f8"),
        st.none() | st.just("ideal"), st.none() | st.integers(1, 3), st.integers(0, 9))),
    sides.flatmap(lambda n: st.builds(
        api.InferRequest, st.sampled_from(POOL), matrix(4, n), st.none() | st.integers(0, 9))),
    st.builds(api.WaitRequest, st.just("$JOB"), st.floats(0, 0.5) | floats))

requests = st.one_of(
    well_formed, well_formed,
    st.builds(api.SubmitRequest, st.sampled_from(["matmul", "conv", ""]), odd_arrays, odd_arrays,
              devices, ints),
    st.builds(api.DeployRequest, names, odd_arrays, devices, st.none() | ints, ints),
    st.builds(api.InferRequest, names, odd_arrays, st.none() | ints),
    st.builds(api.WaitRequest, job_ids, floats),
    st.builds(api.JobRequest, job_ids), st.builds(api.ResultRequest, job_ids),
    st.builds(api.CancelRequest, job_ids),
    st.sampled_from([api.StatusRequest(), api.PeersRequest(), api.JobsRequest(),
                     api.DevicesRequest()]))


@BUDGET
@given(st.lists(requests, min_size=1, max_size=4))
def test_fuzzed_requests_get_a_result_or_a_one_line_user_error(mesh, reqs):
    n1 = mesh.nodes[0]
    submitted = []
    with Client(n1.socket) as c:
        jobs = c.jobs()
        for req in reqs:
            if getattr(req, "job_id", None) == "$JOB":   # a real job id, sometimes
                req.job_id = jobs[-1]["id"] if jobs else "none"
            try:
                value = c.call(req)
                event(f"{type(req).__name__}: accepted")
                if isinstance(req, api.SubmitRequest) and req.device in (None, "ideal"):
                    submitted.append((value["id"], req.a, req.b))
            except DaemonError as exc:
                text = str(exc)
                event(f"{type(req).__name__}: refused")
                assert "internal error" not in text, f"{type(req).__name__}: {text}"
                assert "\n" not in text.strip()
        for job_id, a, b in submitted:   # an accepted ideal matmul is exact
            info = c.wait(job_id, 60)
            if info["state"] == "cancelled" and any(isinstance(r, api.CancelRequest) for r in reqs):
                continue
            assert info["state"] == "done", info
            want = a.astype(np.float32) @ b.astype(np.float32)
            got = c.result(job_id)
            assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


def test_regression_a_nan_wait_timeout_is_a_user_error(mesh):
    """Found by fuzzing: WaitRequest(timeout=NaN) reached asyncio.wait_for and came back as
    an internal error (ValueError: cannot convert float NaN to integer)."""
    with Client(mesh.nodes[0].socket) as c:
        x = np.ones((2, 2), np.float32)
        job_id = c.submit_matmul(x, x)
        with pytest.raises(DaemonError) as err:
            c.call(api.WaitRequest(job_id, float("nan")))
        assert "internal error" not in str(err.value) and "NaN" in str(err.value)
        assert c.wait(job_id, 60)["state"] == "done"


def test_regression_an_empty_operand_is_refused_at_submit(mesh):
    """Found by fuzzing: A of shape (0, 5) was accepted, then the job failed with an internal
    error (ValueError from planning)."""
    with Client(mesh.nodes[0].socket) as c:
        with pytest.raises(DaemonError) as err:
            c.submit_matmul(np.ones((0, 5), np.float32), np.ones((5, 2), np.float32))
        assert "empty" in str(err.value) and "internal error" not in str(err.value)


# ------------------------------------------------------------------------- aftermath

def jobs_of(node) -> list[dict]:
    with Client(node.socket) as c:
        return c.jobs()


def test_after_the_fuzzing_the_mesh_is_whole_and_exact(mesh):
    n1, n2 = mesh.nodes
    # connection handlers and handshakes are bounded: the task count comes back
    wait_for(lambda: n1.status()["tasks"] <= mesh.baseline_tasks + 2, 30,
             f"n1's tasks to settle to {mesh.baseline_tasks} (+2)")
    # running jobs finish; no half-written file is left in either data dir
    wait_for(lambda: all(j["state"] != "running" for j in jobs_of(n1)), 60, "fuzzed jobs to finish")
    for node in mesh.nodes:
        leftovers = [p for p in node.data_dir.rglob("*.tmp")]
        assert not leftovers, leftovers
        assert node.proc.poll() is None
    mesh.wait_converged(alive=1)
    x = np.random.default_rng(5).standard_normal((50, 40)).astype(np.float32)
    with Client(n1.socket) as c:
        got = c.matmul(x, x.T)
    assert np.abs(got - x @ x.T).max() <= 1e-5 * np.abs(x @ x.T).max()
