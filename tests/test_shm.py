"""The shared-memory local path (node/shm.py): operands and results of a local client
travel in sealed memfds, the socket carries only a handle; bad handles are refused with a
clear error; nothing outlives a client killed with -9.
"""

from __future__ import annotations

import errno
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from node import api, shm
from node.client import Client
from protocol import codec
from protocol.messages import encode_message
from tests.daemons import ROOT, sedma_env, wait_for
from tests.shm_channels import channel_pair

pytestmark = pytest.mark.skipif(not shm.available(), reason="needs Linux memfd sealing and /proc")


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def from_mapping(arr: np.ndarray) -> bool:
    """Whether ``arr``'s memory is a mapping (the shared-memory path), not socket bytes."""
    base = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


def memfd_links(pid: int) -> list[str]:
    """sedma memfds that process ``pid`` holds open or mapped."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if shm.MEMFD_NAME in target:
            found.append(target)
    with open(f"/proc/{pid}/maps") as f:
        found += [line for line in f if shm.MEMFD_NAME in line]
    return found


def sedma_dev_shm() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if "sedma" in n} if os.path.isdir("/dev/shm") else set()


# --- the memfd itself ---------------------------------------------------------------------

def test_outgoing_memfd_round_trips_and_is_sealed():
    parts = [b"abc", memoryview(np.arange(10, dtype=np.float32)).cast("B"), b"\0" * 24]
    with shm.Outgoing(parts) as out:
        data = shm.attach(os.getpid(), out.handle)
        assert bytes(data) == b"".join(bytes(p) for p in parts)
        with pytest.raises(OSError):                   # sealed: the sender cannot change it
            os.pwrite(out.fd, b"x", 0)
        with pytest.raises(OSError):
            os.ftruncate(out.fd, 1)
        with pytest.raises(TypeError):                 # read-only for the receiver
            data[0] = 1
    assert bytes(data[:3]) == b"abc"                   # the mapping outlives the descriptor


def test_copy_on_write_attach_gives_private_writable_bytes():
    with shm.Outgoing([b"hello"]) as out:
        mine = shm.attach(os.getpid(), out.handle, writable=True)
        mine[0] = ord("j")
        assert bytes(mine) == b"jello"
        assert bytes(shm.attach(os.getpid(), out.handle)) == b"hello"


def test_the_reaper_unmaps_a_big_mapping_only_once_no_view_uses_it():
    reaper = shm.Reaper()
    with shm.Outgoing([b"z" * 4096]) as out:
        view = shm.attach(os.getpid(), out.handle)
    arr = np.frombuffer(view, dtype=np.uint8)
    reaper.track(view.obj)
    del view
    assert reaper.reap() == 1 and arr[0] == ord("z")      # still in use: kept mapped
    mapping = arr.base.obj
    del arr
    assert reaper.reap() == 0 and mapping.closed             # unmapped by reap, not by GC


def test_codec_decode_split_matches_decode():
    msg = {"t": "x", "a": rand((33, 7), 1), "b": np.arange(5, dtype=np.int64), "s": "hi"}
    parts = codec.encode(msg)
    whole = codec.decode(b"".join(bytes(p) for p in parts))
    split = codec.decode_split(parts[0], b"".join(bytes(p) for p in parts[1:]))
    assert split["s"] == whole["s"] == "hi"
    np.testing.assert_array_equal(split["a"], msg["a"])
    np.testing.assert_array_equal(split["b"], msg["b"])


@pytest.mark.parametrize("case, words", [
    ("no such descriptor", "cannot be opened"),
    ("a plain file", "not a sedma memfd"),
    ("unsealed memfd", "not sealed"),
    ("wrong size", "the handle says"),
    ("too large", "over the"),
])
def test_bad_handles_are_refused_with_a_reason(case, words, tmp_path):
    keep = []
    if case == "no such descriptor":
        handle = shm.Handle(999_999, 8)
    elif case == "a plain file":
        f = open(tmp_path / "f", "wb+")
        f.write(b"x" * 8)
        f.flush()
        keep.append(f)
        handle = shm.Handle(f.fileno(), 8)
    elif case == "unsealed memfd":
        fd = os.memfd_create(shm.MEMFD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 8)
        keep.append(fd)
        handle = shm.Handle(fd, 8)
    elif case == "wrong size":
        out = shm.Outgoing([b"x" * 8])
        keep.append(out)
        handle = shm.Handle(out.fd, 16)
    else:
        handle = shm.Handle(3, shm.MAX_BYTES + 1)
    try:
        with pytest.raises(shm.ShmError, match=words):
            shm.attach(os.getpid(), handle)
    finally:
        for k in keep:
            k.close() if hasattr(k, "close") else os.close(k)


def test_channel_sends_only_large_data_and_answers_in_kind():
    before = set(memfd_links(os.getpid()))      # other tests' results may still be mapped
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        client = shm.Channel(a, send=True, follow=False, writable=True)
        daemon = shm.Channel(b, send=False, follow=True, writable=False)
        assert client.pid == daemon.pid == os.getpid()
        assert client.export([b"x" * 100]) is None                 # small: not in a memfd
        big = [b"y" * shm.MIN_BYTES]
        assert daemon.export(big) is None                          # not asked for it
        handle = client.export(big)
        assert handle is not None and handle.size == shm.MIN_BYTES
        assert bytes(daemon.receive(handle)[:3]) == b"yyy"
        daemon.note(True)
        assert daemon.export(big) is not None                      # now it answers in kind
        daemon.note(False)                                         # a plain request: plain
        assert daemon.export(big) is None
        client.note(False)
        assert client.send                                         # the client keeps offering
        client.release()
        daemon.release()
        client.close()                                             # arenas end with the
        daemon.close()                                             # connection
        assert set(memfd_links(os.getpid())) <= before           # nothing of ours left open
    finally:
        a.close()
        b.close()


# --- arenas: one reusable memfd per connection and direction --------------------------

def arena_inodes(pid: int) -> set[int]:
    """The distinct arenas process ``pid`` holds open or mapped (by inode: a Python mmap
    keeps a descriptor of its own, so one arena may show as two descriptors)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if shm.ARENA_NAME in os.readlink(f"/proc/{pid}/fd/{fd}"):
                found.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
        except OSError:
            continue
    with open(f"/proc/{pid}/maps") as f:
        found |= {int(line.split()[4]) for line in f if shm.ARENA_NAME in line}
    return found


