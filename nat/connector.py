"""The connection policy: how this node gets a ``Link`` to a peer it knows by advertisement.

1. Direct TCP to each advertised address, each attempt bounded by ``tcp_timeout`` (cheap,
   and the only option that needs nothing from the peer's side).
   When every advertised address is a loopback one and neither side has STUN or TURN,
   a dial that timed out is retried (``local_retries`` times, doubling
   ``local_backoff``) and ICE is never tried: see :func:`direct_only` for why.
2. Otherwise ICE: an SDP offer carrying every gathered candidate (host, server-reflexive
   from STUN, relay from TURN -- all gathered together, so a symmetric NAT falls through to
   the relay pair in the same round of checks instead of after aioice's ~64 s failure) goes
   to the peer through the mesh (``send_signal``); the answer comes back through
   :meth:`Connector.handle_signal`. Each attempt is bounded by ``ice_timeout``; failed
   attempts are retried ``ice_attempts`` times with doubling backoff.

Every outcome (kind of link, setup time, error) is recorded for ``sedma peers``. The answering
side hands its finished link to the daemon with ``await on_link(link)``, exactly as a TCP
listener does. Nothing here ever contacts a server that was not configured.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from nat import reachability
from nat.iceservers import IceServer, parse_servers
from nat.link import Link, LinkClosed
from nat.signaling import DEFAULT_TTL, IceAnswer, IceError, IceOffer
from nat.tcp import ConnectRefused, dial_tcp

log = logging.getLogger("sedma.connector")

SendSignal = Callable[[str, Any], Awaitable[None]]
OnLink = Callable[[Link], Awaitable[None]]
#: Offers being answered at once; more are refused so a chatty peer cannot exhaust us.
MAX_ANSWERING = 16


@dataclass
class LinkOutcome:
    """What the last attempt to reach a peer produced."""

    kind: str            # 'tcp' | 'ice-direct' | 'ice-relay' | 'failed'
    setup_ms: float
    error: str = ""
    at: float = 0.0


@dataclass
class _Dial:
    """One connect attempt shared by every caller waiting for the same peer."""

    task: asyncio.Task
    waiters: int = 0


@dataclass
class ConnectorConfig:
    """Bounds on link attempts and the ICE servers to use (explicit: never a default)."""

    tcp_timeout: float = 3.0
    stun: tuple[str, ...] = ()
    turn: tuple[str, ...] = ()
    ice_timeout: float = 10.0
    ice_attempts: int = 2
    ice_backoff: float = 1.0
    keepalive: float = 2.0
    idle_timeout: float = 10.0
    reachability_timeout: float = 3.0
    reachability_every: float = 300.0   # re-probe: NATs get replaced, leases change
    #: Extra direct dials to a peer on this host after a timed-out one (see direct_only),
    #: the first after ``local_backoff`` seconds, each wait twice the last.
    local_retries: int = 3
    local_backoff: float = 0.5


def split_host_port(address: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6]:port``; ValueError with the offending text otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a HOST:PORT address: {address!r}")
    return host.strip("[]"), int(port)


def refusal_is_final(extra: dict, last_kind: str | None,
                     have_servers: bool) -> bool:
    """Whether every advertised address refusing a TCP connect means the peer is down.

    A refusal (a reset) is an answer: a host is up there and nothing listens on the port.
    When that host is surely the peer's -- we reached the peer over TCP last time, or it
    says it is publicly reachable -- its daemon is dead or restarting, and ICE would only
    spend ``ice_attempts x ice_timeout`` (21 s by default, measured in bench/failover.py)
    waiting for the same dead process before a request could fail over. The same holds
    when ICE could only use host candidates (no STUN/TURN on our side, no relay on the
    peer's, NAT kind not advertised). A peer that advertises a NAT keeps its ICE attempt:
    its private address may be another host here.
    """
    if last_kind == "tcp" or extra.get("reach") == reachability.PUBLIC:
        return True
    natted = extra.get("reach") in (reachability.CONE, reachability.SYMMETRIC)
    return not (natted or have_servers or extra.get("turn"))


def is_loopback_address(host: str) -> bool:
    """Whether ``host`` is a loopback IP address: the only kind that is surely this host's
    whatever the peer's network looks like. (A private or interface address is not: another
    host behind its own NAT or in its own container may use the same one, and ``bind()``
    succeeds for any address where ``ip_nonlocal_bind`` is set.) A name or anything
    unparsable is not."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def direct_only(addresses: list[str], extra: dict, have_servers: bool) -> bool:
    """Whether a peer can be reached only by dialling it directly, never by ICE: every
    address it advertises is a loopback address, it does not say it is behind a NAT, and
    neither side has a STUN or TURN server that could offer ICE another path.

    Under those conditions ICE could only pair host candidates, and the peer's are on this
    host, which the direct dial already tried: a path ICE could find, TCP to the same
    address finds too. A direct dial that times out then means the peer's process (or
    ours) was too busy to answer in time -- 100 daemons starting at once on 2 cores -- so
    the cure is to dial again a little later. ICE would only load aiortc (~45 MB that stays
    for the daemon's life, bench/README.md) to fail or to find the same path. With a STUN
    or TURN server on either side, or a NAT advertised (``reach`` other than public or
    unknown), ICE keeps its chance: a loopback address advertised by mistake from another
    host is then still reachable through the relay.
    """
    if not addresses or have_servers or extra.get("turn"):
        return False
    if extra.get("reach") in (reachability.CONE, reachability.SYMMETRIC):
        return False
    for address in addresses:
        try:
            host, _ = split_host_port(address)
        except ValueError:
            return False
        if not is_loopback_address(host):
            return False
    return True


