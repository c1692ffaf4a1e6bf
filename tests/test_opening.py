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


async def test_a_tampered_record_opened_off_the_loop_fails_and_gives_its_budget_back():
    sender, receiver = ciphers()
    budget = ByteBudget(1 << 30)
    r = Reassembler(budget=budget)
    frames = _frames(sender, bytes(OFF_LOOP_MESSAGE + 1))
    fill = r.admit_sealed(frames[0], receiver)
    assert opens_off_loop(fill)
    await open_records(fill)
    assert r.complete(fill) is None
    bad = bytearray(frames[1])
    bad[5 * 65_535 + 9] ^= 1                         # a byte of the sixth record
    fill = r.admit_sealed(bad, receiver)
    with pytest.raises(FrameError, match="authentication"):
        await open_records(fill)
    r.abandon(fill)
    r.discard()
    assert r.buffered == 0 and budget.used == 0


async def test_frames_opened_off_the_loop_one_by_one_deliver_the_message_in_order():
    sender, receiver = ciphers()
    r = Reassembler()
    payload = np.random.default_rng(1).integers(0, 256, 2 * OFF_LOOP_MESSAGE,
                                                dtype=np.uint8).tobytes()
    frames = _frames(sender, payload)
    out = None
    for frame in frames:
        fill = r.admit_sealed(frame, receiver)
        await open_records(fill)
        out = r.complete(fill)
    assert bytes(out) == payload
    with pytest.raises(FrameError, match="authentication"):
        r.admit_sealed(frames[1], receiver)          # replayed: its nonce is behind