@pytest.fixture
def pair():
    yield from channel_pair()


def data_of(arr: np.ndarray) -> list[memoryview]:
    return [memoryview(arr).cast("B")]


def test_an_arena_is_reused_mapped_once_and_read_into_a_private_copy(pair):
    client, daemon = pair
    handles, got = [], []
    for seed in range(3):
        x = rand((1024, 64), seed)                                 # 256 KiB each time
        handle = client.export(data_of(x))
        handles.append(handle)
        got.append(np.frombuffer(daemon.receive(handle), np.float32).reshape(x.shape))
        np.testing.assert_array_equal(got[-1], x)
        client.release()                                           # per exchange, as before
    assert len({h.fd for h in handles}) == 1                       # one memfd, reused
    assert daemon.arena_maps == 1                                  # mapped once
    client.export(data_of(np.zeros((1024, 64), np.float32)))       # the sender rewrites it:
    np.testing.assert_array_equal(got[-1], rand((1024, 64), 2))    # the copy is private
    assert not any(from_mapping(g) for g in got)


def test_a_bigger_message_gets_a_bigger_arena_and_a_huge_one_its_own_sealed_memfd(pair):
    client, daemon = pair
    small = client.export(data_of(rand((1024, 64), 1)))
    daemon.receive(small)
    big_x = rand((1024, 768), 2)                                   # 3 MiB: a bigger arena
    big = client.export(data_of(big_x))
    np.testing.assert_array_equal(np.frombuffer(daemon.receive(big), np.float32), big_x.ravel())
    assert daemon.arena_maps == 2
    assert arena_inodes(os.getpid()) == {os.fstat(big.fd).st_ino}  # the small one is gone
    huge = np.zeros(shm.ARENA_MAX // 4 + 16, np.float32)           # over ARENA_MAX
    handle = client.export(data_of(huge))
    assert os.readlink(f"/proc/self/fd/{handle.fd}").startswith(f"/memfd:{shm.MEMFD_NAME} ")
    view = daemon.receive(handle)
    assert isinstance(view.obj, mmap.mmap) and len(view) == huge.nbytes   # mapped, sealed


def test_the_daemon_answers_by_arena_only_a_client_that_sends_arenas(pair):
    client, daemon = pair
    old_client = shm.Outgoing([b"q" * shm.MIN_BYTES])              # a client from before
    daemon.receive(old_client.handle)
    old_client.close()
    daemon.note(True)
    handle = daemon.export([b"r" * shm.MIN_BYTES])
    assert not os.readlink(f"/proc/self/fd/{handle.fd}").startswith(f"/memfd:{shm.ARENA_NAME}")
    daemon.receive(client.export([b"s" * shm.MIN_BYTES]))          # this one sends arenas
    handle = daemon.export([b"t" * shm.MIN_BYTES])
    assert os.readlink(f"/proc/self/fd/{handle.fd}").startswith(f"/memfd:{shm.ARENA_NAME}")
    assert bytes(client.receive(handle)[:2]) == b"tt"


@pytest.mark.parametrize("case, words", [
    ("not sealed against resizing", "not sealed against resizing"),
    ("handle larger than the arena", "the handle says"),
])
def test_bad_arenas_are_refused_with_a_reason(pair, case, words):
    _, daemon = pair
    fd = os.memfd_create(shm.ARENA_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 4096)
        size = 4096
        if case == "handle larger than the arena":
            shm.fcntl.fcntl(fd, shm.fcntl.F_ADD_SEALS,
                            shm.fcntl.F_SEAL_SHRINK | shm.fcntl.F_SEAL_GROW)
            size = 8192
        with pytest.raises(shm.ShmError, match=words):
            daemon.receive(shm.Handle(fd, size))
    finally:
        os.close(fd)


# --- a real daemon ----------------------------------------------------------------------

@pytest.fixture
def daemon(cluster):
    cluster.start(1, extra=["--capacity", "10"])
    return cluster.nodes[0]


def test_infer_and_matmul_through_shared_memory_match_the_socket_path(daemon):
    w, x = rand((1024, 512), 1), rand((512, 96), 2)
    a, b = rand((600, 400), 3), rand((400, 300), 4)
    with Client(daemon.socket, use_shm=True) as c:
        c.deploy("w", w, device="ideal")
        y_shm = c.infer("w", x)
        r_shm = c.matmul(a, b, device="ideal")
        received = c._client._channel.received
    with Client(daemon.socket, use_shm=False) as c:
        y_sock = c.infer("w", x)
        r_sock = c.matmul(a, b, device="ideal")
    assert received >= 2                 # the results came by shared memory (the arena)
    assert not from_mapping(y_sock) and not from_mapping(r_sock)
    np.testing.assert_array_equal(y_shm, y_sock)
    np.testing.assert_array_equal(r_shm, r_sock)
    np.testing.assert_allclose(y_shm, w @ x, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(r_shm, a @ b, rtol=1e-4, atol=1e-3)
    y_shm[0, 0] = 7.0                                            # results are the caller's
    assert not memfd_links(daemon.proc.pid) or wait_for(
        lambda: not memfd_links(daemon.proc.pid), 10, "the daemon to release shared memory")


def test_a_bad_handle_gets_a_clear_error_and_the_daemon_keeps_serving(daemon):
    header = encode_message(api.InferRequest("w", np.zeros((4, 1), np.float32)))[0]
    frame = shm.Handle(987_654, 64).pack() + bytes(header)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        s.sendall(struct.pack(">I", api.SHM_FRAME | len(frame)) + frame)
        size = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
        reply = codec.decode(s.recv(size, socket.MSG_WAITALL))
    assert reply["ok"] is False
    assert reply["error"].startswith("bad request: shared-memory handle 987654")
    assert "cannot be opened" in reply["error"]
    with Client(daemon.socket) as c:
        assert c.status()["id"]


def test_an_oversized_shared_memory_frame_is_refused(daemon):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        s.sendall(struct.pack(">I", api.SHM_FRAME | (api.SHM_MAX_FRAME + 1)))
        size = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
        reply = codec.decode(s.recv(size, socket.MSG_WAITALL))
    assert reply["ok"] is False and "exceeds" in reply["error"]
    with Client(daemon.socket) as c:
        assert c.status()["id"]


CLIENT = textwrap.dedent("""
    import sys, numpy as np
    from node.client import Client
    w_name, mode = sys.argv[2], sys.argv[3]
    rng = np.random.default_rng(0)
    with Client(sys.argv[1], use_shm=True) as c:
        if mode == "submit":
            a = rng.standard_normal((2048, 2048), dtype=np.float32)
            print(c.submit_matmul(a, a, device="rram"), flush=True)
            import time; time.sleep(600)
        x = rng.standard_normal((1024, 128), dtype=np.float32)
        print("looping", flush=True)
        while True:
            c.infer(w_name, x)
""")


@pytest.mark.parametrize("mode", ["infer-loop", "submit"])
def test_kill_9_of_a_client_leaves_no_shared_memory_anywhere(daemon, mode):
    with Client(daemon.socket) as c:
        c.deploy("w", rand((1024, 1024), 5), device="ideal")
    before = sedma_dev_shm()
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(daemon.socket), "w", mode],
                            stdout=subprocess.PIPE, text=True, env=sedma_env(), cwd=ROOT)
    try:
        first = proc.stdout.readline().strip()
        assert first, "the client printed nothing"
        if mode == "infer-loop":
            time.sleep(1.0)                         # many requests in flight both ways
            assert memfd_links(proc.pid), "the client never used shared memory"
        else:                                       # the running job reads the client's memfd
            assert memfd_links(daemon.proc.pid), "the job's operands are not in shared memory"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if mode == "submit":                            # the job still completes, on its own
        with Client(daemon.socket) as c:
            assert c.wait(first, 120)["state"] == "done"
    try:
        wait_for(lambda: not memfd_links(daemon.proc.pid), 15,
                 "the daemon to release every shared-memory descriptor and mapping")
    except TimeoutError:
        pytest.fail(f"the daemon still holds {memfd_links(daemon.proc.pid)}")
    assert sedma_dev_shm() == before
    with Client(daemon.socket) as c:
        assert c.infer("w", rand((1024, 1), 6)).shape == (1024, 1)