class Connector:
    """Obtain links to peers, recording how each attempt went."""

    def __init__(self, local_id: str, config: ConnectorConfig, *,
                 send_signal: SendSignal, on_link: OnLink) -> None:
        self.local_id = local_id
        self.config = config
        self.send_signal = send_signal
        self.on_link = on_link
        self.outcomes: dict[str, LinkOutcome] = {}
        self.servers: list[IceServer] = parse_servers(config.stun, config.turn)
        self.reach = reachability.Reachability()
        self._reach_task: asyncio.Task | None = None
        self._reach_at = 0.0
        self._answers: dict[str, asyncio.Future] = {}      # session -> future of answer SDP
        self._dialling: dict[str, _Dial] = {}              # node -> shared connect attempt
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self._gathered: list[str] | None = None  # candidate types of our last ICE offer/answer

    @property
    def has_turn(self) -> bool:
        return any(s.scheme == "turn" for s in self.servers)

    # advertisement ----------------------------------------------------------------
    def advert_extra(self) -> dict[str, Any]:
        """Keys for this node's advertisement ``extra``: reachability, ICE and TURN support.

        Reachability detection runs in the background, started by the first call and
        repeated every ``reachability_every`` seconds (bounded, and only against configured
        STUN/TURN servers); until a probe finishes ``reach`` is "unknown". The daemon calls
        this whenever it refreshes its advertisement, which is what keeps it current.
        """
        due = (self._reach_task is None or (self._reach_task.done() and time.monotonic()
               - self._reach_at > self.config.reachability_every))
        if due and self.servers and not self._closed:
            try:
                self._reach_task = self._spawn(self.detect_reachability())
                self._reach_at = time.monotonic()
            except RuntimeError:  # no running loop: stay unknown
                pass
        return {"reach": self.reach.kind, "ice": True, "turn": self.has_turn}

    async def detect_reachability(self) -> reachability.Reachability:
        """Probe the configured servers once and remember the verdict."""
        self.reach = await reachability.detect(self.servers, self.config.reachability_timeout)
        log.info("reachability: %s (%s)", self.reach.kind, self.reach.detail)
        return self.reach

    # dialling ---------------------------------------------------------------------
    async def connect(self, node_id: str, addresses: list[str], extra: dict | None = None) -> Link:
        """Return a link to ``node_id`` or raise :class:`LinkClosed` saying why not.

        Concurrent calls for the same peer share one attempt; the attempt is cancelled when
        its last caller gives up (e.g. the caller's own timeout), so no link is left behind.
        """
        dial = self._dialling.get(node_id)
        if dial is None:
            dial = _Dial(asyncio.ensure_future(self._connect(node_id, addresses, extra or {})))
            self._dialling[node_id] = dial
            dial.task.add_done_callback(lambda _t: self._dial_done(node_id, dial))
        dial.waiters += 1
        try:
            return await asyncio.shield(dial.task)
        finally:
            dial.waiters -= 1
            if dial.waiters == 0 and not dial.task.done():
                dial.task.cancel()

    def _dial_done(self, node_id: str, dial: "_Dial") -> None:
        if self._dialling.get(node_id) is dial:
            del self._dialling[node_id]
        if dial.waiters == 0 and not dial.task.cancelled() and dial.task.exception() is None:
            self._spawn(dial.task.result().close("nobody waited for this link"))

    def setup_bound(self, n_addresses: int = 1) -> float:
        """Worst-case seconds one ``connect`` takes: callers' own timeouts should not be lower.

        The longer of the two ways: direct dials then ICE, or (a peer on this host)
        direct dials retried with backoff."""
        cfg = self.config
        backoff = sum(cfg.ice_backoff * 2 ** i for i in range(max(cfg.ice_attempts - 1, 0)))
        via_ice = n_addresses * cfg.tcp_timeout + cfg.ice_attempts * cfg.ice_timeout + backoff
        retries = max(cfg.local_retries, 0)
        local = (n_addresses * cfg.tcp_timeout * (1 + retries)
                 + sum(cfg.local_backoff * 2 ** i for i in range(retries)))
        return max(via_ice, local)

    async def _connect(self, node_id: str, addresses: list[str], extra: dict) -> Link:
        start = time.monotonic()
        errors: list[str] = []
        link, refused = await self._try_tcp(addresses, errors)
        last = self.outcomes.get(node_id)
        if link is None and refused and refusal_is_final(
                extra, last.kind if last else None, bool(self.servers)):
            errors.append("ICE not tried: the advertised address refused the connection "
                          "(the node is down or restarting)")
        elif link is None and direct_only(addresses, extra, bool(self.servers)):
            link = await self._retry_direct(addresses, errors)
        elif link is None:
            link = await self._try_ice(node_id, extra, errors)
        if link is None:
            reason = "; ".join(errors) or "peer advertises no address"
            self._record(node_id, "failed", start, reason)
            raise LinkClosed(f"cannot reach {node_id[:8]}: {reason}")
        self._record(node_id, link.kind, start)
        return link

    async def _try_tcp(self, addresses: list[str],
                       errors: list[str]) -> tuple[Link | None, bool]:
        """A TCP link to the first address that takes one, and whether every address
        actively refused (a reset, not silence).

        See :func:`refusal_is_final` for when a refusal makes ICE pointless.
        """
        refused = bool(addresses)
        for address in addresses:
            try:
                host, port = split_host_port(address)
                return await dial_tcp(host, port, timeout=self.config.tcp_timeout), False
            except (ValueError, LinkClosed) as exc:
                refused = refused and isinstance(exc, ConnectRefused)
                errors.append(str(exc))
        return None, refused

    async def _retry_direct(self, addresses: list[str], errors: list[str]) -> Link | None:
        """Dial a peer on this host again after a timed-out dial (bounded, with doubling
        backoff), until it answers or refuses; ICE is not tried (:func:`direct_only`)."""
        delay = self.config.local_backoff
        for _ in range(max(self.config.local_retries, 0)):
            if self._closed:
                break
            await asyncio.sleep(delay)
            delay *= 2
            link, refused = await self._try_tcp(addresses, errors)
            if link is not None:
                return link
            if refused:
                break
        errors.append("ICE not tried: the peer's addresses are on this host, where ICE "
                      "finds no path a direct dial does not")
        return None

    async def _try_ice(self, node_id: str, extra: dict, errors: list[str]) -> Link | None:
        hopeless = self._ice_hopeless(extra)
        if hopeless:
            errors.append(hopeless)
            return None
        delay = self.config.ice_backoff
        for attempt in range(1, self.config.ice_attempts + 1):
            try:
                return await asyncio.wait_for(self._ice_attempt(node_id),
                                              self.config.ice_timeout)
            except asyncio.TimeoutError:
                errors.append(f"ICE attempt {attempt}: no working candidate pair within "
                              f"{self.config.ice_timeout:g}s ({self._servers_note()})")
            except LinkClosed as exc:
                errors.append(f"ICE attempt {attempt}: {exc.reason}")
            except Exception as exc:  # gathering, STUN, TURN (aioice raises its own types)
                errors.append(f"ICE attempt {attempt}: {type(exc).__name__}: {exc}")
            if attempt < self.config.ice_attempts and not self._closed:
                await asyncio.sleep(delay)
                delay *= 2
        return None

    def _ice_hopeless(self, extra: dict) -> str:
        """A reason not to try ICE at all, when advertisements already prove it cannot work."""
        if extra.get("ice") is False:
            return "peer does not accept ICE"
        # TURN permissions are per IP, so one side's relay suffices even between two
        # symmetric NATs; only when neither side has one is the attempt known to be futile.
        if (not self.has_turn and extra.get("turn") is False
                and self.reach.kind == reachability.SYMMETRIC
                and extra.get("reach") == reachability.SYMMETRIC):
            return "both ends are behind symmetric NATs and neither has a TURN relay"
        return ""

    def _servers_note(self) -> str:
        """Which servers were configured and what gathering got from them, for errors."""
        kinds = sorted({s.scheme for s in self.servers})
        note = "servers: " + ", ".join(kinds) if kinds else "no STUN/TURN configured"
        if self._gathered is not None:
            note += "; gathered: " + (", ".join(self._gathered) or "nothing")
            if self.has_turn and "relay" not in self._gathered:
                note += "; no relay candidate: TURN allocation failed"
        return note

    async def _ice_attempt(self, node_id: str) -> Link:
        from nat import ice

        timers = ice.IceTimers(self.config.keepalive, self.config.idle_timeout)
        session = os.urandom(8).hex()
        answer = asyncio.get_running_loop().create_future()
        self._answers[session] = answer
        link = None
        try:
            link, sdp = await ice.make_offer(self.servers, timers)
            self._gathered = ice.candidate_types(sdp)
            await self.send_signal(node_id, IceOffer(self.local_id, node_id, DEFAULT_TTL,
                                                     session, sdp))
            await ice.accept_answer(link, await answer)
            await link.wait_open(self.config.ice_timeout)
            return link
        except BaseException as exc:
            if link is not None:
                await link.close(f"ICE setup failed: {exc!r}")
            raise
        finally:
            self._answers.pop(session, None)

    # answering --------------------------------------------------------------------
    async def handle_signal(self, sender: str, msg: Any) -> None:
        """A signalling message for this node arrived through the mesh (returns promptly)."""
        if msg.dst != self.local_id or msg.src != sender:
            log.warning("dropping misaddressed signal %s from %s", type(msg).__name__, sender)
            return
        if isinstance(msg, IceOffer):
            if self._closed or len(self._answering()) >= MAX_ANSWERING:
                await self._refuse(msg, "busy: too many ICE sessions being answered")
                return
            self._spawn(self._answer(msg), name=f"ice-answer-{msg.session}")
        elif isinstance(msg, (IceAnswer, IceError)):
            fut = self._answers.get(msg.session)
            if fut is None or fut.done():
                log.debug("signal for unknown/finished session %s", msg.session)
            elif isinstance(msg, IceAnswer):
                fut.set_result(msg.sdp)
            else:
                fut.set_exception(LinkClosed(f"peer refused ICE: {msg.reason}"))

    def _answering(self) -> list[asyncio.Task]:
        return [t for t in self._tasks if t.get_name().startswith("ice-answer-")]

    async def _refuse(self, offer: IceOffer, reason: str) -> None:
        try:
            await self.send_signal(offer.src, IceError(self.local_id, offer.src, DEFAULT_TTL,
                                                       offer.session, reason))
        except Exception as exc:  # the dialler's own timeout covers a lost refusal
            log.debug("could not send ice.error: %r", exc)

    async def _answer(self, offer: IceOffer) -> None:
        """Answer one offer; hand the link to the daemon once its channel is open."""
        start = time.monotonic()
        try:
            link = await asyncio.wait_for(self._answer_link(offer), self.config.ice_timeout)
        except Exception as exc:  # timeout, ICE, or aioice gathering errors
            reason = getattr(exc, "reason", None) or (
                f"no working candidate pair within {self.config.ice_timeout:g}s "
                f"({self._servers_note()})"
                if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}")
            log.info("answering ICE from %s failed: %s", offer.src[:8], reason)
            self._record(offer.src, "failed", start, f"answering ICE: {reason}")
            await self._refuse(offer, reason)
            return
        self._record(offer.src, link.kind, start)
        try:
            await self.on_link(link)
        except Exception:
            log.exception("on_link failed for ICE link from %s", offer.src[:8])
            await link.close("handler failed")

    async def _answer_link(self, offer: IceOffer) -> Link:
        from nat import ice

        timers = ice.IceTimers(self.config.keepalive, self.config.idle_timeout)
        fut, pc, sdp = await ice.make_answer(self.servers, offer.sdp, timers)
        self._gathered = ice.candidate_types(sdp)
        try:
            await self.send_signal(offer.src, IceAnswer(self.local_id, offer.src, DEFAULT_TTL,
                                                        offer.session, sdp))
            link = await fut
        except BaseException:
            await asyncio.wait_for(pc.close(), timers.close_timeout)
            raise
        try:
            await link.wait_open(self.config.ice_timeout)
        except BaseException as exc:
            await link.close(f"ICE setup failed: {exc!r}")
            raise
        return link

    # bookkeeping ------------------------------------------------------------------
    def outcome(self, node_id: str) -> LinkOutcome | None:
        """The last recorded attempt to reach ``node_id``."""
        return self.outcomes.get(node_id)

    def forget(self, keep: set[str], older_than: float, now: float | None = None) -> list[str]:
        """Drop link outcomes of peers not in ``keep`` recorded more than ``older_than``
        seconds ago (departed peers must not accumulate forever)."""
        now = time.time() if now is None else now
        gone = [n for n, o in self.outcomes.items()
                if n not in keep and o.at < now - older_than and n not in self._dialling]
        for node_id in gone:
            del self.outcomes[node_id]
        return gone

    async def close(self) -> None:
        """Stop every attempt in progress (bounded: tasks are cancelled, not awaited forever)."""
        self._closed = True
        tasks = [*self._tasks, *(d.task for d in self._dialling.values())]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def _spawn(self, coro, name: str | None = None) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _record(self, node_id: str, kind: str, start: float, error: str = "") -> None:
        self.outcomes[node_id] = LinkOutcome(kind, (time.monotonic() - start) * 1000, error,
                                             time.time())
