"""What one-shot shares measured, for the transfer-aware split: each node's compute speed,
the rate of each peer share's path, and this node's rate of handing operands over.

Why a meter of its own and not the dual memory's peer speed: that one is a share's flops
over its whole round trip, transfer included, and the split (``node.work.oneshotsplit``)
needs the parts apart: moving B costs the same whatever the share, compute does not. A
peer reports its own compute seconds with its rows (``MatmulShareResult.compute_s``), so a
share's round trip splits without guessing: the peer's figure is its compute, the rest
(less one RTT) is the path — sealing here, the wire, opening and validating there, and the
rows back — over the bytes moved both ways; a share sent as B and row chunks overlaps the
two, and ``path_rate`` reads its round trip by the split's own model of that overlap. The
time until the operands were handed to the link is this node's own sealing CPU, which
delays its own share (computing alongside, by the split's ``handover_delay`` of it). A peer from before ``compute_s`` is split the old way: the hand-over
rate stands for the link and the compute is what is left of the round trip.

A measurement older than ``max_age_s`` no longer counts: the job manager then splits as it
would with nothing measured, which measures every node again.

Fed and read on the event loop only (one owner, no lock). Not persisted: a restarted node
starts from the capacity split and measures again within one job.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

ALPHA = 0.5           # weight of the newest share: jobs are few and machines change
#: A path time (round trip less the peer's compute and one RTT) below this part of the
#: round trip is taken as this part: clocks and a loaded loop can make the rest tiny.
MIN_PATH_SHARE = 0.02
#: Without the peer's figure, its compute is taken as at least this part of the round trip.
MIN_COMPUTE_SHARE = 0.05
#: A peer's own figure is taken as at least this part of the round trip: a faulty or lying
#: peer cannot make itself look arbitrarily fast (and be given every row of the next job).
MIN_REPORTED_SHARE = 0.01
MAX_AGE_S = 600.0
HOST_ENV = "SEDMA_HOST_ID"
NO_HOST = "none"
BOOT_HOST = "boot"           # SEDMA_HOST_ID=boot: the kernel's boot id names the host
BOOT_ID = "/proc/sys/kernel/random/boot_id"


@dataclass
class Measured:
    gflops: float
    at: float


@dataclass(frozen=True)
class ShareTiming:
    """What one peer share measured, as this node saw it (bytes, seconds)."""

    flops: float
    sent_bytes: int                  # the operands out: its rows of A and all of B
    reply_bytes: int                 # its rows of Y back
    handover_s: float                # until the operands were handed to the link
    total_s: float                   # the round trip: request sent to reply decoded
    peer_compute_s: float | None     # the peer's own figure; None from an older peer
    rtt_s: float = 0.0               # the link's round trip estimate
    chunks: int = 1                  # row chunks the operands went in (B first)
    fixed_bytes: int | None = None   # of sent_bytes, B's (whatever the rows); None: unknown


class ShareMeter:
    """Smoothed one-shot compute speed per (node, device), path and hand-over rates per
    node, each with the time of its last sample."""

    def __init__(self, max_age_s: float = MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self._speeds: dict[tuple[str, str], Measured] = {}
        self._links: dict[str, Measured] = {}     # bytes/s in Measured.gflops's place
        self._handover: dict[str, Measured] = {}  # likewise
        #: this node's speed while peers' shares ran beside its own (``alongside``)
        self._alongside: dict[tuple[str, str], Measured] = {}

    def record(self, node_id: str, device: str, flops: float, seconds: float,
               now: float | None = None, alongside: bool = False) -> None:
        """A share of ``flops`` computed on ``node_id`` in ``seconds`` (compute alone).
        ``alongside``: this node's own share, computed while peers' shares of the same
        job were in flight; kept apart (``speed_alongside``), since peers on the same
        cores slow it and a split must be priced at that speed, a whole job at the other."""
        if flops <= 0 or seconds <= 0:
            return
        now = time.monotonic() if now is None else now
        table = self._alongside if alongside else self._speeds
        speed = flops / seconds / 1e9
        old = table.get((node_id, device))
        if old is not None and now - old.at <= self.max_age_s:
            speed = (1 - ALPHA) * old.gflops + ALPHA * speed
        table[(node_id, device)] = Measured(speed, now)

    def speed(self, node_id: str, device: str, now: float | None = None) -> float | None:
        """The smoothed GFLOP/s, or None when never measured or measured too long ago."""
        now = time.monotonic() if now is None else now
        got = self._speeds.get((node_id, device))
        return got.gflops if got is not None and now - got.at <= self.max_age_s else None

    def speed_alongside(self, node_id: str, device: str,
                        now: float | None = None) -> float | None:
        """This node's smoothed GFLOP/s beside peers' shares, None when not fresh (an aged
        figure goes, so one split job in ``max_age_s`` measures it again)."""
        now = time.monotonic() if now is None else now
        got = self._alongside.get((node_id, device))
        return got.gflops if got is not None and now - got.at <= self.max_age_s else None

    def record_share(self, node_id: str, device: str, t: ShareTiming,
                     now: float | None = None) -> None:
        """Split one peer share's round trip into this node's hand-over, the path and the
        peer's compute, and keep all three (see the module's docstring)."""
        if t.total_s <= 0:
            return
        self.record_handover(node_id, t.sent_bytes, t.handover_s, now)
        if t.peer_compute_s is not None:
            compute = min(max(t.peer_compute_s, MIN_REPORTED_SHARE * t.total_s),
                          t.total_s)                        # never more than it waited
            link = path_rate(t, compute)
            if link is not None:
                self.record_link(node_id, t.sent_bytes + t.reply_bytes,
                                 (t.sent_bytes + t.reply_bytes) / link, now)
            self.record(node_id, device, t.flops, compute, now)
            return
        self.record_link(node_id, t.sent_bytes, t.handover_s, now)   # the older estimate
        link = self.link_bps(node_id, now)
        if link:
            compute = t.total_s - t.handover_s - t.reply_bytes / link - t.rtt_s
            self.record(node_id, device, t.flops,
                        max(compute, MIN_COMPUTE_SHARE * t.total_s), now)

    def record_link(self, node_id: str, nbytes: int, seconds: float,
                    now: float | None = None) -> None:
        """``nbytes`` went along the path of a share on ``node_id`` (out and back) in
        ``seconds`` of its round trip that were not the peer's compute. Kept here, not in
        the dual memory's ``link_bps`` (block copies, whose figure prices migrations)."""
        _smooth(self._links, node_id, nbytes, seconds, self.max_age_s, now)

    def link_bps(self, node_id: str, now: float | None = None) -> float | None:
        """The smoothed path rate of shares on ``node_id`` in bytes/s, None when not fresh."""
        return _fresh(self._links, node_id, self.max_age_s, now)

    def record_handover(self, node_id: str, nbytes: int, seconds: float,
                        now: float | None = None) -> None:
        """This node handed a share's operands (``nbytes``) for ``node_id`` to the link in
        ``seconds``: mostly its own sealing CPU, which holds back its own share. (A
        hand-over ends while the kernel's send buffer still holds the tail: the figure is
        this node's cost, not the wire's.)"""
        _smooth(self._handover, node_id, nbytes, seconds, self.max_age_s, now)

    def handover_bps(self, node_id: str, now: float | None = None) -> float | None:
        """The smoothed hand-over rate for ``node_id`` in bytes/s, None when not fresh."""
        return _fresh(self._handover, node_id, self.max_age_s, now)

    def forget(self, keep: set[str]) -> None:
        """Drop nodes not in ``keep`` (departed members must not grow this)."""
        self._speeds = {key: v for key, v in self._speeds.items() if key[0] in keep}
        self._alongside = {key: v for key, v in self._alongside.items() if key[0] in keep}
        self._links = {nid: v for nid, v in self._links.items() if nid in keep}
        self._handover = {nid: v for nid, v in self._handover.items() if nid in keep}


