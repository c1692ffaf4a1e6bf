"""A deterministic discrete-event simulator for :class:`protocol.membership.Membership`.

N state machines share a virtual clock and a virtual network with latency, random loss,
partitions and crashes. Everything (latency jitter, loss, each node's protocol randomness)
comes from one seed, so a failing run can be replayed exactly. There is no real time
anywhere: the simulator pops the earliest event from a heap (a message delivery, a node's
timer, a failed-dial report) and feeds it to the right node, like the daemon would.

Nodes are driven the way the daemon must drive them: ``tick`` at ``next_deadline``,
``handle`` for every delivered message, ``unreachable`` when a destination is down.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from protocol.advert import Advertisement
from protocol.membership import Event, Membership, MembershipConfig, MemberState, Output
from protocol.messages import decode_message, encode_message

EventHook = Callable[[float, str, Event], None]


@dataclass
class NetConfig:
    """The virtual network: one-way latency (base + uniform jitter) and loss rate."""

    latency: float = 0.005
    jitter: float = 0.005
    loss: float = 0.0
    #: how long after sending to a crashed node the sender learns the dial failed
    dial_failure_delay: float = 0.05
    #: every timer fires up to this much late (uniform): a busy event loop
    tick_lateness: float = 0.0


@dataclass
class Stats:
    """Traffic counters (bytes only when the simulator measures them)."""

    messages: int = 0
    bytes: int = 0
    delivered: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    bytes_by_type: dict[str, int] = field(default_factory=dict)


def make_advert(node_id: str) -> Advertisement:
    """A plausible advertisement for a simulated node."""
    return Advertisement(node_id=node_id, name=f"node-{node_id}",
                         addresses=[f"10.0.{int(node_id, 16) // 250}.{int(node_id, 16) % 250}:7946"],
                         reachability="public", memory_total=16 << 30, memory_free=8 << 30,
                         memory_budget=4 << 30, cores=8, capacity=50.0, device="ideal")


def node_name(i: int) -> str:
    """Node ids are opaque hex strings, as in the daemon."""
    return f"{i:08x}"


class Simulator:
    """Runs N memberships on a virtual clock; see the module docstring."""

    def __init__(self, n: int, seed: int, *, config: MembershipConfig | None = None,
                 net: NetConfig | None = None, warm: bool = True, wire: bool = False,
                 measure_bytes: bool = False, phased: bool = False) -> None:
        """``phased``: each node probes on a beat of its own (``probe_phase`` drawn per
        node, uniform over the probe interval), as the daemons do."""
        self.rng = random.Random(seed)
        self.config = config or MembershipConfig()
        self.net = net or NetConfig()
        self.wire = wire
        self.measure_bytes = measure_bytes
        self.phased = phased
        self.now = 0.0
        self.nodes: dict[str, Membership] = {}
        self.up: set[str] = set()
        self.group: dict[str, int] = {}
        #: extra one-way delay on every message to or from a node (a slow, overloaded node)
        self.slow: dict[str, float] = {}
        self.stats = Stats()
        self.hooks: list[EventHook] = []
        self.false_deaths: list[tuple[float, str, str]] = []
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self._next_tick: dict[str, float] = {}
        ids = [node_name(i) for i in range(n)]
        adverts = {i: make_advert(i) for i in ids}
        for node_id in ids:
            self._start(node_id, adverts[node_id])
            if warm:
                self.nodes[node_id].restore([a for i, a in adverts.items() if i != node_id],
                                            self.now)
            self._reschedule(node_id)

    # ------------------------------------------------------------------ control

    def ids(self) -> list[str]:
        return list(self.nodes)

    def add_node(self, node_id: str, seed_id: str) -> Membership:
        """Start a fresh node (or restart one) and have it join through ``seed_id``."""
        node = self._start(node_id, make_advert(node_id))
        self._process(node_id, node.seed(seed_id, None, self.now))
        self._reschedule(node_id)
        return node

    def route(self, node_id: str, out: Output) -> None:
        """Send what a direct call on ``node_id`` returned (e.g. ``update_advert``, ``leave``)."""
        self._process(node_id, out)

    def crash(self, node_id: str) -> None:
        """Stop a node abruptly: it neither sends nor receives any more."""
        self.up.discard(node_id)

    def partition(self, groups: list[list[str]]) -> None:
        """Cut the network so only nodes of the same group can talk."""
        self.group = {n: g for g, members in enumerate(groups) for n in members}

    def heal(self) -> None:
        self.group = {}

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, t: float) -> None:
        """Process every event up to virtual time ``t``."""
        heap = self._heap
        while heap and heap[0][0] <= t:
            when, _, kind, payload = heapq.heappop(heap)
            self.now = when
            self._dispatch(kind, payload)
        self.now = max(self.now, t)

    def run_until_true(self, pred: Callable[[], bool], timeout: float,
                       step: float = 0.1) -> float | None:
        """Run until ``pred()`` holds (checked every ``step``); its time, or None on timeout."""
        deadline = self.now + timeout
        for _ in range(int(math.ceil(timeout / step)) + 1):
            if pred():
                return self.now
            if self.now >= deadline:
                break
            self.run_until(min(self.now + step, deadline))
        return self.now if pred() else None

    # ------------------------------------------------------------------ views

    def state_of(self, observer: str, subject: str) -> MemberState | None:
        m = self.nodes[observer].member(subject)
        return m.state if m else None

    def all_see(self, subject: str, states: tuple[MemberState, ...]) -> bool:
        """Every running node other than ``subject`` has it in one of ``states``."""
        return all(self.state_of(o, subject) in states for o in self.up if o != subject)

    def converged(self) -> bool:
        """Every running node sees every running node alive."""
        live = self.up
        for o in live:
            node = self.nodes[o]
            for s in live:
                m = node.member(s)
                if m is None or m.state is not MemberState.ALIVE:
                    return False
        return True

    # ------------------------------------------------------------------ internals

    def _start(self, node_id: str, advert: Advertisement) -> Membership:
        config = self.config
        if self.phased:
            config = dataclasses.replace(
                config, probe_phase=self.rng.uniform(0.0, config.probe_interval))
        node = Membership(advert, config, now=self.now,
                          rng=random.Random(self.rng.getrandbits(64)))
        self.nodes[node_id] = node
        self.up.add(node_id)
        self._next_tick[node_id] = math.inf
        return node

    def _push(self, when: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, payload))

    def _reschedule(self, node_id: str) -> None:
        when = self.nodes[node_id].next_deadline()
        if when < self._next_tick[node_id]:
            self._next_tick[node_id] = when
            late = self.net.tick_lateness * self.rng.random() if self.net.tick_lateness else 0.0
            self._push(when + late, "tick", (node_id, self.nodes[node_id], when))

    def _dispatch(self, kind: str, payload: Any) -> None:
        if kind == "tick":
            node_id, node, due = payload
            if (node_id not in self.up or self.nodes[node_id] is not node
                    or self._next_tick[node_id] != due):
                return
            self._next_tick[node_id] = math.inf
            self._process(node_id, node.tick(self.now))
        elif kind == "deliver":
            dest, node, sender, msg = payload
            if dest not in self.up or self.nodes[dest] is not node or self._cut(sender, dest):
                return
            self.stats.delivered += 1
            self._process(dest, node.handle(sender, msg, self.now))
        else:  # "unreachable": the sender's dial to dest failed
            sender, node, dest = payload
            if sender in self.up and self.nodes[sender] is node:
                self._process(sender, node.unreachable(dest, self.now))

    def _process(self, node_id: str, out: Output) -> None:
        for ev in out.events:
            if ev.kind == "dead" and ev.node_id in self.up:
                self.false_deaths.append((self.now, node_id, ev.node_id))
            for hook in self.hooks:
                hook(self.now, node_id, ev)
        node = self.nodes[node_id]
        net = self.net
        for dest, msg in out.sends:
            self._count(msg)
            if self.wire:
                msg = decode_message(b"".join(bytes(p) for p in encode_message(msg)))
            if dest not in self.up:
                self._push(self.now + net.dial_failure_delay, "unreachable",
                           (node_id, node, dest))
                continue
            if net.loss and self.rng.random() < net.loss:
                continue
            delay = net.latency + net.jitter * self.rng.random()
            if self.slow:
                delay += self.slow.get(node_id, 0.0) + self.slow.get(dest, 0.0)
            self._push(self.now + delay, "deliver", (dest, self.nodes[dest], node_id, msg))
        if node_id in self.up:
            self._reschedule(node_id)

    def _count(self, msg: Any) -> None:
        st = self.stats
        st.messages += 1
        tag = msg.TAG
        st.by_type[tag] = st.by_type.get(tag, 0) + 1
        if self.measure_bytes:
            size = sum(len(p) for p in encode_message(msg))
            st.bytes += size
            st.bytes_by_type[tag] = st.bytes_by_type.get(tag, 0) + size

    def _cut(self, a: str, b: str) -> bool:
        return bool(self.group) and self.group.get(a) != self.group.get(b)
