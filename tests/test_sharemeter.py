"""The peer reports its compute time (issue 13, oneshot3): a share's round trip splits into
this node's hand-over, the path and the peer's compute; the reply type is checked on the
wire; the split counts this node's sealing before its own share."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.work.oneshotsplit import (MIN_SPLIT_GAIN, ShareCost, fixed_cost, handover_cost,
                                   local_with_peers, row_cost, transfer_split)
from node.work.sharemeter import ShareMeter, ShareTiming
from protocol.errors import DecodeError
from protocol.messages import decode_message, encode_message, to_wire
from protocol.rpc import Reply
from protocol.work import (MatmulOperand, MatmulShare, MatmulShareResult, StoreBlock, read_share_result,
                           share_result_wire)
from tests.replying_session import FakeSession
from tests.test_oneshot_share import holder  # noqa: F401  (the fixture: a small holder)

MIB = 1 << 20
N = 2048


def timing(compute: float | None, total: float = 0.5, handover: float = 0.05,
           sent: int = 24 * MIB, reply: int = 8 * MIB, rtt: float = 0.001,
           flops: float = 8e9) -> ShareTiming:
    return ShareTiming(flops, sent, reply, handover, total, compute, rtt)


# the meter --------------------------------------------------------------------------------

def test_the_peers_own_compute_figure_splits_the_round_trip():
    meter = ShareMeter()
    meter.record_share("p", "", timing(compute=0.2), now=0.0)
    assert meter.speed("p", "", now=0.0) == pytest.approx(8e9 / 0.2 / 1e9)   # 40 GFLOP/s
    # the path: both directions' bytes over what was not compute (less one RTT)
    assert meter.link_bps("p", now=0.0) == pytest.approx(32 * MIB / (0.5 - 0.2 - 0.001))
    # this node's hand-over: the operands over the time until they were on the link
    assert meter.handover_bps("p", now=0.0) == pytest.approx(24 * MIB / 0.05)


def test_link_and_compute_come_apart_when_the_link_slows():
    """The estimate it replaces charged a slower path to the peer's compute: the same
    compute with twice the path time read as a slower peer. The peer's figure does not."""
    fast, slow = ShareMeter(), ShareMeter()
    fast.record_share("p", "", timing(compute=0.2, total=0.4), now=0.0)
    slow.record_share("p", "", timing(compute=0.2, total=0.6), now=0.0)
    assert fast.speed("p", "", now=0.0) == slow.speed("p", "", now=0.0)
    assert slow.link_bps("p", now=0.0) < fast.link_bps("p", now=0.0) / 1.9
    old_fast, old_slow = ShareMeter(), ShareMeter()       # a peer that sends no figure
    old_fast.record_share("p", "", timing(None, total=0.4), now=0.0)
    old_slow.record_share("p", "", timing(None, total=0.6), now=0.0)
    assert old_slow.speed("p", "", now=0.0) < old_fast.speed("p", "", now=0.0)


def test_an_older_peer_without_a_figure_is_split_the_old_way():
    meter = ShareMeter()
    meter.record_share("p", "", timing(None, total=0.5, handover=0.05), now=0.0)
    link = 24 * MIB / 0.05                                 # the hand-over stands for it
    assert meter.link_bps("p", now=0.0) == pytest.approx(link)
    compute = 0.5 - 0.05 - 8 * MIB / link - 0.001
    assert meter.speed("p", "", now=0.0) == pytest.approx(8e9 / compute / 1e9)


def test_a_figure_past_the_round_trip_is_capped_and_the_path_floored():
    meter = ShareMeter()
    meter.record_share("p", "", timing(compute=5.0, total=0.5), now=0.0)   # a peer's lie
    assert meter.speed("p", "", now=0.0) == pytest.approx(8e9 / 0.5 / 1e9)
    assert math.isfinite(meter.link_bps("p", now=0.0)) and meter.link_bps("p", now=0.0) > 0
    boast = ShareMeter()
    boast.record_share("p", "", timing(compute=1e-9, total=0.5), now=0.0)  # "no time at all"
    assert boast.speed("p", "", now=0.0) == pytest.approx(8e9 / (0.01 * 0.5) / 1e9)
    empty = ShareMeter()
    empty.record_share("p", "", timing(compute=0.1, total=0.0), now=0.0)   # no time at all
    assert empty.speed("p", "", now=0.0) is None and empty.link_bps("p", now=0.0) is None


def test_hand_over_rates_smooth_age_out_and_leave_with_their_node():
    meter = ShareMeter(max_age_s=60.0)
    meter.record_handover("p", 100 * MIB, 1.0, now=0.0)
    meter.record_handover("p", 300 * MIB, 1.0, now=1.0)
    assert meter.handover_bps("p", now=1.0) == pytest.approx(200 * MIB)
    assert meter.handover_bps("p", now=100.0) is None
    meter.record_handover("q", 1 * MIB, 1.0, now=0.0)
    meter.forget({"p"})
    assert meter.handover_bps("q", now=0.0) is None and meter.handover_bps("p", now=1.0)