def path_rate(t: ShareTiming, compute_s: float) -> float | None:
    """Bytes/s of a share's path, by the split's model of its round trip (the inverse of
    ``oneshotsplit``'s peer finish): with ``c`` chunks, fixed bytes ``F`` (B) and row
    bytes ``R`` (A's rows and Y's) at rate ``L``, ``T = R / L`` and the compute ``P``,

        round trip - RTT = F / L + T + P - (1 - 1/c) * min(T, P).

    ``T <= P`` gives ``(F + R / c) / L + P``, else ``(F + R) / L + P / c``: the case whose
    answer agrees with its own assumption is taken (one always does, the function being
    continuous and increasing in ``1 / L``). ``c = 1`` is the single message: ``(F + R) /
    (round trip - RTT - P)``. The time left for the path is floored at ``MIN_PATH_SHARE``
    of the round trip (a loaded loop or clocks can make it tiny)."""
    c = max(1, t.chunks)
    rows = max(0, t.sent_bytes - (t.fixed_bytes if t.fixed_bytes is not None else 0)) \
        + t.reply_bytes
    fixed = t.sent_bytes + t.reply_bytes - rows
    floor = MIN_PATH_SHARE * t.total_s
    left = t.total_s - t.rtt_s
    if fixed + rows <= 0:
        return None
    overlapped = (fixed + rows / c) / max(left - compute_s, floor)      # T <= P
    if c == 1 or rows / overlapped <= compute_s:
        return overlapped
    return (fixed + rows) / max(left - compute_s / c, floor)             # T > P


def _smooth(table: dict[str, Measured], node_id: str, nbytes: float, seconds: float,
            max_age_s: float, now: float | None) -> None:
    """Fold a rate sample into ``table`` (a fresh start when the last one is too old)."""
    if nbytes <= 0 or seconds <= 0:
        return
    now = time.monotonic() if now is None else now
    bps = nbytes / seconds
    old = table.get(node_id)
    if old is not None and now - old.at <= max_age_s:
        bps = (1 - ALPHA) * old.gflops + ALPHA * bps
    table[node_id] = Measured(bps, now)


def _fresh(table: dict[str, Measured], node_id: str, max_age_s: float,
           now: float | None) -> float | None:
    now = time.monotonic() if now is None else now
    got = table.get(node_id)
    return got.gflops if got is not None and now - got.at <= max_age_s else None


def host_id() -> str:
    """Which machine's cores this daemon claims to share with co-hosted daemons; empty
    (the default) claims none.

    Opt-in through ``SEDMA_HOST_ID``: ``boot`` names the kernel by a hash of its boot id
    (daemons on one kernel share its cores, network namespaces and containers included),
    any other value is taken as given (e.g. daemons pinned to disjoint CPU sets), ``none``
    or unset claims nothing. Why not on by default: the product runs one daemon per
    machine, so co-hosts exist only in demos, tests and labs, where several daemons on one
    machine stand for several machines and their work is meant to spread; there a
    one-shot job kept whole on its coordinator would hide the mesh it is showing.
    """
    given = os.environ.get(HOST_ENV, "").strip()
    if not given or given == NO_HOST:
        return ""
    if given != BOOT_HOST:
        return given[:64]
    import hashlib   # only when asked to (boot id): _hashlib is ~0.6 MB of RSS (issue 13)

    try:
        with open(BOOT_ID, "rb") as f:
            return hashlib.sha256(f.read().strip()).hexdigest()[:16]
    except OSError:
        return ""
