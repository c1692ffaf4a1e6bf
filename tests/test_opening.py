"""A big received message's records are opened off the event loop (node.net.opening).

Its buffer's fresh pages are zeroed by the kernel on first touch, on whichever thread
decrypts into them: on the loop that was 78 % of a receiving peer's loop CPU in the 1 GiB
job of tests/test_loop_lag.py. These tests pin where each frame is opened, that frames
are still opened in order and delivered intact, and that a bad record opened off the loop
fails like one opened on it: nothing delivered, its budget given back.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from node.net.opening import OFF_LOOP_MESSAGE, open_records, opens_off_loop
from protocol.errors import FrameError
from protocol.framing import ByteBudget, Reassembler, fragments
from protocol.work import StageResult
from tests.noise_pair import ciphers
from tests.session_pair import session_pair


def _record_threads(cipher) -> list[str]:
    """Names of the threads that open ``cipher``'s further records, call by call."""
    seen: list[str] = []
    decrypt = cipher.decrypt_records_into

    def spy(records, dest):
        if records:                       # a frame's further records (not just its first)
            seen.append(threading.current_thread().name)
        return decrypt(records, dest)
    cipher.decrypt_records_into = spy
    return seen


async def test_a_big_message_is_opened_off_the_loop_and_a_small_one_on_it():
    async with session_pair() as (sa, sb):
        got: asyncio.Queue = asyncio.Queue()

        async def on_message(session, msg):
            await got.put(msg)
        sa.start(on_message)
        sb.start(on_message)
        threads = _record_threads(sb.link.cipher)
        big = np.arange(3 * OFF_LOOP_MESSAGE // 4, dtype=np.float32)    # 3x the threshold
        small = np.arange((1 << 20) // 4, dtype=np.float32)              # 1 MiB
        await sa.send(StageResult(0, "big", big))
        msg = await asyncio.wait_for(got.get(), 30)
        assert msg.request == "big" and np.array_equal(msg.y, big)       # in order, intact
        off_loop = list(threads)
        threads.clear()
        await sa.send(StageResult(0, "small", small))
        msg = await asyncio.wait_for(got.get(), 30)
        assert msg.request == "small" and np.array_equal(msg.y, small)
    assert len(off_loop) >= 12 and set(off_loop) == {"sedma-open_0"}    # every 1 MiB frame
    assert threads and set(threads) == {threading.current_thread().name}


def _frames(sender, payload: bytes) -> list[bytearray]:
    return [sender.seal_parts(frame) for frame in fragments(3, [payload], 1 << 20)]


async def _feed(r: Reassembler, frame, receiver):
    """What a session's reader does with one sealed frame."""
    with r.filling(frame, receiver) as fill:
        await open_records(fill)
    return r.complete(fill)


async def test_a_tampered_record_opened_off_the_loop_fails_and_gives_its_budget_back():
    sender, receiver = ciphers()
    budget = ByteBudget(1 << 30)
    r = Reassembler(budget=budget)
    frames = _frames(sender, bytes(OFF_LOOP_MESSAGE + 1))
    with r.filling(frames[0], receiver) as fill:
        assert opens_off_loop(fill)
        await open_records(fill)
    assert r.complete(fill) is None
    bad = bytearray(frames[1])
    bad[5 * 65_535 + 9] ^= 1                         # a byte of the sixth record
    with pytest.raises(FrameError, match="authentication"):
        await _feed(r, bad, receiver)
    assert r.buffered == OFF_LOOP_MESSAGE // 4       # the first frame's, not the bad one's
    r.discard()
    assert r.buffered == 0 and budget.used == 0


async def test_frames_opened_off_the_loop_one_by_one_deliver_the_message_in_order():
    sender, receiver = ciphers()
    r = Reassembler()
    payload = np.random.default_rng(1).integers(0, 256, 2 * OFF_LOOP_MESSAGE,
                                                dtype=np.uint8).tobytes()
    frames = _frames(sender, payload)
    out = [await _feed(r, frame, receiver) for frame in frames]
    assert all(o is None for o in out[:-1]) and bytes(out[-1]) == payload
    with pytest.raises(FrameError, match="authentication"):
        await _feed(r, frames[1], receiver)          # replayed: its nonce is behind


async def test_a_link_closed_while_a_frame_is_opened_off_the_loop_keeps_no_budget(caplog):
    """The session closes (its partial messages discarded) while the opener thread still
    works on a frame and the link's close is slow (an ICE link's is): the reader that
    wakes afterwards drops the frame and gives its bytes back, without an error."""
    from protocol.framing import PROCESS_BUDGET

    async with session_pair() as (sa, sb):
        sa.start(lambda session, msg: asyncio.sleep(0))
        sb.start(lambda session, msg: asyncio.sleep(0))
        opening, release = threading.Event(), threading.Event()
        decrypt = sb.link.cipher.decrypt_records_into

        def slow(records, dest):
            if records:
                opening.set()
                release.wait(10)                     # held until the close is under way
            return decrypt(records, dest)
        sb.link.cipher.decrypt_records_into = slow
        close_link = sb.link.close

        async def slow_close(reason="closed locally"):
            release.set()                            # the thread finishes during the close
            await asyncio.sleep(0.3)
            await close_link(reason)
        sb.link.close = slow_close
        before = PROCESS_BUDGET.used
        send = asyncio.ensure_future(sa.send(StageResult(0, "big", np.zeros(
            3 * OFF_LOOP_MESSAGE // 4, np.float32))))
        for _ in range(1000):
            if opening.is_set():
                break
            await asyncio.sleep(0.01)
        assert opening.is_set()
        await sb.close("member declared dead")
        await asyncio.wait([sb._reader], timeout=10)
        send.cancel()
        assert PROCESS_BUDGET.used == before
    assert "failed" not in caplog.text