# the reply on the wire --------------------------------------------------------------------

def through_the_wire(value):
    """A Reply carrying ``value``, encoded and decoded as a session does."""
    payload = b"".join(bytes(p) for p in encode_message(Reply(7, value)))
    return decode_message(payload).value


def test_the_share_result_round_trips_with_its_compute_time():
    y = np.arange(12, dtype=np.float32).reshape(3, 4)
    got, compute = read_share_result(through_the_wire(share_result_wire(y, 0.125)))
    np.testing.assert_array_equal(got, y)
    assert compute == 0.125


def test_a_bare_array_from_an_older_peer_has_no_compute_time():
    y = np.ones((2, 2), np.float32)
    got, compute = read_share_result(through_the_wire(y))
    np.testing.assert_array_equal(got, y)
    assert compute is None


def _wire(**change):
    value = share_result_wire(np.ones((2, 2), np.float32), 0.1)
    value.update(change)
    return {k: v for k, v in value.items() if v is not ...}


@pytest.mark.parametrize("value, match", [
    (_wire(compute_s=-0.5), "not a time"),
    (_wire(compute_s=float("nan")), "not a time"),
    (_wire(compute_s=float("inf")), "not a time"),
    (_wire(compute_s="fast"), "compute_s"),
    (_wire(compute_s=...), "missing field"),
    (_wire(y=[1.0, 2.0]), "y"),
    (_wire(extra=1), "unknown field"),
    (_wire(t="work.no_such"), "unknown message"),
    (to_wire(StoreBlock(1, "w", 0, 0, np.ones((1, 1), np.float32), None, 0)), "answered with"),
])
def test_a_malformed_share_result_is_the_peers_error(value, match):
    with pytest.raises(DecodeError, match=match):
        read_share_result(through_the_wire(value))


# the peer's side --------------------------------------------------------------------------


def test_a_peer_answers_a_share_with_its_rows_and_its_compute_time(holder):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((256, 64)).astype(np.float32)
    b = rng.standard_normal((64, 32)).astype(np.float32)
    session = FakeSession()
    asyncio.run(holder.handle(session, MatmulShare(3, "job", a, b, None, 1, 0)))
    rid, value, error = session.replies[-1]
    assert rid == 3 and error is None
    y, compute = read_share_result(through_the_wire(value))
    np.testing.assert_allclose(y, a @ b, rtol=1e-5, atol=1e-5)   # row chunks: BLAS order
    assert 0 < compute < 10


# the split with this node's hand-over ----------------------------------------------------

def me(gflops: float = 100.0) -> ShareCost:
    return ShareCost("me", gflops, local=True)


def peer(handover: float, name: str = "p", gflops: float = 100.0, link: float = 1e13) -> ShareCost:
    return ShareCost(name, gflops, link, 0.0, handover_bps=handover)


def test_sealing_before_this_nodes_share_moves_rows_to_the_peer():
    """This node starts its own share only once the peer's operands are handed over, so a
    slower hand-over delays it: the peer gets more rows, not fewer, as long as it pays."""
    free = dict(transfer_split(N, N, N, [me(), peer(0.0)]).rows)
    slow = dict(transfer_split(N, N, N, [me(), peer(1e9)]).rows)
    slower = dict(transfer_split(N, N, N, [me(), peer(3e8)]).rows)
    assert free["p"] < slow["p"] < slower["p"]
    assert sum(slower.values()) == N


def test_the_finish_times_with_a_hand_over_are_equal_and_as_predicted():
    nodes = [me(), peer(1e9, link=4e8), ShareCost("q", 60.0, 1e9, 0.002, handover_bps=8e8)]
    split = transfer_split(N, N, N, nodes)
    got = dict(split.rows)
    assert set(got) == {"me", "p", "q"}
    local = (handover_cost(nodes[1], got["p"], N, N) + handover_cost(nodes[2], got["q"], N, N)
             + got["me"] * row_cost(nodes[0], N, N))
    assert split.predicted_s["me"] == pytest.approx(local)
    for c in nodes[1:]:
        assert split.predicted_s[c.node_id] == pytest.approx(
            fixed_cost(c, N, N) + got[c.node_id] * row_cost(c, N, N))
    one_row = max(row_cost(c, N, N) for c in nodes) + 2 * N * 4 / 8e8
    times = split.predicted_s.values()
    assert max(times) - min(times) <= 2 * one_row


def test_a_peer_share_that_would_only_delay_this_node_is_not_given():
    # handing B over alone (16 MiB at 50 MB/s, 0.34 s) is longer than this node's whole job
    split = transfer_split(N, N, N, [me(), peer(50e6)])
    assert split.rows == (("me", N),)