def test_a_connection_keeps_one_arena_each_way_and_gives_both_back_at_its_end(daemon):
    w = rand((1024, 1024), 9)
    with Client(daemon.socket, use_shm=True) as c:
        c.deploy("w", w, device="ideal")
        for seed in range(4):                         # X and Y of 512 KiB each way
            x = rand((1024, 128), seed)
            np.testing.assert_allclose(c.infer("w", x), w @ x, rtol=1e-4, atol=1e-3)
        channel = c._client._channel
        assert channel.arena_maps == 1                # the daemon's arena, mapped once
        ours = {os.fstat(channel._arena.fd).st_ino}   # the client's own arena
        theirs = arena_inodes(daemon.proc.pid)
        assert len(theirs) == 2 and ours < theirs     # its own, and its map of ours
    wait_for(lambda: not arena_inodes(daemon.proc.pid), 10,
             "the daemon to release the connection's arenas")


def test_no_shm_env_keeps_the_socket_path(daemon, monkeypatch):
    monkeypatch.setenv("SEDMA_NO_SHM", "1")
    with Client(daemon.socket) as c:
        c.deploy("w", rand((512, 512), 7), device="ideal")
        y = c.infer("w", rand((512, 256), 8))
    assert not from_mapping(y)


def test_a_transient_ebusy_while_sealing_is_retried(monkeypatch):
    """The kernel may answer EBUSY to F_SEAL_WRITE while pages still hold transient
    references; the sender retries instead of failing the request."""
    real = shm.fcntl.fcntl
    calls = []

    def flaky(fd, cmd, arg=0):
        if cmd == shm.fcntl.F_ADD_SEALS:
            calls.append(cmd)
            if len(calls) < 3:
                raise OSError(errno.EBUSY, "Device or resource busy")
        return real(fd, cmd, arg)

    monkeypatch.setattr(shm.fcntl, "fcntl", flaky)
    monkeypatch.setattr(shm, "SEAL_RETRY_DELAY", 0.001)
    with shm.Outgoing([b"sealed"]) as out:
        assert len(calls) == 3
        assert real(out.fd, shm.fcntl.F_GET_SEALS) & shm.fcntl.F_SEAL_WRITE


