"""A finished job's stored result handed to a local client as the file itself (issue 13).

The daemon writes a one-shot result once to its data dir; a local client maps that file's
data area (node/shm.py, result files) instead of having it read back and copied into a
memfd. The file must stay an ordinary .npy (it is what survives a crash), only a client
maps files it is named, and the socket path keeps working.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from node import api, shm
from node.client import Client
from node.work.jobs import _map_result, _save_npy_rows
from protocol import codec
from tests.daemons import wait_for
from tests.shm_channels import channel_pair

pytestmark = pytest.mark.skipif(not shm.available(), reason="needs Linux memfd sealing and /proc")


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_a_stored_result_is_a_plain_npy_with_its_data_on_a_page_and_its_tail_aligned(tmp_path):
    y = rand((7, 5), 1)                      # 140 bytes: not a multiple of the codec's 64
    path = tmp_path / "j.npy"
    _save_npy_rows(path, y.shape, [(3, y[3:]), (0, y[:3])])
    np.testing.assert_array_equal(np.load(path), y)          # numpy reads it as ever
    assert os.path.getsize(path) == shm.FILE_DATA_OFFSET + 192
    with open(path, "rb") as f:
        f.seek(shm.FILE_DATA_OFFSET)
        assert f.read(y.nbytes) == y.tobytes()


#: A result whose data area is exactly shm.ARENA_MAX (8 MiB): the smallest named as a file.
BIG = (2048, 1024)


def test_a_big_stored_result_is_mapped_a_small_one_read(tmp_path):
    big = rand(BIG, 14)
    assert big.nbytes == shm.ARENA_MAX
    _save_npy_rows(tmp_path / "big.npy", big.shape, [(0, big)])
    mapped = _map_result(tmp_path / "big.npy")
    assert isinstance(mapped, np.memmap) and mapped.offset == shm.FILE_DATA_OFFSET
    np.testing.assert_array_equal(mapped, big)
    small = big[:-1]                         # one row short of ARENA_MAX
    _save_npy_rows(tmp_path / "small.npy", small.shape, [(0, small)])
    got = _map_result(tmp_path / "small.npy")
    assert not isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, small)


def test_an_older_result_file_is_read_not_mapped(tmp_path):
    y = rand((8, 8), 2)
    path = tmp_path / "old.npy"
    np.save(path, y)                         # header of 128 bytes: data not on a page
    got = _map_result(path)
    assert not isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, y)


@pytest.fixture
def pair():
    yield from channel_pair(files=True)


def test_a_client_maps_a_named_result_file_copy_on_write(pair, tmp_path):
    client, daemon = pair
    y = rand((256, 300), 3)
    path = tmp_path / "r.npy"
    _save_npy_rows(path, y.shape, [(0, y)])
    daemon.note(True)                        # the request came through shared memory
    handle = daemon.export_file(path, y.nbytes)
    data = client.receive(handle)
    got = np.frombuffer(data, np.float32).reshape(y.shape)
    np.testing.assert_array_equal(got, y)
    got[0, 0] = 42.0                         # the client's own copy-on-write pages
    np.testing.assert_array_equal(np.load(path), y)
    daemon.release()                         # the daemon's descriptor closes; the map stays
    assert got[0, 0] == 42.0 and got[1, 1] == y[1, 1]


def test_the_daemon_never_maps_a_file_a_client_names(pair, tmp_path):
    client, daemon = pair
    path = tmp_path / "secret.npy"
    _save_npy_rows(path, (64, 64), [(0, rand((64, 64), 4))])
    client.note(True)
    handle = client.export_file(path, 64 * 64 * 4)
    with pytest.raises(shm.ShmError, match="not a sedma memfd"):
        daemon.receive(handle)


def test_a_file_shorter_than_its_handle_is_refused(pair, tmp_path):
    client, daemon = pair
    path = tmp_path / "short.npy"
    _save_npy_rows(path, (64, 64), [(0, rand((64, 64), 5))])
    daemon.note(True)
    with pytest.raises(shm.ShmError, match="data bytes"):
        daemon.export_file(path, 64 * 64 * 4 + 64)    # the sender checks ...
    fd = os.open(path, os.O_RDONLY)
    try:                                               # ... and so does the receiver
        with pytest.raises(shm.ShmError, match="shared result file holds"):
            client.receive(shm.Handle(fd, 64 * 64 * 4 + 64))
    finally:
        os.close(fd)


# --- a real daemon ----------------------------------------------------------------------

def result_maps(job_id: str) -> list[str]:
    """This process's mappings of job ``job_id``'s result file."""
    with open("/proc/self/maps") as f:
        return [line for line in f if f"{job_id}.npy" in line]


@pytest.fixture
def daemon(cluster):
    cluster.start(1, extra=["--capacity", "10"])
    return cluster.nodes[0]


def test_a_local_client_gets_the_stored_file_and_the_socket_the_same_bytes(daemon):
    a, b = rand((BIG[0], 64), 6), rand((64, BIG[1]), 7)
    with Client(daemon.socket, use_shm=True) as c:
        job = c.submit_matmul(a, b, device="ideal")
        assert c.wait(job)["state"] == "done"
        y_shm = c.result(job)
        assert result_maps(job), "the result is not a mapping of the stored file"
        again = c.result(job)                # asked twice: the same file, mapped again
    stored = daemon.data_dir / "results" / f"{job}.npy"
    with Client(daemon.socket, use_shm=False) as c:
        y_sock = c.result(job)
    np.testing.assert_array_equal(y_shm, y_sock)
    np.testing.assert_array_equal(again, y_sock)
    np.testing.assert_allclose(y_shm, a @ b, rtol=1e-4, atol=1e-3)
    y_shm[0, 0] = 7.0                        # the client's array is its own
    np.testing.assert_array_equal(np.load(stored), y_sock)
    assert wait_for(lambda: not [t for t in _fds(daemon.proc.pid) if job in t], 10,
                    "the daemon to close the result file it named")


def test_the_result_survives_a_kill_9_after_a_shared_read(daemon, cluster):
    a, b = rand((512, 256), 8), rand((256, 256), 9)
    with Client(daemon.socket, use_shm=True) as c:
        job = c.submit_matmul(a, b, device="ideal")
        c.wait(job)
        first = np.array(c.result(job))
    daemon.kill9()
    daemon.start()
    with Client(daemon.socket, use_shm=True) as c:
        np.testing.assert_array_equal(c.result(job), first)


def _fds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return out


def test_codec_alignment_is_what_the_file_pads_to():
    assert codec.ALIGN == 64 and shm.FILE_DATA_OFFSET % os.sysconf("SC_PAGE_SIZE") == 0


def test_a_shared_result_asked_on_the_socket_comes_as_bytes_on_the_socket(daemon):
    # a client asking for the file while its request came on the socket (no shm frame):
    # the daemon answers with the bytes, read as before
    a, b = rand((300, 200), 10), rand((200, 500), 11)
    with Client(daemon.socket, use_shm=True) as c:
        job = c.submit_matmul(a, b, device="ideal")
        c.wait(job)
    with Client(daemon.socket, use_shm=False) as c:
        y = c.call(api.SharedResultRequest(job))
    assert not result_maps(job)
    np.testing.assert_allclose(y, a @ b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("channel", ["none", "socket"])
def test_a_mapped_result_answered_on_the_socket_is_read_on_a_worker_thread(
        channel, pair, tmp_path, monkeypatch):
    """The socket path must not hand encode_message the np.memmap (its pages would be
    faulted in on the event loop while encoding): it gets an array read on the executor."""
    import asyncio
    import threading
    y = rand(BIG, 23)
    path = tmp_path / "sock.npy"
    _save_npy_rows(path, y.shape, [(0, y)])
    mapped = _map_result(path)
    assert isinstance(mapped, np.memmap)
    encoded, copied_on = [], []
    real_encode, real_array = api.encode_message, np.array

    def spy_encode(msg):
        encoded.append(type(msg.value))
        return real_encode(msg)

    def spy_array(obj, *args, **kw):
        if obj is mapped:
            copied_on.append(threading.current_thread() is threading.main_thread())
        return real_array(obj, *args, **kw)

    monkeypatch.setattr(api, "encode_message", spy_encode)
    monkeypatch.setattr(api.np, "array", spy_array)   # the namespace api uses
    _, daemon = pair                          # never noted: it answers on the socket
    out = _Collect()
    asyncio.run(api.write_message(out, api.Response(True, mapped),
                                  None if channel == "none" else daemon))
    assert encoded == [np.ndarray] and copied_on == [False]
    monkeypatch.undo()

    async def read():
        reader = asyncio.StreamReader()
        reader.feed_data(bytes(out.data))
        reader.feed_eof()
        return await api.read_message(reader)
    np.testing.assert_array_equal(asyncio.run(read()).value, y)


def test_a_daemon_from_before_result_files_still_gets_the_plain_result_request():
    """Such a daemon refuses ``api.result_shared`` as an unknown message type: the client
    remembers it and asks with ``api.result``, which that daemon knows."""
    import asyncio
    from node.client import AsyncClient

    client = AsyncClient("/nonexistent.sock", use_shm=True)
    seen = []
    old = "bad request: unknown message type 'api.result_shared'"

    async def exchange(request, progress):
        seen.append(type(request))
        ok = isinstance(request, api.ResultRequest)
        return api.Response(ok=ok, value="v" if ok else None, error=None if ok else old)

    async def close():
        pass

    client._exchange, client.close = exchange, close
    assert asyncio.run(client.result("j1")) == "v"
    assert asyncio.run(client.result("j2")) == "v"     # remembered: no second refusal
    assert seen == [api.SharedResultRequest, api.ResultRequest, api.ResultRequest]


def test_a_plain_result_request_carries_no_field_an_older_daemon_refuses():
    from protocol.messages import to_wire
    # exactly what a daemon from before result files accepts for api.result
    assert to_wire(api.ResultRequest("j")) == {"t": "api.result", "job_id": "j"}


def test_the_daemon_serves_both_result_messages(daemon):
    a, b = rand((300, 200), 12), rand((200, 500), 13)
    with Client(daemon.socket, use_shm=True) as c:
        job = c.submit_matmul(a, b, device="ideal")
        c.wait(job)
        plain = c.call(api.ResultRequest(job))
        shared = c.call(api.SharedResultRequest(job))
    np.testing.assert_allclose(plain, a @ b, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(shared, plain)


def test_a_small_result_comes_through_the_arena_not_as_its_file(daemon):
    a, b = rand((300, 200), 15), rand((200, 500), 16)     # 600 KB: under ARENA_MAX
    with Client(daemon.socket, use_shm=True) as c:
        job = c.submit_matmul(a, b, device="ideal")
        c.wait(job)
        before = c._client._channel.received
        y = c.result(job)
        assert c._client._channel.received == before + 1, "not sent by shared memory"
        assert not result_maps(job), "a small result was handed over as its file"
    np.testing.assert_allclose(y, a @ b, rtol=1e-4, atol=1e-3)


def test_a_result_file_maps_where_the_allocation_granularity_is_64k(pair, tmp_path,
                                                                    monkeypatch):
    """mmap refuses an offset that is not a multiple of ALLOCATIONGRANULARITY (64 KiB on
    some systems): the client maps from 0 and slices the header off."""
    real_mmap = shm.mmap.mmap

    def strict_mmap(fd, length, *args, offset=0, **kw):
        if offset % (64 << 10):
            raise OSError(22, "Invalid argument (offset not a multiple of 64 KiB)")
        return real_mmap(fd, length, *args, offset=offset, **kw)

    monkeypatch.setattr(shm.mmap, "mmap", strict_mmap)
    client, daemon = pair
    y = rand((64, 96), 17)
    path = tmp_path / "g.npy"
    _save_npy_rows(path, y.shape, [(0, y)])
    daemon.note(True)
    data = client.receive(daemon.export_file(path, y.nbytes))
    assert len(data) == y.nbytes
    np.testing.assert_array_equal(np.frombuffer(data, np.float32).reshape(y.shape), y)


def test_a_client_unmaps_a_big_result_it_dropped_at_its_next_call(daemon):
    a, b = rand((4096, 64), 18), rand((64, 1024), 19)     # 16 MiB: tracked by the reaper
    with Client(daemon.socket, use_shm=True) as c:
        job = c.submit_matmul(a, b, device="ideal")
        c.wait(job)
        y = c.result(job)
        assert y.nbytes >= shm.REAP_BYTES and result_maps(job)
        kept = c.result(job)                 # a result still in use stays mapped
        del y
        c.status()
        assert len(result_maps(job)) == 1, "the dropped result's mapping was not released"
        np.testing.assert_allclose(kept, a @ b, rtol=1e-4, atol=1e-3)
        del kept
    assert not result_maps(job), "closing the client did not release the last mapping"


class _Collect:
    """A stream writer that keeps what is written (to be fed to a reader)."""

    def __init__(self):
        self.data = bytearray()

    def write(self, b):
        self.data += b

    def writelines(self, parts):
        for p in parts:
            self.data += p

    async def drain(self):
        pass


def _send_stored(pair, msg):
    """Answer ``msg`` as the daemon does (through shared memory), read it as the client."""
    import asyncio
    client, daemon = pair
    daemon.note(True)                        # the request came through shared memory

    async def go():
        out = _Collect()
        await api.write_message(out, msg, daemon)
        reader = asyncio.StreamReader()
        reader.feed_data(bytes(out.data))
        reader.feed_eof()
        return await api.read_message(reader, client)
    return asyncio.run(go())


def test_a_result_file_removed_before_the_reply_is_sent_as_bytes(pair, tmp_path):
    y = rand(BIG, 20)
    path = tmp_path / "gone.npy"
    _save_npy_rows(path, y.shape, [(0, y)])
    mapped = _map_result(path)
    os.unlink(path)                          # retention removed it meanwhile
    reply = _send_stored(pair, api.Response(True, mapped))
    # only our own shared map of the file: the client's reply is not a private map of it
    assert reply.ok and [m.split()[1] for m in result_maps("gone")] == ["r--s"]
    np.testing.assert_array_equal(reply.value, y)


def test_a_result_file_changed_on_disk_is_a_clear_error_not_a_bad_request(pair, tmp_path):
    y = rand(BIG, 21)
    path = tmp_path / "changed.npy"
    _save_npy_rows(path, y.shape, [(0, y)])
    mapped = _map_result(path)
    _save_npy_rows(path, (4, 4), [(0, rand((4, 4), 22))])    # another file by that name
    reply = _send_stored(pair, api.Response(True, mapped))
    assert not reply.ok and "stored result is unreadable" in reply.error
    assert not reply.error.startswith("bad request") and str(tmp_path) not in reply.error
