"""SWIM membership with Lifeguard, as a sans-I/O state machine.

The daemon feeds a :class:`Membership` the messages its links delivered (:meth:`handle`),
the passing of time (:meth:`tick` at :meth:`next_deadline`) and link failures
(:meth:`unreachable`); each call returns an :class:`Output`: messages to send (by node id)
and membership events. Nothing here reads a clock, opens a socket or draws unseeded
randomness, so a simulator can run a thousand of them deterministically.

Protocol (SWIM, Das et al. 2002, as refined by HashiCorp memberlist and Lifeguard):

* **Failure detection.** Once per probe period a node pings the next member of a shuffled
  round-robin list. No ack within ``probe_timeout`` -> it asks ``indirect_checks`` others to
  ping the target for it (``swim.ping_req``). No ack by the end of the period -> it
  *suspects* the target. A suspect that hears of its suspicion refutes it by raising its
  incarnation number; a suspicion nobody refutes in time becomes *dead*.
* **Lifeguard.** Missed acks and nacks raise a local-health score that stretches the
  node's own probe period and timeout (:mod:`protocol.awareness`); independent
  confirmations of a suspicion shorten its timeout (:mod:`protocol.suspicion`); a ping to
  a suspect carries the suspicion so the suspect can refute at once (buddy system).
* **Against false verdicts under loss** (gossip misses a given node with probability
  about ``exp(-retransmits)``, which adds up over thousands of suspicions): a node that
  receives bad news older than what it knows answers the sender with the newer record,
  and before declaring a suspect dead a node pings it one last time with the suspicion.
* **Dissemination.** Every change is queued and piggybacked on pings, acks and periodic
  ``swim.gossip`` messages a bounded number of times (:mod:`protocol.broadcast`). A periodic
  full-state push-pull with one random member (anti-entropy) repairs whatever gossip missed;
  it is also how a node joins (:meth:`Membership.seed`).
* **Advertisements** ride in *alive* records; (incarnation, advert version) orders them.
  A new version that differs from the one a node held only in statistics nobody decides
  on (``quiet_stats``: latency, throughput, bytes) is not broadcast, neither by its
  subject nor by whoever learns it: push-pull carries it (issue 13: idle cost).
* **Probes on the daemon's beat** (issue 13: idle cost). With ``probe_phase`` set, the
  probes start on the instants ``probe_phase + k * probe_interval`` of the clock the
  machine is fed, the instants the daemon's once-a-second loops wake at
  (:mod:`node.runtime.beat`): one wake-up a period for both instead of two. The grid is
  computed from the clock each time, so late ticks never accumulate into drift; the
  periodic push-pull, reconnect and advert timers ride the same instants. Each daemon
  draws its own phase, so the daemons of one machine do not all probe at once.
* **Leave** is its own record (``left``), so a shutdown is not reported as a failure.
* **No member stays dead forever.** Dead records expire after ``dead_node_reclaim``; a node
  that hears it is considered dead (or that an older life of it exists) refutes with a
  higher incarnation; a member we consider dead that talks to us is told so, so it refutes
  at once; a node we have never heard of that talks to us gets a full-state push-pull (so
  a restarted node that rejoined through another fresh node meets the old cluster); and
  dead members are pinged now and then so healed partitions re-merge.

Update records travel as lists ``[kind, node_id, incarnation, from, advert(, signature)]``:
``kind`` is ``a`` (alive), ``s`` (suspect), ``d`` (dead) or ``l`` (left); ``from`` is the
accuser of a suspect/dead record; ``advert`` is an advertisement dict (always in alive
records and in push-pull state, else ``None``); ``signature`` is the subject's signature
of its alive record.

* **Signed alive records.** An alive record about node X — its incarnation and its whole
  advertisement (memory, capacity, load, addresses) — carries X's signature, made by X
  (``sign``) and relayed unchanged, and the advertisement carries X's public key, so any
  receiver checks it (``verify``) without a key directory: a relay cannot forge or alter
  another node's record, and a forged record is dropped and reported in
  ``Output.rejected``. Suspect/dead/left records are not signed by their subject (it is
  usually unable to), but they cannot outbid X's own signed alive record at a higher
  incarnation, so X can always refute. ``sign``/``verify`` are plugged in by the daemon;
  a simulator may leave them out (no signatures, nothing checked).
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from protocol.advert import REPORT_ONLY_STATS, Advertisement, AliveSigner, AliveVerifier
from protocol.awareness import Awareness
from protocol.broadcast import BroadcastQueue
from protocol.errors import DecodeError
from protocol.messages import message
from protocol.suspicion import Suspicion, suspicion_timeout

# --------------------------------------------------------------------------- messages


@message("swim.ping")
class Ping:
    """Are you alive? ``target`` guards against a ping reaching the wrong node."""

    seq: int
    target: str
    updates: list[Any]


@message("swim.ack")
class Ack:
    """Reply to a ping (or relayed by an intermediary on behalf of the target)."""

    seq: int
    updates: list[Any]


@message("swim.nack")
class Nack:
    """Lifeguard: the intermediary is alive but got no ack from the target in time."""

    seq: int


@message("swim.ping_req")
class PingReq:
    """Please ping ``target`` for me and relay its ack under my ``seq``."""

    seq: int
    target: str
    nack: bool
    updates: list[Any]


@message("swim.gossip")
class Gossip:
    """Updates pushed to a few random members every gossip interval."""

    updates: list[Any]


@message("swim.push_pull")
class PushPull:
    """Full membership state (anti-entropy / join); a non-reply gets the peer's state back."""

    join: bool
    reply: bool
    states: list[Any]


_MESSAGES = (Ping, Ack, Nack, PingReq, Gossip, PushPull)