def test_a_hand_over_rate_that_makes_no_sense_is_refused():
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="hand-over"):
            transfer_split(N, N, N, [me(), peer(bad)])


@settings(deadline=None)
@given(m=st.integers(1, 4096), k=st.integers(1, 2048), n=st.integers(1, 2048),
       unit=st.sampled_from([1, 64]), local=st.floats(0.1, 1e3),
       peers=st.lists(st.tuples(st.floats(0.1, 1e3), st.floats(1e6, 1e12),
                                st.floats(0, 0.01), st.floats(1e6, 1e12),
                                st.integers(1, 8)), max_size=4),
       delay=st.sampled_from([1.0, 0.5, 0.25]),
       beside=st.one_of(st.just(0.0), st.floats(0.1, 1e3)))
def test_the_chosen_split_is_never_predicted_slower_than_keeping_the_job(m, k, n, unit, local,
                                                                          peers, delay, beside):
    nodes = [ShareCost("me", local, local=True, alongside_gflops=beside)] + [ShareCost(f"p{i}", g, b, lat, handover_bps=h, chunks=c)
                           for i, (g, b, lat, h, c) in enumerate(peers)]
    split = transfer_split(m, k, n, nodes, unit=unit, handover_delay=delay)
    alone = m * row_cost(nodes[0], k, n)
    # rounding to whole units moves at most one unit per node onto another
    slack = unit * max(row_cost(c, k, n) + (k * 4 / c.handover_bps if c.handover_bps else 0)
                       for c in [*nodes, local_with_peers(nodes[0])]) * len(nodes)
    assert max(split.predicted_s.values()) <= alone + slack + 1e-12
    if len(split.rows) > 1:         # a split is kept only when it clearly pays
        assert max(split.predicted_s.values()) <= alone * (1 - MIN_SPLIT_GAIN) + slack + 1e-12


# the coordinator's side: _chunks_on feeds the meter from the replies -----------------------

class _PeerSession:
    """A session whose peer holds the operand (True) and answers each chunk with
    ``value(msg)`` after it was handed over."""

    def __init__(self, value):
        self.value, self.sent_msgs, self._rid = value, [], 0

    def next_rid(self) -> int:
        self._rid += 1
        return self._rid

    async def request(self, msg, timeout, sent=None):
        self.sent_msgs.append(msg)
        sent.set_result(None)
        await asyncio.sleep(0.02)           # the peer computes: longer than its 4 ms figure
        return True if isinstance(msg, MatmulOperand) else self.value(msg)


def _coordinator(value):
    from node.work.jobs import JobManager

    session = _PeerSession(value)

    class Mesh:
        sessions: dict = {}

        async def session(self, node):
            return session

    class Fake:
        node_id = "me"
        mesh = Mesh()
        share_meter = ShareMeter()
        _rtt_s = staticmethod(lambda node: 0.0)
        _measure_share = JobManager._measure_share

    async def chunks_on(fake, node, job, a, b, chunks):
        pieces: dict = {}
        await JobManager._chunks_on(fake, node, job, a, b, chunks, None, 1, pieces)
        return np.concatenate([pieces[r0] for r0, _ in chunks])
    return Fake(), chunks_on, session


def test_the_coordinator_takes_the_peers_compute_time_from_its_replies():
    a = np.ones((64, 32), np.float32)
    b = np.ones((32, 16), np.float32)
    flops = 2.0 * 64 * 32 * 16
    fake, chunks_on, session = _coordinator(
        lambda msg: share_result_wire(msg.a @ b, 0.002))
    part = asyncio.run(chunks_on(fake, "p", "job", a, b, [(0, 32), (32, 64)]))
    np.testing.assert_array_equal(part, a @ b)
    assert [type(m).__name__ for m in session.sent_msgs] == ["MatmulOperand", "MatmulRows",
                                                           "MatmulRows"]
    assert session.sent_msgs[0].chunks == 2 and session.sent_msgs[2].row_offset == 32
    assert fake.share_meter.speed("p", "") == pytest.approx(flops / 0.004 / 1e9)   # summed
    assert fake.share_meter.handover_bps("p") is not None


def test_a_reply_of_the_wrong_shape_or_form_fails_the_share():
    from protocol.errors import ProtocolError
    a = np.ones((8, 4), np.float32)
    b = np.ones((4, 2), np.float32)
    for value in (share_result_wire(np.ones((8, 3), np.float32), 0.1),   # wrong shape
                  {"t": "work.matmul_result", "y": a @ b, "compute_s": -1.0}):
        fake, chunks_on, _ = _coordinator(lambda msg, value=value: value)
        with pytest.raises(ProtocolError):
            asyncio.run(chunks_on(fake, "p", "job", a, b, [(0, 8)]))
        assert fake.share_meter.speed("p", "") is None     # nothing learnt from it
