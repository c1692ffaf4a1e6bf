"""ICE links between real processes in the NAT lab (root + netns; skipped otherwise)."""

from __future__ import annotations

import pytest

from tests.natlab.fixtures import lab, mesh  # noqa: F401  (pytest fixtures)
from tests.natlab.lab import PUB_IP

pytestmark = [pytest.mark.netns, pytest.mark.slow]
MiB = 1 << 20


def stun_args(lab) -> list[str]:
    return ["--stun", lab.stun_url]


def turn_args(lab, transport: str = "udp") -> list[str]:
    return ["--stun", lab.stun_url, "--turn", lab.turn_url(transport)]


async def exchange(a, b, sizes: list[int]) -> None:
    """a sends frames of ``sizes`` to b; b must receive each one byte-exact, in order."""
    for size in sizes:
        await a.cmd("send", size=size)
    sent = [(await a.expect("sent", timeout=60))["sha"][0] for _ in sizes]
    got = [await b.expect("frame", timeout=60) for _ in sizes]
    assert [g["size"] for g in got] == sizes
    assert [g["sha"] for g in got] == sent


async def test_cone_nats_hole_punch_and_carry_frames(lab, mesh):
    h1, h2 = lab.sites[0], lab.sites[1]
    a = await mesh.spawn("a", h1.host, *stun_args(lab))
    b = await mesh.spawn("b", h2.host, *stun_args(lab))
    await a.cmd("connect", peer="b")
    ca = await a.expect("connected", "connect_failed")
    assert ca["ev"] == "connected", ca
    lb = await b.expect("link")
    assert ca["kind"] == lb["kind"] == "ice-direct"
    # the pair goes through both NATs' public mappings: a server-reflexive pair
    assert ca["remote"].startswith(f"{h2.wan_ip}:") and "srflx" in ca["remote"]
    await exchange(a, b, [1, 1000, MiB, 70000])
    await exchange(b, a, [MiB, 5])


async def test_symmetric_nats_connect_via_turn(lab, mesh):
    a = await mesh.spawn("a", lab.sites[2].host, *turn_args(lab))
    b = await mesh.spawn("b", lab.sites[3].host, *turn_args(lab))
    await a.cmd("connect", peer="b")
    ca = await a.expect("connected", "connect_failed")
    assert ca["ev"] == "connected", ca
    lb = await b.expect("link")
    assert ca["kind"] == lb["kind"] == "ice-relay"
    await exchange(a, b, [MiB, 3])
    await exchange(b, a, [MiB])


async def test_turn_over_tcp_relays(lab, mesh):
    a = await mesh.spawn("a", lab.sites[2].host, *turn_args(lab, "tcp"))
    b = await mesh.spawn("b", lab.sites[3].host, *turn_args(lab, "tcp"))
    await a.cmd("connect", peer="b")
    ca = await a.expect("connected", "connect_failed")
    assert ca["ev"] == "connected" and ca["kind"] == "ice-relay", ca
    await exchange(a, b, [MiB])


async def test_symmetric_nats_without_turn_fail_within_bound(lab, mesh):
    bound = ["--ice-timeout", "6", "--ice-attempts", "2"]
    a = await mesh.spawn("a", lab.sites[2].host, *stun_args(lab), *bound)
    b = await mesh.spawn("b", lab.sites[3].host, *stun_args(lab), *bound)
    await a.cmd("connect", peer="b")
    # 2 attempts x 6 s + 0.5 s backoff + process slack: the expect timeout is the bound
    failed = await a.expect("connected", "connect_failed", timeout=20)
    assert failed["ev"] == "connect_failed", failed
    assert ("ICE attempt 1: no working candidate pair within 6s (servers: stun; "
            "gathered: host, srflx)") in failed["error"]
    assert "ICE attempt 2" in failed["error"]


async def test_tcp_first_then_ice_when_address_unreachable(lab, mesh):
    p = await mesh.spawn("p", lab.pub, *stun_args(lab))
    await p.cmd("listen", port=7100)
    await p.expect("listening")
    a = await mesh.spawn("a", lab.sites[0].host, *stun_args(lab))
    await a.cmd("connect", peer="p", addresses=[f"{PUB_IP}:7100"])
    direct = await a.expect("connected", "connect_failed")
    assert direct["kind"] == "tcp", direct
    assert mesh.relayed == 0  # a reachable address needs no signalling at all
    b = await mesh.spawn("b", lab.sites[1].host, *stun_args(lab))
    # b's private address is unroutable from site 1: TCP fails (bounded), ICE takes over
    await a.cmd("connect", peer="b", addresses=[f"{lab.sites[1].host_ip}:7100"])
    fallback = await a.expect("connected", "connect_failed")
    assert fallback["ev"] == "connected" and fallback["kind"] == "ice-direct", fallback


async def test_flushed_mapping_is_noticed_and_link_reestablished(lab, mesh):
    sym_a, sym_b = lab.sites[2], lab.sites[3]
    a = await mesh.spawn("a", sym_a.host, *turn_args(lab), "--idle-timeout", "4")
    b = await mesh.spawn("b", sym_b.host, *turn_args(lab), "--idle-timeout", "4")
    await a.cmd("connect", peer="b")
    first = await a.expect("connected", "connect_failed")
    assert first["ev"] == "connected" and first["kind"] == "ice-relay", first
    await b.expect("link")
    lab.flush_conntrack(sym_a)  # the symmetric router picks a new port: TURN loses us
    closed = await a.expect("closed", timeout=20)
    assert "no traffic from peer" in closed["reason"] or "ICE connection" in closed["reason"]
    await a.cmd("connect", peer="b")
    again = await a.expect("connected", "connect_failed", timeout=40)
    assert again["ev"] == "connected" and again["kind"] == "ice-relay", again
    await b.expect("link")
    await exchange(a, b, [MiB])


@pytest.mark.parametrize("where, expected", [("pub", "public"), (0, "cone"), (2, "symmetric")])
async def test_reachability_detected(lab, mesh, where, expected):
    ns = lab.pub if where == "pub" else lab.sites[where].host
    p = await mesh.spawn("p", ns, *turn_args(lab))
    await p.cmd("reach")
    reach = await p.expect("reach")
    assert reach["kind"] == expected, reach
    assert reach["extra"] == {"reach": expected, "ice": True, "turn": True}


async def test_wrong_turn_password_fails_with_a_reason(lab, mesh):
    bad = lab.turn_url().replace(":labsecret@", ":wrong@")
    bound = ["--ice-timeout", "6", "--ice-attempts", "1"]
    a = await mesh.spawn("a", lab.sites[2].host, "--turn", bad, *bound)
    b = await mesh.spawn("b", lab.sites[3].host, "--turn", bad, *bound)
    await a.cmd("connect", peer="b")
    failed = await a.expect("connected", "connect_failed", timeout=15)
    assert failed["ev"] == "connect_failed", failed
    assert "no relay candidate: TURN allocation failed" in failed["error"], failed
    assert "wrong" not in failed["error"]  # the password never appears in errors


async def test_one_sides_turn_relay_suffices_between_symmetric_nats(lab, mesh):
    a = await mesh.spawn("a", lab.sites[2].host, *stun_args(lab))
    b = await mesh.spawn("b", lab.sites[3].host, *turn_args(lab))
    await a.cmd("connect", peer="b")
    ca = await a.expect("connected", "connect_failed")
    assert ca["ev"] == "connected" and ca["kind"] == "ice-relay", ca
    await exchange(a, b, [MiB])