def is_gossip_message(obj: Any) -> bool:
    """True if ``obj`` is a message this module handles (the daemon routes it here)."""
    return isinstance(obj, _MESSAGES)


# --------------------------------------------------------------------------- public types


@dataclass
class MembershipConfig:
    """Protocol timing; defaults follow memberlist's LAN config (seconds, counts).

    ``reconnect_interval`` is an addition: how often a node pings one random dead member,
    so that two sides of a healed partition find each other before their dead records
    expire (memberlist leaves this to Serf's reconnector).

    ``quiet_stats`` is another: advertised statistics whose news alone is left to
    push-pull instead of gossip (:meth:`Advertisement.only_reported_differ`).

    ``probe_phase`` (seconds, within ``probe_interval``) puts the probes and the other
    periodic timers on the instants ``probe_phase + k * probe_interval`` (None: probes run
    every period from a random start, as in memberlist): the daemon passes its beat's
    phase so that probing and its once-a-second loops share one wake-up.
    """

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    push_pull_interval: float = 30.0
    awareness_max_multiplier: int = 8
    advert_refresh: float = 5.0
    advert_threshold: float = 0.1
    dead_node_reclaim: float = 60.0
    max_piggyback: int = 16
    reconnect_interval: float = 10.0
    quiet_stats: frozenset[str] = REPORT_ONLY_STATS
    probe_phase: float | None = None


