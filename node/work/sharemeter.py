"""What one-shot shares measured: each node's compute speed, for the transfer-aware split.

Why a meter of its own and not the dual memory's peer speed: that one is a share's flops
over its whole round trip, transfer included, and the split (``node.work.oneshotsplit``)
needs the two apart: moving B costs the same whatever the share, compute does not. A peer's
compute time is what is left of its round trip once the link's time is taken out (the
link's throughput is the dual memory's, fed by the same shares). A measurement older than
``max_age_s`` no longer counts: the job manager then splits as it would with nothing
measured, which measures every node again.

Fed and read on the event loop only (one owner, no lock). Not persisted: a restarted node
starts from the capacity split and measures again within one job.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

ALPHA = 0.5           # weight of the newest share: jobs are few and machines change
MAX_AGE_S = 600.0
HOST_ENV = "SEDMA_HOST_ID"
NO_HOST = "none"
BOOT_HOST = "boot"           # SEDMA_HOST_ID=boot: the kernel's boot id names the host
BOOT_ID = "/proc/sys/kernel/random/boot_id"


@dataclass
class Measured:
    gflops: float
    at: float


class ShareMeter:
    """Smoothed one-shot compute speed per (node, device) and operand rate per node, with
    the time of the last sample."""

    def __init__(self, max_age_s: float = MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self._speeds: dict[tuple[str, str], Measured] = {}
        self._links: dict[str, Measured] = {}   # bytes/s in Measured.gflops's place

    def record(self, node_id: str, device: str, flops: float, seconds: float,
               now: float | None = None) -> None:
        """A share of ``flops`` computed on ``node_id`` in ``seconds`` (compute alone)."""
        if flops <= 0 or seconds <= 0:
            return
        now = time.monotonic() if now is None else now
        speed = flops / seconds / 1e9
        old = self._speeds.get((node_id, device))
        if old is not None and now - old.at <= self.max_age_s:
            speed = (1 - ALPHA) * old.gflops + ALPHA * speed
        self._speeds[(node_id, device)] = Measured(speed, now)

    def speed(self, node_id: str, device: str, now: float | None = None) -> float | None:
        """The smoothed GFLOP/s, or None when never measured or measured too long ago."""
        now = time.monotonic() if now is None else now
        got = self._speeds.get((node_id, device))
        return got.gflops if got is not None and now - got.at <= self.max_age_s else None

    def record_link(self, node_id: str, nbytes: int, seconds: float,
                    now: float | None = None) -> None:
        """A share's operands (``nbytes``) were handed to the link to ``node_id`` in
        ``seconds``. Kept here, not in the dual memory's ``link_bps`` (block copies, whose
        figure prices migrations): a hand-over ends while the kernel's send buffer still
        holds the tail, so on a real link this reads high for operands not much larger than
        that buffer (a few MiB), which only makes a remote share look cheaper to ship."""
        if nbytes <= 0 or seconds <= 0:
            return
        now = time.monotonic() if now is None else now
        bps = nbytes / seconds
        old = self._links.get(node_id)
        if old is not None and now - old.at <= self.max_age_s:
            bps = (1 - ALPHA) * old.gflops + ALPHA * bps
        self._links[node_id] = Measured(bps, now)

    def link_bps(self, node_id: str, now: float | None = None) -> float | None:
        """The smoothed operand rate to ``node_id`` in bytes/s, None when not fresh."""
        now = time.monotonic() if now is None else now
        got = self._links.get(node_id)
        return got.gflops if got is not None and now - got.at <= self.max_age_s else None

    def forget(self, keep: set[str]) -> None:
        """Drop nodes not in ``keep`` (departed members must not grow this)."""
        self._speeds = {key: v for key, v in self._speeds.items() if key[0] in keep}
        self._links = {nid: v for nid, v in self._links.items() if nid in keep}


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
    try:
        with open(BOOT_ID, "rb") as f:
            return hashlib.sha256(f.read().strip()).hexdigest()[:16]
    except OSError:
        return ""