def test_a_persistent_ebusy_while_sealing_is_still_an_error(monkeypatch):
    def busy(fd, cmd, arg=0):
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(shm.fcntl, "fcntl", busy)
    monkeypatch.setattr(shm, "SEAL_RETRY_DELAY", 0.001)
    with pytest.raises(OSError):
        shm.Outgoing([b"x"])


def test_an_arena_dropped_unclosed_is_released_by_its_finalizer():
    arena = shm.Arena.for_size(1 << 20)
    fd = arena.fd
    os.fstat(fd)                                   # open while the arena lives
    del arena                                      # a client object dropped without close()
    with pytest.raises(OSError) as err:
        os.fstat(fd)
    assert err.value.errno == errno.EBADF


def test_a_daemon_from_before_arenas_still_gets_per_message_memfds():
    """Such a daemon refuses an arena as "not sealed against changes": the client drops
    arenas only, keeping shared memory for the sealed memfds that daemon reads."""
    import asyncio
    from node.client import AsyncClient

    client = AsyncClient("/nonexistent.sock", use_shm=True)
    seen = []
    old = "bad request: shared-memory handle 7 of process 9 is not sealed against changes"

    async def exchange(request, progress):
        seen.append(client._arenas)
        ok = not client._arenas
        return api.Response(ok=ok, value="v" if ok else None, error=None if ok else old)

    async def close():
        pass

    client._exchange, client.close = exchange, close
    assert asyncio.run(client.call("req")) == "v"
    assert seen == [True, False] and client.use_shm    # retried without arenas, on shm
