"""The mesh adapter: links, sessions and the membership state machine, wired to asyncio.

This is the thin I/O shell around the sans-I/O gossip core (:mod:`protocol.membership`):
it accepts and dials links, runs the handshake, feeds received gossip and the clock into
the state machine, and delivers what the machine wants sent — dialling the member's
advertised addresses through the :class:`~nat.connector.Connector` when no session exists.
Non-gossip messages go to the daemon's handler (jobs, signalling).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import time
from typing import Any, Awaitable, Callable

from nat import signaling
from nat.connector import Connector, ConnectorConfig
from nat.link import Link, LinkClosed
from nat.tcp import dial_tcp, listen_tcp
from node.config import parse_address
from node.net.session import Session, handshake
from protocol.advert import Advertisement, alive_signer, verify_alive
from protocol.errors import ProtocolError
from protocol.identity import Identity
from protocol.membership import (Ack, Event, Member, Membership, MembershipConfig, Output,
                                 Ping as ProbePing, is_gossip_message)
from protocol.rpc import Bye

log = logging.getLogger("sedma.mesh")

Handler = Callable[[Session, Any], Awaitable[None]]
EventHook = Callable[[Event], None]
RttHook = Callable[[str, float], None]

BOOTSTRAP_BACKOFF = (0.5, 30.0)     # first and largest delay between bootstrap attempts
DUPLICATE_LINK_GRACE = 5.0          # a superseded link is closed after this long
JOIN_CHECK_AFTER = 3.0              # a join through a seed must show members by then
LEAVE_LINGER = 0.5                  # keep gossiping this long after announcing a leave
MAX_PENDING_HANDSHAKES = 64         # unauthenticated links at once (each times out in 5 s)
MAX_LINKS = 1024                    # established links; more incoming ones are refused
MIN_TICK_SLEEP = 0.005              # the tick loop never spins faster than this
MAX_TICK_SLEEP = 30.0               # nor sleeps longer (a safety net: deadlines wake it)
PROBES_TIMED = 64                   # direct pings awaiting their ack for an RTT sample, at most
RETIME_SLACK = 0.05                 # a deadline this much later re-times the tick loop's timer
#: The loop's timers have millisecond ticks (uvloop: its cached clock is whole ms), so the
#: timer armed for a deadline can fire with the clock reading up to a tick before it: a
#: deadline this close is run at once, not slept for again (that was a second wake-up).
TIMER_GRAIN = 0.002


class Mesh:
    """Sessions to peers plus membership, for one node."""

    def clock(self) -> float:
        """The one clock the membership is fed: the event loop's (monotonic), the one
        its timers and the beat (:mod:`node.runtime.beat`) run on, so a probe due on a
        beat is armed for the very instant the beat's loops sleep to: one wake-up. With
        ``time.monotonic`` the two differed by up to a millisecond (uvloop caches its
        clock per iteration), which split them into two wake-ups now and then. The loop
        is looked up once (``get_running_loop`` costs a ``getpid`` per call)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    def __init__(self, identity: Identity, name: str, keys: list[bytes],
                 listen: str, bootstrap: list[str], handler: Handler,
                 connector_config: ConnectorConfig,
                 membership_config: MembershipConfig | None = None) -> None:
        self.identity = identity
        self.node_id = node_id = identity.node_id
        self.name = name
        #: cluster keyring: the first key dials, every key is accepted (empty: open mesh)
        self.keys = list(keys)
        self.listen = listen
        self.bootstrap = bootstrap
        self.handler = handler
        self.membership_config = membership_config
        self.membership: Membership | None = None  # made once the listen port is known
        self.connector = Connector(node_id, connector_config, send_signal=self.send_signal,
                                   on_link=self._on_ice_link)
        self.sessions: dict[str, Session] = {}
        self.event_hooks: list[EventHook] = []
        #: called with (peer id, round trip in ms) for every acked direct probe
        self.rtt_hooks: list[RttHook] = []
        self._probes_out: dict[int, tuple[str, float]] = {}   # seq -> (peer, sent at)
        #: links given their one early ping for a first RTT sample (peer -> that session)
        self._rtt_asked: dict[str, Session] = {}
        #: when each member's advertisement last changed, for ``sedma peers``
        self.advert_seen: dict[str, float] = {}
        #: SWIM and gossip messages only (links also carry work): sent, received
        self.gossip_sent = 0
        self.gossip_received = 0
        self._dialing: dict[str, asyncio.Future] = {}
        #: messages by tag over sessions already closed (live ones keep their own)
        self._closed_sent: collections.Counter = collections.Counter()
        self._closed_recv: collections.Counter = collections.Counter()
        #: sessions established (both directions) and closed since start
        self.sessions_opened = 0
        #: membership events by kind (an idle mesh should see no "advert" ones)
        self.events_seen: collections.Counter = collections.Counter()
        self.sessions_closed = 0
        self.joined_via: set[str] = set()
        self._handshaking = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._sleep_until = -math.inf    # when the tick loop will wake (-inf: it is awake)
        self._timer: asyncio.TimerHandle | None = None   # the tick loop's, while it sleeps
        self._stopping = False
        self.bound: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None   # the clock's, at first use

    # lifecycle ----------------------------------------------------------------------
    async def start(self, make_advert: Callable[[tuple[str, int]], Advertisement],
                    supervise: Callable[[str, Callable[[], Awaitable]], Any] | None = None
                    ) -> None:
        """Listen, then build our advertisement (it needs the bound port) and gossip.

        ``supervise(name, loop)``, when given, runs the gossip loop (the daemon's
        supervisor restarts it after a failure instead of letting it end silently)."""
        host, port = parse_address(self.listen)
        self._server = await listen_tcp(host, port, self._on_tcp_link)
        self.bound = self._server.sockets[0].getsockname()[:2]
        log.info("listening for peers on %s:%d", *self.bound)
        advert = make_advert(self.bound).replace(identity=self.identity.public_key)
        self.membership = Membership(advert, self.membership_config, now=self.clock(),
                                     rng=random.Random(), sign=alive_signer(self.identity),
                                     verify=verify_alive)
        if supervise is not None:
            supervise("gossip", self._tick_loop)
        else:
            self._spawn(self._tick_loop())
        if self.bootstrap:
            self._spawn(self._join_loop())

    @property
    def advert(self) -> Advertisement:
        return self.membership.member(self.node_id).advert

    async def handshake(self, link: Link, *, initiator: bool) -> Session:
        """The Noise handshake over ``link`` as this node (see :mod:`protocol.handshake`)."""
        return await handshake(link, self.identity, self.name, self.advert.addresses,
                               self.keys, initiator=initiator)

    async def stop(self) -> None:
        """Leave gracefully: announce, close sessions, stop listening."""
        self._stopping = True
        if self.membership is None:
            return
        self._process(self.membership.leave(self.clock()))
        await asyncio.sleep(LEAVE_LINGER)  # the tick loop sends the queued leave gossip
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            try:
                await asyncio.wait_for(session.send(Bye("node stopping")), 1.0)
            except (LinkClosed, asyncio.TimeoutError):
                pass
            await session.close("node stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.connector.close()

    def _spawn(self, coro: Awaitable) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("mesh task failed: %r", task.exception(), exc_info=task.exception())

    # links and sessions -------------------------------------------------------------
    async def _on_tcp_link(self, link: Link) -> None:
        await self._accept(link, initiator=False)

    async def _on_ice_link(self, link: Link) -> None:
        await self._accept(link, initiator=False)

    async def _accept(self, link: Link, initiator: bool) -> Session | None:
        if self._stopping:
            await link.close("node stopping")
            return None
        if not initiator and len(self.sessions) >= MAX_LINKS:
            log.warning("refusing link from %s: already %d links (the cap)", link.remote,
                        len(self.sessions))
            await link.close("too many links")
            return None
        if self._handshaking >= MAX_PENDING_HANDSHAKES:
            log.warning("refusing link from %s: %d handshakes already pending", link.remote,
                        self._handshaking)
            await link.close("too many pending handshakes")
            return None
        self._handshaking += 1
        try:
            session = await self.handshake(link, initiator=initiator)
        except (ProtocolError, LinkClosed) as exc:
            log.warning("rejected link from %s: %s", link.remote, exc)
            return None
        finally:
            self._handshaking -= 1
        self._register(session)
        return session

    def _register(self, session: Session) -> None:
        """Make ``session`` the one to its peer; settle duplicates the same way on both ends."""
        peer = session.peer_id
        old = self.sessions.get(peer)
        if old is not None and not old.closed.is_set():
            keep_new = self._prefer_new(old, session)
            loser = old if keep_new else session
            if not keep_new:
                session.start(self._dispatch)
            self._spawn(self._close_later(loser, "duplicate link"))
            if not keep_new:
                return
        self.sessions[peer] = session
        self.sessions_opened += 1
        session.start(self._dispatch)
        self._spawn(self._watch(session))
        self._first_rtt(peer)
        log.info("linked to %s (%s) over %s at %s", session.remote.name, peer[:8],
                 session.link.kind, session.link.remote)

    def _prefer_new(self, old: Session, new: Session) -> bool:
        """Which of two live sessions to one peer survives.

        Links dialled from both ends at once: keep the one the smaller node id dialled, so
        both ends pick the same link. Two links dialled by the *same* end: the dialler only
        re-dials when it lost the old link (e.g. a NAT dropped its mapping, so the old TCP
        link is dead but this end never heard a reset), so the new one wins.
        """
        if old.initiator == new.initiator:
            return True
        return new.initiator == (self.node_id < new.peer_id)

    async def _close_later(self, session: Session, reason: str) -> None:
        await asyncio.sleep(DUPLICATE_LINK_GRACE)
        await session.close(reason)

    async def _watch(self, session: Session) -> None:
        await session.closed.wait()
        if self.sessions.get(session.peer_id) is session:
            del self.sessions[session.peer_id]
        if self._rtt_asked.get(session.peer_id) is session:
            del self._rtt_asked[session.peer_id]
        self.sessions_closed += 1
        self._closed_sent.update(session.stats.sent_by_tag)
        self._closed_recv.update(session.stats.recv_by_tag)
        log.info("link to %s closed: %s", session.peer_id[:8], session.close_reason)

    async def session(self, node_id: str) -> Session:
        """The session to ``node_id``, dialling it (once, even if many ask) if needed."""
        existing = self.sessions.get(node_id)
        if existing is not None and not existing.closed.is_set():
            return existing
        pending = self._dialing.get(node_id)
        if pending is None:
            pending = asyncio.ensure_future(self._dial(node_id))
            self._dialing[node_id] = pending
            pending.add_done_callback(lambda _f: self._dialing.pop(node_id, None))
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            # the dial (not this caller) was cancelled: the member was declared dead or left
            if pending.cancelled() and not asyncio.current_task().cancelling():
                raise LinkClosed(f"{node_id[:8]} was declared dead or left while being "
                                 "dialled") from None
            raise

    async def _dial(self, node_id: str) -> Session:
        member = self.membership.member(node_id)
        if member is None:
            raise LinkClosed(f"unknown member {node_id[:8]}")
        addresses = member.advert.addresses
        link = await asyncio.wait_for(
            self.connector.connect(node_id, addresses, member.advert.extra),
            self.connector.setup_bound(len(addresses)) + 1.0)
        session = await self.handshake(link, initiator=True)
        if session.peer_id != node_id:
            await session.close("wrong node at address")
            raise LinkClosed(f"{link.remote} is {session.peer_id[:8]}, not {node_id[:8]}")
        self._register(session)
        return self.sessions.get(node_id, session)

    # bootstrap ----------------------------------------------------------------------
    async def _join_loop(self) -> None:
        """Dial bootstrap addresses with backoff until the membership knows someone alive.

        A handshake alone is not enough: the seed may die before the push-pull completes,
        and the state machine gives a seed no second chance, so we check the outcome.
        """
        delay = BOOTSTRAP_BACKOFF[0]
        while not self._stopping:
            for address in self.bootstrap:
                if await self._join_via(address):
                    await asyncio.sleep(JOIN_CHECK_AFTER)
                    if len(self.membership.alive_ids()) > 1:
                        return
            log.warning("no bootstrap reachable (%s); retrying in %.1fs",
                        ", ".join(self.bootstrap), delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BOOTSTRAP_BACKOFF[1])

    async def _join_via(self, address: str) -> bool:
        host, port = parse_address(address)
        try:
            link = await dial_tcp(host, port, timeout=self.connector.config.tcp_timeout)
            session = await self.handshake(link, initiator=True)
        except (LinkClosed, ProtocolError, OSError) as exc:
            log.info("bootstrap %s: %s", address, exc)
            return False
        self._register(session)
        self.joined_via.add(session.peer_id)
        self._process(self.membership.seed(session.peer_id, None, self.clock()))
        log.info("joined the mesh through %s (%s)", address, session.remote.name)
        return True

    # gossip I/O ---------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        """Tick the membership at its next deadline, and only then (issue 13: idle cost).

        The state machine says when it next needs the clock (``next_deadline``, the
        contract the deterministic simulator drives it by), so an idle node wakes for its
        probe and the acks, not on a poll. :meth:`_process` wakes this loop early when a
        message or an advert change moved the deadline closer. One timer handle per sleep:
        ``wait_for`` made a task per round."""
        while True:
            self._sleep_until = -math.inf   # awake: nothing needs waking
            self._process(self.membership.tick(self._tick_time()))
            self._wake.clear()
            self._arm(self.membership.next_deadline())
            try:
                await self._wake.wait()
            finally:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None

    def _tick_time(self) -> float:
        """Now, or the next deadline if it is within ``TIMER_GRAIN`` ahead: the timer
        armed for it fired, with the loop's millisecond clock not quite there yet. (The
        membership may then see the clock step back by as much: harmless, it only
        compares instants seconds apart.)"""
        now = self.clock()
        due = self.membership.next_deadline()
        return due if now < due <= now + TIMER_GRAIN else now

    def _arm(self, deadline: float) -> None:
        """(Re)set the tick loop's one timer to ``deadline`` (clamped)."""
        if self._timer is not None:
            self._timer.cancel()
        now = self.clock()
        delay = min(max(deadline - now, MIN_TICK_SLEEP), MAX_TICK_SLEEP)
        self._sleep_until = now + delay
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + delay, self._wake.set)

    def _process(self, out: Output) -> None:
        for node_id, why in out.rejected:
            log.warning("dropped forged gossip about %s: %s", node_id[:8], why)
        for dst, msg in out.sends:
            self._spawn(self._deliver(dst, msg))
        for event in out.events:
            self.events_seen[event.kind] += 1
            if event.kind in ("joined", "advert", "alive"):
                self.advert_seen[event.node_id] = self.clock()
            if event.kind in ("joined", "alive"):
                self._first_rtt(event.node_id)
            if event.kind != "advert":
                log.info("member %s is %s", event.node_id[:8], event.kind)
            if event.kind in ("dead", "left"):
                session = self.sessions.get(event.node_id)
                if session is not None:
                    self._spawn(session.close(f"member is {event.kind}"))
                dial = self._dialing.get(event.node_id)
                if dial is not None:   # nobody should keep waiting on a dead member
                    dial.cancel()
            for hook in self.event_hooks:
                hook(event)
        deadline = self.membership.next_deadline()
        if deadline < self._sleep_until:
            self._wake.set()       # a timer is now due before the tick loop would wake
        elif (self._timer is not None and min(deadline, self.clock() + MAX_TICK_SLEEP)
              > self._sleep_until + RETIME_SLACK):
            # The timer it slept for was cancelled (an ack cancels the probe timeout):
            # sleep on to the next live one instead of waking for nothing once a period.
            self._arm(deadline)

    async def _deliver(self, dst: str, msg: Any) -> None:
        try:
            session = await self.session(dst)
            if isinstance(msg, ProbePing) and msg.target == dst:
                self._time_probe(msg.seq, dst)
            await session.send(msg)
            self.gossip_sent += 1
        except (LinkClosed, ProtocolError, asyncio.TimeoutError, OSError) as exc:
            log.debug("gossip to %s undelivered: %s", dst[:8], exc)
            self._process(self.membership.unreachable(dst, self.clock()))

    async def _dispatch(self, session: Session, msg: Any) -> None:
        if is_gossip_message(msg):
            self.gossip_received += 1
            if isinstance(msg, Ack):
                self._probe_acked(session, msg.seq)
            try:
                self._process(self.membership.handle(session.peer_id, msg, self.clock()))
            except ProtocolError as exc:
                log.warning("bad gossip from %s: %s", session.peer_id[:8], exc)
            return
        if isinstance(msg, Bye):
            log.info("%s is leaving: %s", session.peer_id[:8], msg.reason)
            return
        # Work can take seconds: never make the link's reader (and the probes queued
        # behind it) wait for it.
        self._spawn(self.handler(session, msg))

    # round trips, from the probes SWIM sends anyway -------------------------------------
    def _time_probe(self, seq: int, dst: str) -> None:
        """Remember when a direct ping left: its ack is an RTT sample for free. A separate
        RTT ping (request and reply on both ends) was a quarter of an idle daemon's
        messages (issue 13)."""
        self._probes_out[seq] = (dst, time.perf_counter())
        if len(self._probes_out) > PROBES_TIMED:    # acks that never came: forget the oldest
            del self._probes_out[next(iter(self._probes_out))]

    def _first_rtt(self, peer: str) -> None:
        """One ping on a link that has no RTT yet, once per link, if the peer is a live
        member (else when it becomes one: its "joined" event calls again): ``sedma
        peers`` showed "-" for a linked peer until the probes' round robin reached it, up
        to N periods after start. Bounded: one small round trip per link ever opened."""
        session = self.sessions.get(peer)
        if (session is None or session.closed.is_set() or session.link.rtt_ms is not None
                or self._rtt_asked.get(peer) is session or self.membership is None):
            return
        out = self.membership.ping(peer, self.clock())
        if out.sends:
            self._rtt_asked[peer] = session
            self._process(out)

    def _probe_acked(self, session: Session, seq: int) -> None:
        sent = self._probes_out.pop(seq, None)
        if sent is None or sent[0] != session.peer_id:   # a relayed ack is not a round trip
            return
        ms = (time.perf_counter() - sent[1]) * 1000
        session.link.observe_rtt(ms)
        for hook in self.rtt_hooks:
            hook(session.peer_id, ms)

    def update_advert(self, **fields: Any) -> None:
        """Tell the membership our load or memory changed (it decides whether to gossip)."""
        self._process(self.membership.update_advert(self.clock(), **fields))

    # signalling relay ---------------------------------------------------------------
    async def handle_signal(self, msg: Any) -> None:
        """A signalling message for this node: hand it to the connector if ``src`` signed
        it (offers and answers bind the DTLS fingerprint to the sender's identity)."""
        why = signaling.check(msg)
        if why is not None:
            log.warning("dropping %s from %s: %s (a relay may have altered it)",
                        type(msg).TAG, msg.src[:8], why)
            return
        await self.connector.handle_signal(msg.src, msg)

    async def send_signal(self, dst: str, msg: Any) -> None:
        """Deliver a signalling message to ``dst``: directly, else via a linked member.
        Our own offers and answers are signed here, as they leave."""
        msg = signaling.signed(msg, self.identity)
        direct = self.sessions.get(dst)
        if direct is not None and not direct.closed.is_set():
            await direct.send(msg)
            return
        for session in self._relay_candidates(dst):
            try:
                await session.send(msg)
                return
            except LinkClosed:
                continue
        raise LinkClosed(f"no member to relay a signal to {dst[:8]}")

    def _relay_candidates(self, dst: str) -> list[Session]:
        """Sessions that may reach ``dst``: bootstraps first (everyone joined through
        them, so they link to everyone), then publicly reachable members, then the rest."""
        def rank(session: Session) -> tuple[int, int]:
            member = self.membership.member(session.peer_id)
            public = member is not None and member.advert.extra.get("reach") == "public"
            return (session.peer_id not in self.joined_via, not public)
        live = [s for p, s in self.sessions.items() if p != dst and not s.closed.is_set()]
        return sorted(live, key=rank)

    def members(self) -> list[Member]:
        return self.membership.members()

    def traffic(self) -> dict[str, Any]:
        """Messages sent and received by type since start, and session churn: what an
        idle node spends its CPU on (``bench/idle.py`` prints it per second)."""
        sent = collections.Counter(self._closed_sent)
        recv = collections.Counter(self._closed_recv)
        for session in self.sessions.values():
            sent.update(session.stats.sent_by_tag)
            recv.update(session.stats.recv_by_tag)
        return {"sent": dict(sent), "recv": dict(recv), "sessions": len(self.sessions),
                "sessions_opened": self.sessions_opened,
                "sessions_closed": self.sessions_closed, "events": dict(self.events_seen),
                "advert_version": self.advert.version}
