"""Specification of the wire format: frames, the array codec, messages and fragments."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.errors import DecodeError, FrameError
from protocol.framing import Reassembler, fragments
from protocol.messages import decode_message, encode_message, from_wire
from protocol.rpc import Reply
from protocol.wire import FrameDecoder, frame_header
from protocol.work import MatmulShare


def joined(parts) -> bytes:
    return b"".join(bytes(p) for p in parts)


def test_frames_split_across_arbitrary_reads_are_reassembled_in_order():
    stream = b"".join(frame_header(len(f)) + f for f in (b"a", b"", b"xyz" * 1000))
    dec = FrameDecoder()
    got = []
    for i in range(0, len(stream), 7):
        got += dec.feed(stream[i:i + 7])
    assert got == [b"a", b"", b"xyz" * 1000]
    assert dec.buffered == 0


def test_a_header_claiming_4_gib_is_rejected_before_any_payload_is_buffered():
    dec = FrameDecoder(max_frame=1 << 20)
    with pytest.raises(FrameError, match="claims 4294967295 bytes"):
        dec.feed(b"\xff\xff\xff\xff" + b"x" * 10)


def test_sender_refuses_to_frame_an_oversized_payload():
    with pytest.raises(FrameError):
        frame_header(2 << 20, max_frame=1 << 20)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "uint16", "bool", "float16"])
def test_arrays_round_trip_with_dtype_and_shape(dtype):
    arr = (np.arange(60).reshape(3, 4, 5) % 7).astype(dtype)
    out = codec.decode(joined(codec.encode({"x": arr, "n": 3})))
    assert out["n"] == 3
    assert out["x"].dtype == arr.dtype and out["x"].shape == arr.shape
    np.testing.assert_array_equal(out["x"], arr)


def test_decoded_arrays_are_views_into_the_received_buffer_not_copies():
    arr = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    buf = bytearray(joined(codec.encode({"w": arr})))
    out = codec.decode(buf)["w"]
    assert np.shares_memory(out, np.frombuffer(buf, dtype=np.uint8))


def test_non_contiguous_and_empty_arrays_are_sent_correctly():
    arr = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]
    out = codec.decode(joined(codec.encode([arr, np.zeros((0, 3), np.float32)])))
    np.testing.assert_array_equal(out[0], arr)
    assert out[1].shape == (0, 3)


def test_object_arrays_cannot_be_encoded():
    with pytest.raises(TypeError):
        codec.encode(np.array([object()], dtype=object))


def test_array_metadata_pointing_outside_the_message_is_rejected():
    payload = bytearray(joined(codec.encode(np.ones(4, np.float32))))
    with pytest.raises(DecodeError):
        codec.decode(payload[:-60])  # array is 16 bytes padded to 64: cut into it


def test_random_bytes_never_decode_into_a_message():
    rng = np.random.default_rng(1)
    for _ in range(300):
        blob = rng.integers(0, 256, rng.integers(0, 200), dtype=np.uint8).tobytes()
        with pytest.raises(DecodeError):
            decode_message(blob)


def test_valid_msgpack_with_wrong_field_types_names_the_field():
    with pytest.raises(DecodeError, match="rpc.reply.rid"):
        from_wire({"t": "rpc.reply", "rid": "seven"})
    with pytest.raises(DecodeError, match="unknown message type"):
        from_wire({"t": "no.such", "x": 1})
    with pytest.raises(DecodeError, match="missing field"):
        from_wire({"t": "work.infer_block", "rid": 1})
    with pytest.raises(DecodeError, match="unknown field"):
        from_wire({"t": "rpc.reply", "rid": 1, "sneaky": 2})


def test_typed_message_with_arrays_round_trips():
    a = np.ones((3, 2), np.float32)
    msg = MatmulShare(5, "job", a, a.T.copy(), "ideal", 1, 0)
    out = decode_message(joined(encode_message(msg)))
    assert isinstance(out, MatmulShare) and out.rid == 5 and out.device == "ideal"
    np.testing.assert_array_equal(out.b, a.T)
    assert decode_message(joined(encode_message(Reply(1, None, "boom")))).error == "boom"


def test_large_messages_are_fragmented_and_interleaved_streams_reassemble():
    big1, big2 = os.urandom(300_000), os.urandom(123_457)
    f1 = list(fragments(1, [big1], 65536))
    f2 = list(fragments(2, [big2], 65536))
    assert len(f1) == 5 and all(sum(map(len, f)) <= 65536 + 13 for f in f1)
    r = Reassembler()
    done = []
    for pair in zip(f1, f2 + [None] * 5):
        for frame in pair:
            if frame is not None:
                out = r.feed(joined(frame))
                if out is not None:
                    done.append(bytes(out))
    assert done == [big2, big1]
    assert r.in_flight == 0


def test_reassembler_enforces_message_and_stream_limits():
    r = Reassembler(max_message=1000, max_streams=2)
    first = joined(next(iter(fragments(1, [b"x" * 5000], 100))))
    with pytest.raises(FrameError, match="exceeds"):
        r.feed(first)
    r = Reassembler(max_message=10_000, max_streams=2)
    for sid in (1, 2):
        r.feed(joined(next(iter(fragments(sid, [b"x" * 5000], 100)))))
    with pytest.raises(FrameError, match="in flight"):
        r.feed(joined(next(iter(fragments(3, [b"x" * 5000], 100)))))


def test_fragment_of_unknown_stream_or_overrun_is_a_frame_error():
    r = Reassembler()
    frames = [joined(f) for f in fragments(9, [b"y" * 300], 100)]
    with pytest.raises(FrameError, match="never started"):
        r.feed(frames[1])
    r = Reassembler()
    r.feed(frames[0])
    r.feed(frames[1])
    r.feed(frames[2])
    with pytest.raises(FrameError):
        r.feed(frames[1])


async def test_a_message_being_written_when_the_link_dies_fails_its_sender():
    """The writer had taken the message off its queue: close() must still fail it."""
    import asyncio

    from nat.link import LinkClosed
    from node.net.session import Session
    from protocol.handshake import Hello
    from protocol.rpc import Bye
    from tests.test_handshake import MemoryLink

    gate = asyncio.Event()

    class StuckLink(MemoryLink):
        async def send(self, frame):
            await gate.wait()              # a full send buffer that never drains
            raise LinkClosed("peer vanished")

    link = StuckLink()
    session = Session(link, Hello(1, "aa", "a", [], b"", b""), Hello(1, "bb", "b", [], b"", b""),
                      initiator=True)

    async def ignore(_session, _msg):
        pass
    session.start(ignore)
    sending = asyncio.ensure_future(session.send(Bye("x")))
    await asyncio.sleep(0.05)              # the writer is now inside link.send
    await session.close("member is dead")
    with pytest.raises(LinkClosed):
        await asyncio.wait_for(sending, 2)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_declared_size_costs_no_memory_until_the_bytes_arrive():
    from protocol.framing import _HEAD, _TOTAL, FIRST

    r = Reassembler()
    before = _rss()
    for sid in range(1, 9):   # 8 messages each claiming 128 MiB, 1 KiB sent of each
        r.feed(_HEAD.pack(FIRST, sid) + _TOTAL.pack(128 << 20) + b"z" * 1024)
    grown = _rss() - before
    assert grown < 64 << 20, f"resident memory grew {grown} bytes for 8 KiB received"
    assert r.buffered == 8 * 1024
    r.discard()


def test_every_link_draws_on_one_daemon_budget_and_gets_it_back():
    from protocol.framing import ByteBudget

    budget = ByteBudget(8_000)
    links = [Reassembler(budget=budget) for _ in range(3)]
    msg = [joined(f) for f in fragments(1, [b"q" * 4000], 1000)]
    for r in links[:2]:
        for frame in msg[:-1]:
            assert r.feed(frame) is None
    assert budget.used == 2 * 3000
    with pytest.raises(FrameError, match="daemon"):   # a third link's share would overflow
        for frame in msg[:-1]:
            links[2].feed(frame)
    links[2].discard()                                   # a closed link returns its bytes
    assert budget.used == 2 * 3000
    assert bytes(links[0].feed(msg[-1])) == b"q" * 4000   # completion returns its bytes
    links[1].discard()
    assert budget.used == 0
    for frame in msg:                                     # and the budget serves again
        out = links[2].feed(frame)
    assert bytes(out) == b"q" * 4000 and budget.used == 0


def test_the_per_link_limit_counts_received_bytes():
    r = Reassembler(max_message=10_000, max_buffered=5_000)
    frames = [joined(f) for f in fragments(1, [b"w" * 8000], 1000)]
    for frame in frames[:5]:
        r.feed(frame)
    with pytest.raises(FrameError, match="link's buffer"):
        r.feed(frames[5])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=6),
       st.randoms(use_true_random=False), st.integers(0, 6))
def test_the_daemon_budget_always_equals_the_bytes_held_and_returns_to_zero(msgs, rnd, cut):
    from protocol.framing import ByteBudget

    budget = ByteBudget(1 << 30)
    links = [Reassembler(budget=budget) for _ in range(2)]
    queues = [[(i % 2, joined(f)) for f in fragments(i + 1, [m], 500)]
              for i, m in enumerate(msgs)]
    done = []
    steps = 0
    while any(queues):
        q = rnd.choice([q for q in queues if q])
        link, frame = q.pop(0)
        out = links[link].feed(frame)
        if out is not None:
            done.append(bytes(out))
        steps += 1
        assert budget.used == sum(r.buffered for r in links)
        if steps == cut:
            links[0].discard()                       # link 0 dies mid-way
            for q in queues:
                q[:] = [(ln, f) for ln, f in q if ln != 0]
            assert budget.used == links[1].buffered
    assert budget.used == 0
    assert set(done) <= set(msgs)