class MemberState(str, Enum):
    """A member's state as this node believes it."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(slots=True)
class Member:
    """What this node knows about one member (itself included)."""

    node_id: str
    state: MemberState
    incarnation: int
    advert: Advertisement
    state_since: float
    #: The subject's signature of (node_id, incarnation, advert); b"" when unsigned.
    signature: bytes = b""


@dataclass(slots=True)
class Event:
    """A membership change: joined, alive (back from suspect/dead), suspect, dead, left, advert.

    ``member`` is the live record (it keeps changing); copy what you need to keep.
    """

    kind: str
    node_id: str
    member: Member


@dataclass
class Output:
    """What a call produced: messages to send (destination node id, message) and events."""

    sends: list[tuple[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: (node id, why) of alive records dropped because their signature did not verify.
    rejected: list[tuple[str, str]] = field(default_factory=list)


def push_pull_scale(interval: float, n: int) -> float:
    """Stretch the push-pull interval in big clusters so its total cost stays bounded.

    Same rule as memberlist's ``pushPullScale``: unchanged up to 32 nodes, then one more
    multiple of the interval per doubling.
    """
    if n <= 32:
        return interval
    return interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)


# --------------------------------------------------------------------------- internals

_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
_GONE = (MemberState.DEAD, MemberState.LEFT)
_KIND_OF_STATE = {MemberState.ALIVE: "a", MemberState.SUSPECT: "s",
                  MemberState.DEAD: "d", MemberState.LEFT: "l"}
_MAX_TIMERS_PER_TICK = 100_000
#: Most records accepted in one piggyback list / one full state (anything bigger is abuse).
MAX_UPDATE_RECORDS = 1024
MAX_STATE_RECORDS = 100_000
_ADVERT_KEY = "\x00advert"
#: On the probe grid, a timer for ``t`` fires at the first grid instant at or after
#: ``t - GRID_SLACK * probe_interval``: a probe whose tick came a little late still ends
#: its period on the next instant (its window shorter by at most this) rather than
#: skipping one, and a timer's value read a hair before its instant still lands on it.
#: The trade-off, chosen on purpose: a probe whose tick was late by d <= this fraction has
#: d less for its indirect phase (0.4 s instead of 0.5 s at the defaults), against
#: skipping a whole slot -- half the probes -- whenever a busy loop runs a few ms late.
#: The simulator's late-timer runs (tests/test_gossip_sim.py) find no false deaths with
#: it; under sustained trouble Lifeguard's awareness stretches the period anyway.
GRID_SLACK = 0.1
_MISSING = object()


@dataclass(slots=True)
class _Probe:
    """The probe of the current period."""

    seq: int
    target: str
    acked: bool = False
    expected_nacks: int = 0
    nackers: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Relay:
    """A ping we send on behalf of ``origin`` (we are the intermediary of its ping_req)."""

    origin: str
    origin_seq: int
    target: str
    nack: bool


@dataclass(slots=True)
class _Record:
    """A validated update record; ``advert`` is parsed only when it may be used."""

    kind: str
    node_id: str
    incarnation: int
    origin: str | None
    advert_dict: dict | None
    signature: bytes = b""
    advert: Advertisement | None = None


class _LiveSet:
    """Alive and suspect members other than us: O(1) add, remove and random pick."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.pos: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, node_id: str) -> bool:
        return node_id in self.pos

    def add(self, node_id: str) -> None:
        if node_id not in self.pos:
            self.pos[node_id] = len(self.items)
            self.items.append(node_id)

    def discard(self, node_id: str) -> None:
        i = self.pos.pop(node_id, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i

    def sample(self, rng: random.Random, k: int, exclude: tuple[str, ...] = (),
               accept: Callable[[str], bool] | None = None) -> list[str]:
        """Up to ``k`` distinct random members not in ``exclude`` that ``accept`` allows.

        Random draws with a bounded number of attempts (O(k), whatever the cluster size);
        small sets are scanned exhaustively so a few candidates are never missed.
        """
        out: list[str] = []
        if not self.items or k <= 0:
            return out

        def ok(c: str) -> bool:
            return c not in exclude and c not in out and (accept is None or accept(c))
        for _ in range(3 * k + 3):
            cand = self.items[rng.randrange(len(self.items))]
            if ok(cand):
                out.append(cand)
                if len(out) >= k:
                    return out
        if len(self.items) <= 8 * k:
            rest = [c for c in self.items if ok(c)]
            rng.shuffle(rest)
            out.extend(rest[: k - len(out)])
        return out


# --------------------------------------------------------------------------- the machine


class Membership:
    """One node's view of the cluster; see the module docstring for the protocol.

    How the daemon drives it (one instance per daemon, all calls from one task):

    * ``now`` is any monotonic clock in seconds (e.g. ``loop.time()``), the same for every
      call; ``rng`` is a ``random.Random`` (seeded from ``os.urandom`` in production).
    * After *every* call, send each ``(node_id, msg)`` of ``out.sends`` best-effort over the
      link to that node (dial ``member(node_id).advert.addresses`` if there is none). If it
      cannot be delivered, call :meth:`unreachable`; never retry or queue: loss is normal.
    * Keep one timer armed at :meth:`next_deadline` and call :meth:`tick` when it fires;
      re-arm after every call, since handling a message can bring the deadline forward.
    * Route decoded messages for which :func:`is_gossip_message` is true to :meth:`handle`;
      a :class:`DecodeError` means the peer sent garbage: log it.
    * A closed link is not a verdict: do nothing; SWIM probes (directly and through
      others) decide. Close links to members reported ``dead`` or ``left``.
    * Bootstrap: once linked to a seed call :meth:`seed`; retry with backoff while
      ``len(alive_ids()) == 1`` (a seed that was down gets no second chance otherwise).
    * Call :meth:`update_advert` whenever local load or memory changes, as often as you
      like: it decides when a change is worth gossiping.
    * Shutdown: send :meth:`leave`'s output, keep ticking for about a second so queued
      gossip flushes, then close the links.
    """

    def __init__(self, advert: Advertisement, config: MembershipConfig | None = None, *,
                 now: float, rng: random.Random, sign: AliveSigner | None = None,
                 verify: AliveVerifier | None = None) -> None:
        self.config = config or MembershipConfig()
        self._rng = rng
        self._sign = sign
        self._verify = verify
        self._me = Member(advert.node_id, MemberState.ALIVE, 0, advert, now)
        self._sign_me()
        self._members: dict[str, Member] = {advert.node_id: self._me}
        self._live = _LiveSet()
        self._dead = _LiveSet()  # dead (not left) members, for reconnect attempts
        self._probe_order: list[str] = []
        self._probe_idx = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, Suspicion] = {}
        self._last_chance: set[str] = set()  # suspects given their final direct ping
        self._queue = BroadcastQueue()
        self._awareness = Awareness(self.config.awareness_max_multiplier)
        self._seq = rng.randrange(1 << 30)
        self._left = False
        self._last_notice: dict[str, float] = {}
        self._next_greeting = now
        # advertisement publishing: what others have, what we have, when we last said it
        self._local_advert = advert
        self._last_publish = now
        self._advert_pending = False
        self._advert_due = math.inf
        # alive records owed to the sender of the message being handled (it is behind)
        self._corrections: dict[str, list[Any]] = {}
        # timers: heap of (when, token, kind, key); a timer is live iff its token matches
        self._heap: list[tuple[float, int, str, str]] = []
        self._tokens: dict[tuple[str, str], int] = {}
        self._token = 0
        cfg = self.config
        first = now + (GRID_SLACK * cfg.probe_interval if cfg.probe_phase is not None
                       else rng.uniform(0, cfg.probe_interval))
        self._schedule("probe", "", self._on_grid(first))
        self._schedule("push_pull", "", self._on_grid(
            now + rng.uniform(0.5, 1.0) * cfg.push_pull_interval))
        self._schedule("reconnect", "", self._on_grid(
            now + rng.uniform(0.5, 1.0) * cfg.reconnect_interval))

    # ----------------------------------------------------------------- read-only API

    @property
    def local_id(self) -> str:
        return self._me.node_id

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def health(self) -> int:
        """Lifeguard local-health score (0 = healthy); timeouts scale by ``health + 1``."""
        return self._awareness.score

    def members(self) -> list[Member]:
        """Everyone known (any state), this node included."""
        return list(self._members.values())

    def member(self, node_id: str) -> Member | None:
        return self._members.get(node_id)

    def alive_ids(self) -> list[str]:
        """Ids of members currently alive (not suspect), this node included unless it left."""
        return [m.node_id for m in self._members.values() if m.state is MemberState.ALIVE]

    def num_live(self) -> int:
        """Alive and suspect members including this node: the ``N`` of the formulas."""
        return len(self._live) + 1

    def next_deadline(self) -> float:
        """When :meth:`tick` must next be called."""
        heap = self._heap
        while heap and self._tokens.get((heap[0][2], heap[0][3])) != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    # ----------------------------------------------------------------- driving API

    def seed(self, node_id: str, advert: Advertisement | None, now: float) -> Output:
        """Join through ``node_id`` (the daemon just linked to it): push-pull full state."""
        out = Output()
        if node_id == self.local_id:
            return out
        if advert is not None and node_id not in self._members:
            if advert.node_id != node_id:
                raise ValueError("seed advert belongs to another node")
            self._add_member(node_id, 0, advert, b"", now, out)
        out.sends.append((node_id, PushPull(join=True, reply=False, states=self._state())))
        return out

    def restore(self, adverts: list[Advertisement], now: float) -> None:
        """Know these nodes as alive (incarnation 0) without gossiping or reporting them.

        For state restored from disk, or a simulator's warm start of a large cluster;
        anything stale is corrected by the first push-pull or probe.
        """
        for adv in adverts:
            if adv.node_id not in self._members:
                self._members[adv.node_id] = Member(adv.node_id, MemberState.ALIVE, 0, adv, now)
                self._enter_live(adv.node_id)
        # the first anti-entropy round is spread over the (now larger) scaled interval
        interval = push_pull_scale(self.config.push_pull_interval, self.num_live())
        self._schedule("push_pull", "", self._on_grid(
            now + self._rng.uniform(0.5, 1.0) * interval))

    def handle(self, sender: str, msg: Any, now: float) -> Output:
        """Process one message ``sender`` sent us; raise DecodeError if it is malformed."""
        out = Output()
        if isinstance(msg, Ping):
            self._on_ping(sender, msg, now, out)
        elif isinstance(msg, Ack):
            self._on_ack(sender, msg, now, out)
        elif isinstance(msg, Nack):
            self._on_nack(sender, msg)
        elif isinstance(msg, PingReq):
            self._on_ping_req(sender, msg, now, out)
        elif isinstance(msg, Gossip):
            self._apply_all(sender, msg.updates, now, out, remote_state=False)
        elif isinstance(msg, PushPull):
            self._on_push_pull(sender, msg, now, out)
        else:
            raise DecodeError(f"not a gossip message: {type(msg).__name__}")
        self._notice_if_dead(sender, now, out)
        self._greet_stranger(sender, msg, now, out)
        if self._corrections:  # the sender spread stale bad news: set it right directly
            fixes = list(self._corrections.values())[: self.config.max_piggyback]
            self._corrections.clear()
            if sender != self.local_id:
                out.sends.append((sender, Gossip(updates=fixes)))
        self._ensure_gossip(now)
        return out

    def tick(self, now: float) -> Output:
        """Run every timer due at ``now``."""
        out = Output()
        heap = self._heap
        for _ in range(_MAX_TIMERS_PER_TICK):
            if not heap or heap[0][0] > now:
                break
            when, token, kind, key = heapq.heappop(heap)
            if self._tokens.get((kind, key)) != token:
                continue
            del self._tokens[(kind, key)]
            getattr(self, "_timer_" + kind)(key, now, out)
        self._ensure_gossip(now)
        return out

    def update_advert(self, now: float, **fields: Any) -> Output:
        """Local resources changed; publish now if it matters, else within advert_refresh.

        Changes beyond ``advert_threshold`` (or of identity fields) are published at once
        but at most once per probe interval; smaller ones wait up to ``advert_refresh``.
        An unchanged advertisement is never re-sent (push-pull keeps everyone in sync).
        """
        fields.pop("version", None)  # ours to manage
        if fields.get("node_id", self.local_id) != self.local_id:
            raise ValueError("a node cannot change its id; start a new Membership")
        local = self._local_advert
        if all(getattr(local, k, _MISSING) == v for k, v in fields.items()):
            return Output()   # the daemon's once-a-second offer, unchanged: nothing to do
        self._local_advert = local.replace(**fields)
        if self._left:
            return Output()
        published = self._me.advert
        cfg = self.config
        if published.differs_enough(self._local_advert, cfg.advert_threshold):
            when = self._last_publish + cfg.probe_interval
        elif self._local_advert.replace(version=published.version) != published:
            when = self._last_publish + cfg.advert_refresh
        else:
            self._advert_pending = False
            self._advert_due = math.inf
            self._cancel("advert", "")
            return Output()
        self._advert_pending = True
        when = self._on_grid(when)
        if when <= now:
            self._publish_advert(now)
        elif when < self._advert_due:
            self._advert_due = when
            self._schedule("advert", "", when)
        self._ensure_gossip(now)
        return Output()

    def leave(self, now: float) -> Output:
        """Announce a graceful leave to several members; afterwards only answer pings."""
        out = Output()
        if self._left:
            return out
        self._left = True
        me = self._me
        me.state, me.state_since = MemberState.LEFT, now
        self._queue.clear()
        record = ["l", me.node_id, me.incarnation, me.node_id, None]
        self._queue.queue(me.node_id, record)
        fanout = self.config.gossip_nodes + self.config.indirect_checks
        for dest in self._live.sample(self._rng, fanout):
            out.sends.append((dest, Gossip(updates=[record])))
        for kind in ("probe", "probe_timeout", "probe_end", "push_pull", "reconnect", "advert"):
            self._cancel(kind, "")
        for node_id in list(self._suspicions):  # our verdicts no longer matter
            self._end_suspicion(node_id)
        self._probe = None
        self._ensure_gossip(now)
        return out

    def ping(self, node_id: str, now: float) -> Output:
        """One direct ping to a live member outside the probe schedule.

        For a first round-trip sample of a new link (``sedma peers`` showed "-" until the
        round robin reached the member, up to N periods). Its ack is applied like any
        (piggybacked news included); a missing one is no verdict: only probes decide.
        """
        out = Output()
        m = self._members.get(node_id)
        if m is None or m.state not in _LIVE or self._left or node_id == self.local_id:
            return out
        out.sends.append((node_id, Ping(seq=self._next_seq(), target=node_id, updates=[])))
        return out

    def unreachable(self, node_id: str, now: float) -> Output:
        """The daemon could not deliver to ``node_id``: like a lost message, but sooner.

        If it was our probe target we go straight to indirect probes (others may still
        reach it, e.g. across a NAT); if we were relaying a ping to it we nack at once.
        Never a verdict on its own: SWIM decides.
        """
        out = Output()
        probe = self._probe
        if probe and probe.target == node_id and not probe.acked and probe.expected_nacks == 0:
            if self._cancel("probe_timeout", ""):
                self._timer_probe_timeout("", now, out)
        for seq, relay in list(self._relays.items()):
            if relay.target == node_id:
                self._finish_relay(seq, out, send_nack=True)
        return out

    # ----------------------------------------------------------------- message handlers

    def _on_ping(self, sender: str, msg: Ping, now: float, out: Output) -> None:
        if msg.target != self.local_id:
            return
        self._apply_all(sender, msg.updates, now, out, remote_state=False)
        fixes = list(self._corrections.values())[: self.config.max_piggyback]
        self._corrections.clear()  # they ride in the ack rather than in a message of their own
        updates = fixes + self._piggyback(self.config.max_piggyback - len(fixes))
        out.sends.append((sender, Ack(seq=msg.seq, updates=updates)))

    def _on_ack(self, sender: str, msg: Ack, now: float, out: Output) -> None:
        self._apply_all(sender, msg.updates, now, out, remote_state=False)
        relay = self._relays.get(msg.seq)
        if relay is not None:
            out.sends.append((relay.origin, Ack(seq=relay.origin_seq, updates=[])))
            self._finish_relay(msg.seq, out, send_nack=False)
            return
        probe = self._probe
        if probe is not None and probe.seq == msg.seq and not probe.acked:
            probe.acked = True
            self._cancel("probe_timeout", "")
            self._awareness.apply_delta(-1)

    def _on_nack(self, sender: str, msg: Nack) -> None:
        probe = self._probe
        if probe is not None and probe.seq == msg.seq:
            probe.nackers.add(sender)

    def _on_ping_req(self, sender: str, msg: PingReq, now: float, out: Output) -> None:
        self._apply_all(sender, msg.updates, now, out, remote_state=False)
        if self._left or msg.target == self.local_id:
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(sender, msg.seq, msg.target, msg.nack)
        self._schedule("relay", str(seq), now + 0.8 * self.config.probe_timeout)
        out.sends.append((msg.target, Ping(seq=seq, target=msg.target,
                                           updates=self._piggyback())))

    def _on_push_pull(self, sender: str, msg: PushPull, now: float, out: Output) -> None:
        if self._left:
            return
        self._apply_all(sender, msg.states, now, out, remote_state=True)
        if not msg.reply:
            out.sends.append((sender, PushPull(join=False, reply=True, states=self._state())))

    def _notice_if_dead(self, sender: str, now: float, out: Output) -> None:
        """A member we hold dead/left is talking to us: tell it, so it can refute."""
        m = self._members.get(sender)
        if m is None or m.state not in _GONE or self._left or sender == self.local_id:
            return
        last = self._last_notice.get(sender)
        if last is not None and now - last < self.config.probe_interval:
            return
        self._last_notice[sender] = now
        record = [_KIND_OF_STATE[m.state], sender, m.incarnation, self.local_id, None]
        out.sends.append((sender, Gossip(updates=[record])))

    def _is_alive(self, node_id: str) -> bool:
        """Only alive members help with indirect probes: a suspect one would not nack, and
        Lifeguard would blame *us* for the missing nack (as memberlist does)."""
        return self._members[node_id].state is MemberState.ALIVE

    def _greet_stranger(self, sender: str, msg: Any, now: float, out: Output) -> None:
        """A node we do not know is talking to us: exchange full state with it.

        This is how a restarted node that rejoined through another fresh node meets the
        rest of the cluster (and learns what they think of it) without waiting for the
        next anti-entropy round. At most one such push-pull per probe interval.
        """
        if (sender in self._members or self._left or isinstance(msg, PushPull)
                or now < self._next_greeting):
            return
        self._next_greeting = now + self.config.probe_interval
        out.sends.append((sender, PushPull(join=True, reply=False, states=self._state())))

    # ----------------------------------------------------------------- timers

    def _timer_probe(self, key: str, now: float, out: Output) -> None:
        """Start this period's probe of the next member in the shuffled round robin."""
        cfg = self.config
        period = self._awareness.scale(cfg.probe_interval)
        self._schedule("probe_end", "", self._on_grid(now + period))
        target = self._next_probe_target()
        if target is None:
            self._probe = None
            return
        self._probe = _Probe(self._next_seq(), target)
        self._schedule("probe_timeout", "", now + self._awareness.scale(cfg.probe_timeout))
        m = self._members[target]
        if m.state is MemberState.SUSPECT:  # Lifeguard buddy system: tell it, it can refute
            updates = [["s", target, m.incarnation, self.local_id, None]]
            updates += self._piggyback(cfg.max_piggyback - 1)
        else:
            updates = self._piggyback()
        out.sends.append((target, Ping(seq=self._probe.seq, target=target, updates=updates)))

    def _timer_probe_timeout(self, key: str, now: float, out: Output) -> None:
        """No direct ack in time: ask others to probe the target for us."""
        probe = self._probe
        if probe is None or probe.acked:
            return
        helpers = self._live.sample(self._rng, self.config.indirect_checks,
                                    exclude=(probe.target,), accept=self._is_alive)
        probe.expected_nacks = len(helpers)
        for helper in helpers:
            out.sends.append((helper, PingReq(seq=probe.seq, target=probe.target, nack=True,
                                              updates=self._piggyback())))

    def _timer_probe_end(self, key: str, now: float, out: Output) -> None:
        """End of the period: suspect an unacked target, update local health, probe again."""
        probe, self._probe = self._probe, None
        if probe is not None and not probe.acked:
            if probe.expected_nacks > 0:
                missed = probe.expected_nacks - len(probe.nackers)
                self._awareness.apply_delta(max(missed, 0))
            else:
                self._awareness.apply_delta(1)
            m = self._members.get(probe.target)
            if m is not None and m.state in _LIVE:
                self._suspect(probe.target, m.incarnation, self.local_id, now, out)
        self._timer_probe("", now, out)

    def _timer_suspicion(self, node_id: str, now: float, out: Output) -> None:
        """Nobody refuted in time: one last direct ping, then the suspect is dead.

        The last-chance ping carries the suspicion (buddy system), so a live suspect whose
        refutation gossip happened to miss us answers in its ack; this costs one probe
        period of detection time and removes most false verdicts under heavy loss.
        """
        m = self._members.get(node_id)
        if m is None or m.state is not MemberState.SUSPECT:
            return
        if node_id in self._last_chance or self._left:
            self._mark_gone(m, MemberState.DEAD, now, out, origin=self.local_id)
            return
        self._last_chance.add(node_id)
        record = ["s", node_id, m.incarnation, self.local_id, None]
        out.sends.append((node_id, Ping(seq=self._next_seq(), target=node_id, updates=[record])))
        self._schedule("suspicion", node_id, now + self.config.probe_interval)

    def _timer_reclaim(self, node_id: str, now: float, out: Output) -> None:
        """Forget a dead/left member for good (its id may come back as a new node)."""
        m = self._members.get(node_id)
        if m is not None and m.state in _GONE:
            del self._members[node_id]
            self._dead.discard(node_id)
            self._last_notice.pop(node_id, None)

    def _timer_relay(self, seq: str, now: float, out: Output) -> None:
        self._finish_relay(int(seq), out, send_nack=True)

    def _timer_gossip(self, key: str, now: float, out: Output) -> None:
        """Push queued updates to ``gossip_nodes`` random members (only if there are any)."""
        n = self.num_live()
        cfg = self.config
        exclude = (self.local_id,)
        for dest in self._live.sample(self._rng, cfg.gossip_nodes, exclude):
            updates = self._queue.take(cfg.max_piggyback, n, cfg.retransmit_mult)
            if not updates:
                break
            out.sends.append((dest, Gossip(updates=updates)))

    def _timer_push_pull(self, key: str, now: float, out: Output) -> None:
        """Anti-entropy: exchange full state with one random member."""
        peers = self._live.sample(self._rng, 1)
        if peers:
            out.sends.append((peers[0], PushPull(join=False, reply=False,
                                                 states=self._state())))
        interval = push_pull_scale(self.config.push_pull_interval, self.num_live())
        self._schedule("push_pull", "", self._on_grid(now + interval))

    def _timer_reconnect(self, key: str, now: float, out: Output) -> None:
        """Ping one random dead member: if it is in fact alive, both sides find out."""
        for dest in self._dead.sample(self._rng, 1):
            out.sends.append((dest, Ping(seq=self._next_seq(), target=dest, updates=[])))
        self._schedule("reconnect", "", self._on_grid(now + self.config.reconnect_interval))

    def _timer_advert(self, key: str, now: float, out: Output) -> None:
        self._advert_due = math.inf
        if self._advert_pending and not self._left:
            self._publish_advert(now)

    # ----------------------------------------------------------------- applying updates

    def _apply_all(self, sender: str, raw: list[Any], now: float, out: Output, *,
                   remote_state: bool) -> None:
        """Validate every record first (so a bad message changes nothing), then apply."""
        limit = MAX_STATE_RECORDS if remote_state else MAX_UPDATE_RECORDS
        if not isinstance(raw, list) or len(raw) > limit:
            raise DecodeError(f"gossip: expected a list of at most {limit} records")
        records = [self._parse(r) for r in raw]
        for rec in records:
            self._prepare_advert(rec, out)
        if self._left:
            return
        for rec in records:
            self._apply(sender, rec, now, out, remote_state)

    @staticmethod
    def _parse(raw: Any) -> _Record:
        if not isinstance(raw, (list, tuple)) or len(raw) not in (5, 6):
            raise DecodeError("gossip record must be a 5- or 6-element list")
        kind, node_id, inc, origin, adv = raw[:5]
        sig = raw[5] if len(raw) == 6 else b""
        if not isinstance(sig, bytes) or len(sig) > 128:
            raise DecodeError("gossip record: signature must be bytes (at most 128)")
        if kind not in ("a", "s", "d", "l"):
            raise DecodeError(f"gossip record: unknown kind {kind!r}")
        if not isinstance(node_id, str) or not node_id:
            raise DecodeError("gossip record: node id must be a non-empty string")
        if not isinstance(inc, int) or isinstance(inc, bool) or inc < 0:
            raise DecodeError("gossip record: incarnation must be a non-negative int")
        if origin is not None and not isinstance(origin, str):
            raise DecodeError("gossip record: 'from' must be a string or nil")
        if adv is not None and not isinstance(adv, dict):
            raise DecodeError("gossip record: advertisement must be a map or nil")
        if kind == "a" and adv is None:
            raise DecodeError("gossip record: alive record without advertisement")
        if adv is not None:
            version = adv.get("version", 0)
            if not isinstance(version, int) or isinstance(version, bool):
                raise DecodeError("gossip record: advertisement version must be an int")
        return _Record(kind, node_id, inc, origin, adv, sig)

    def _prepare_advert(self, rec: _Record, out: Output) -> None:
        """Parse (and verify) the advertisement only if it could replace what we have:
        both are costly, and an old record changes nothing whatever it says."""
        if rec.kind != "a" or rec.node_id == self.local_id:
            return
        m = self._members.get(rec.node_id)
        if m is not None and (rec.incarnation, rec.advert_dict.get("version", 0)) <= (
                m.incarnation, m.advert.version):
            return
        try:
            adv = Advertisement.from_dict(rec.advert_dict)
        except ValueError as exc:
            raise DecodeError(f"gossip record: {exc}") from None
        if adv.node_id != rec.node_id:
            raise DecodeError("gossip record: advertisement of another node")
        if self._verify is not None:
            why = self._verify(rec.node_id, rec.incarnation, adv, rec.signature)
            if why is not None:
                out.rejected.append((rec.node_id, f"alive record of {rec.node_id[:8]} "
                                     f"rejected: {why}"))
                return
        rec.advert = adv

    def _apply(self, sender: str, rec: _Record, now: float, out: Output,
               remote_state: bool) -> None:
        if rec.kind != "a":
            self._correct_if_stale(rec)
        if rec.node_id == self.local_id:
            self._about_self(rec, now)
        elif rec.kind == "a":
            if rec.advert is not None:
                self._alive(rec.node_id, rec.incarnation, rec.advert, rec.signature, now, out)
        elif rec.kind == "s" or (rec.kind == "d" and remote_state):
            # like memberlist, a remote full state's "dead" is only a suspicion to us
            self._suspect(rec.node_id, rec.incarnation, rec.origin or sender, now, out)
        else:
            m = self._members.get(rec.node_id)
            state = MemberState.DEAD if rec.kind == "d" else MemberState.LEFT
            if m is not None and rec.incarnation >= m.incarnation:
                self._mark_gone(m, state, now, out, origin=rec.origin or sender,
                                incarnation=rec.incarnation)

    def _correct_if_stale(self, rec: _Record) -> None:
        """Bad news older than the alive record we hold: owe the sender that record.

        Gossip alone misses a node now and then (each one with probability about
        ``exp(-retransmits)``); a node still spreading a suspicion that was refuted is such
        a node, and answering it directly stops a false "dead" verdict.
        """
        m = self._members.get(rec.node_id)
        if m is not None and m.state is MemberState.ALIVE and rec.incarnation < m.incarnation:
            self._corrections[m.node_id] = self._alive_record(m)

    def _about_self(self, rec: _Record, now: float) -> None:
        """Refute anything about us that is not our current alive record."""
        me = self._me
        if rec.incarnation < me.incarnation:
            return
        if rec.kind == "a":
            version = rec.advert_dict.get("version", 0) if rec.advert_dict else 0
            if rec.incarnation == me.incarnation and version <= me.advert.version:
                return  # our own news coming back
            self._refute(rec.incarnation, version, penalise=False)
        else:
            self._refute(rec.incarnation, 0, penalise=rec.kind in ("s", "d"))

    def _refute(self, incarnation: int, version: int, *, penalise: bool) -> None:
        """Outbid a record about us: higher incarnation (and advert version), gossiped."""
        me = self._me
        me.incarnation = max(incarnation, me.incarnation) + 1
        if version >= me.advert.version:
            me.advert = me.advert.replace(version=version + 1)
        self._sign_me()
        if penalise:  # Lifeguard: being suspected hints that we are the slow one
            self._awareness.apply_delta(1)
        self._queue_alive(me)
        self._corrections[me.node_id] = self._alive_record(me)  # the sender is behind

    def _alive(self, node_id: str, inc: int, advert: Advertisement, sig: bytes, now: float,
               out: Output) -> None:
        m = self._members.get(node_id)
        if m is None:
            self._add_member(node_id, inc, advert, sig, now, out)
            return
        newer_advert = (inc, advert.version) > (m.incarnation, m.advert.version)
        if m.state in _LIVE and inc > m.incarnation:
            changed = advert != m.advert
            m.incarnation, m.advert, m.signature = inc, advert, sig
            if m.state is MemberState.SUSPECT:
                self._set_state(m, MemberState.ALIVE, now)
                self._end_suspicion(node_id)
                out.events.append(Event("alive", node_id, m))
            elif changed:
                out.events.append(Event("advert", node_id, m))
            self._queue_alive(m)
        elif m.state in _LIVE and newer_advert:
            quiet = m.advert.only_reported_differ(advert, self.config.quiet_stats)
            m.advert, m.signature = advert, sig
            out.events.append(Event("advert", node_id, m))
            if not quiet:   # quiet news (status figures only) is left to push-pull
                self._queue.queue(node_id + _ADVERT_KEY, self._alive_record(m))
        elif m.state in _GONE and inc > m.incarnation:
            m.incarnation, m.advert, m.signature = inc, advert, sig
            self._set_state(m, MemberState.ALIVE, now)
            self._cancel("reclaim", node_id)
            self._dead.discard(node_id)
            self._enter_live(node_id)
            out.events.append(Event("alive", node_id, m))
            self._queue_alive(m)

    def _suspect(self, node_id: str, inc: int, origin: str, now: float, out: Output) -> None:
        m = self._members.get(node_id)
        if m is None or m.state in _GONE or inc < m.incarnation:
            return
        record = ["s", node_id, inc, origin, None]
        if m.state is MemberState.SUSPECT:
            m.incarnation = inc
            susp = self._suspicions.get(node_id)
            if susp is not None and susp.confirm(origin) and node_id not in self._last_chance:
                self._schedule("suspicion", node_id, susp.deadline)
                self._queue.queue(node_id, record)  # spread the confirmation
            return
        m.incarnation = inc
        self._set_state(m, MemberState.SUSPECT, now)
        n = self.num_live()
        cfg = self.config
        low = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        k = cfg.suspicion_mult - 2 if n - 2 >= cfg.suspicion_mult - 2 else 0
        susp = Suspicion(now, low, cfg.suspicion_max_timeout_mult * low, k, origin)
        self._suspicions[node_id] = susp
        self._schedule("suspicion", node_id, susp.deadline)
        out.events.append(Event("suspect", node_id, m))
        self._queue.queue(node_id, record)

    def _mark_gone(self, m: Member, state: MemberState, now: float, out: Output, *,
                   origin: str, incarnation: int | None = None) -> None:
        """Move a member to dead or left (left also overrides dead), and gossip it."""
        if m.state is state or m.state is MemberState.LEFT:
            return
        if incarnation is not None:
            m.incarnation = incarnation
        self._set_state(m, state, now)
        self._live.discard(m.node_id)
        if state is MemberState.DEAD:
            self._dead.add(m.node_id)
        else:
            self._dead.discard(m.node_id)
        self._end_suspicion(m.node_id)
        self._schedule("reclaim", m.node_id, now + self.config.dead_node_reclaim)
        out.events.append(Event(state.value, m.node_id, m))
        self._queue.queue(m.node_id, [_KIND_OF_STATE[state], m.node_id, m.incarnation,
                                      origin, None])

    def _add_member(self, node_id: str, inc: int, advert: Advertisement, sig: bytes,
                    now: float, out: Output) -> None:
        m = Member(node_id, MemberState.ALIVE, inc, advert, now, sig)
        self._members[node_id] = m
        self._enter_live(node_id)
        out.events.append(Event("joined", node_id, m))
        self._queue_alive(m)

    def _enter_live(self, node_id: str) -> None:
        """Add to the live set and at a random not-yet-probed place of this round."""
        self._live.add(node_id)
        order = self._probe_order
        order.append(node_id)
        j = self._rng.randrange(min(self._probe_idx, len(order) - 1), len(order))
        order[j], order[-1] = order[-1], order[j]

    def _set_state(self, m: Member, state: MemberState, now: float) -> None:
        m.state, m.state_since = state, now

    # ----------------------------------------------------------------- helpers

    def _next_probe_target(self) -> str | None:
        """Next alive/suspect member of the shuffled round robin; reshuffle at the end."""
        for _ in range(2 * len(self._probe_order) + 2):
            if self._probe_idx >= len(self._probe_order):
                if not self._live:
                    return None
                self._probe_order = list(self._live.items)
                self._rng.shuffle(self._probe_order)
                self._probe_idx = 0
            cand = self._probe_order[self._probe_idx]
            self._probe_idx += 1
            m = self._members.get(cand)
            if m is not None and m.state in _LIVE:
                return cand
        return None

    def _piggyback(self, limit: int | None = None) -> list[Any]:
        cfg = self.config
        limit = cfg.max_piggyback if limit is None else limit
        return self._queue.take(limit, self.num_live(), cfg.retransmit_mult)

    def _alive_record(self, m: Member) -> list[Any]:
        return self._record("a", m)

    @staticmethod
    def _record(kind: str, m: Member) -> list[Any]:
        """A record carrying ``m``'s advertisement (and signature, if it has one)."""
        rec = [kind, m.node_id, m.incarnation, None, m.advert.to_dict()]
        if m.signature:
            rec.append(m.signature)
        return rec

    def _sign_me(self) -> None:
        """Sign our current (incarnation, advert): whenever either changes."""
        me = self._me
        if self._sign is not None:
            me.signature = self._sign(me.incarnation, me.advert)

    def _queue_alive(self, m: Member) -> None:
        self._queue.queue(m.node_id, self._alive_record(m))
        self._queue.remove(m.node_id + _ADVERT_KEY)  # superseded by the full record

    def _state(self) -> list[Any]:
        """Full state for push-pull: every member with its advertisement."""
        return [self._record(_KIND_OF_STATE[m.state], m) for m in self._members.values()]

    def _publish_advert(self, now: float) -> None:
        """Sign the pending advertisement as a new version; broadcast it unless it only
        changed quiet statistics (then push-pull spreads it, see ``quiet_stats``)."""
        me = self._me
        quiet = me.advert.only_reported_differ(self._local_advert, self.config.quiet_stats)
        me.advert = self._local_advert.replace(version=me.advert.version + 1)
        self._local_advert = me.advert
        self._sign_me()
        self._last_publish = now
        self._advert_pending = False
        self._advert_due = math.inf
        self._cancel("advert", "")
        if not quiet:
            self._queue_alive(me)

    def _end_suspicion(self, node_id: str) -> None:
        self._suspicions.pop(node_id, None)
        self._last_chance.discard(node_id)
        self._cancel("suspicion", node_id)

    def _finish_relay(self, seq: int, out: Output, *, send_nack: bool) -> None:
        relay = self._relays.pop(seq, None)
        self._cancel("relay", str(seq))
        if relay is not None and send_nack and relay.nack:
            out.sends.append((relay.origin, Nack(seq=relay.origin_seq)))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq

    def _ensure_gossip(self, now: float) -> None:
        """Keep the gossip timer running while there is news to spread, and only then."""
        if len(self._queue) and ("gossip", "") not in self._tokens:
            self._schedule("gossip", "", now + self.config.gossip_interval)

    def _on_grid(self, t: float) -> float:
        """``t`` itself, or with ``probe_phase`` set the first instant
        ``probe_phase + k * probe_interval`` at or after ``t - GRID_SLACK * probe_interval``
        (see the module docstring). From ``t`` alone: no drift, however late the ticks."""
        phase = self.config.probe_phase
        if phase is None:
            return t
        step = self.config.probe_interval
        return phase + math.ceil((t - GRID_SLACK * step - phase) / step) * step

    def _schedule(self, kind: str, key: str, when: float) -> None:
        self._token += 1
        self._tokens[(kind, key)] = self._token
        heapq.heappush(self._heap, (when, self._token, kind, key))

    def _cancel(self, kind: str, key: str) -> bool:
        return self._tokens.pop((kind, key), None) is not None

