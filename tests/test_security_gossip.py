"""Signed adverts: gossip about node X can only say what X signed (real Ed25519 keys).

A small deterministic driver runs real :class:`Membership` machines with the daemon's
signer and verifier, every message through the wire codec, one node a malicious relay.
"""

from __future__ import annotations

import random

from protocol.advert import Advertisement, alive_signer, verify_alive
from protocol.identity import Identity
from protocol.membership import Gossip, Membership, MembershipConfig, MemberState
from protocol.messages import decode_message, encode_message

STEP = 0.05


def node(identity: Identity, seed: int) -> Membership:
    advert = Advertisement(node_id=identity.node_id, name=identity.node_id[:4],
                           addresses=[f"10.0.0.{seed}:7946"], memory_total=16 << 30,
                           memory_free=8 << 30, identity=identity.public_key)
    return Membership(advert, MembershipConfig(), now=0.0, rng=random.Random(seed),
                      sign=alive_signer(identity), verify=verify_alive)


class Mesh:
    """Instant delivery through the codec; ``tamper`` may rewrite what a node sends."""

    def __init__(self, n: int) -> None:
        self.ids = [Identity.generate() for _ in range(n)]
        self.nodes = {i.node_id: node(i, k + 1) for k, i in enumerate(self.ids)}
        self.now = 0.0
        self.rejected: list[tuple[str, str, str]] = []   # (receiver, subject, why)
        self.tamper = None

    def process(self, src: str, out) -> None:
        for subject, why in out.rejected:
            self.rejected.append((src, subject, why))
        for dst, msg in out.sends:
            if self.tamper is not None:
                msg = self.tamper(src, dst, msg)
            wire = decode_message(b"".join(bytes(p) for p in encode_message(msg)))
            if dst in self.nodes:
                self.process(dst, self.nodes[dst].handle(src, wire, self.now))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += STEP
            for node_id, m in self.nodes.items():
                self.process(node_id, m.tick(self.now))

    def join_all(self) -> None:
        first = self.ids[0].node_id
        for ident in self.ids[1:]:
            self.process(ident.node_id, self.nodes[ident.node_id].seed(first, None, self.now))
        self.run(5.0)
        for m in self.nodes.values():
            assert len(m.alive_ids()) == len(self.nodes)


def forge_memory(victim: str, value: int):
    """A relay that rewrites every alive record about ``victim`` it passes on."""
    def tamper(src, dst, msg):
        if src == victim or not hasattr(msg, "updates") and not hasattr(msg, "states"):
            return msg
        field = "updates" if hasattr(msg, "updates") else "states"
        for rec in getattr(msg, field):
            if rec[0] == "a" and rec[1] == victim:
                rec[4] = {**rec[4], "memory_free": value, "version": rec[4]["version"] + 1}
        return msg
    return tamper


def test_signed_adverts_spread_and_verify_everywhere():
    mesh = Mesh(5)
    mesh.join_all()
    assert mesh.rejected == []
    b = mesh.ids[1].node_id
    mesh.process(b, mesh.nodes[b].update_advert(mesh.now, memory_free=1 << 30))
    mesh.run(3.0)
    for m in mesh.nodes.values():
        assert m.member(b).advert.memory_free == 1 << 30


def test_a_relay_cannot_alter_another_nodes_memory():
    mesh = Mesh(5)
    mesh.join_all()
    victim = mesh.ids[1].node_id
    relay = mesh.ids[2].node_id
    inner = forge_memory(victim, 1 << 50)
    mesh.tamper = lambda src, dst, msg: inner(src, dst, msg) if src == relay else msg
    mesh.process(victim, mesh.nodes[victim].update_advert(mesh.now, memory_free=2 << 30))
    mesh.run(10.0)
    honest = [m for nid, m in mesh.nodes.items() if nid not in (victim, relay)]
    for m in honest:
        assert m.member(victim).advert.memory_free == 2 << 30   # the real, signed value
        assert m.member(victim).state is MemberState.ALIVE
    assert any(subject == victim and "bad signature" in why
               for _, subject, why in mesh.rejected)


def test_an_alive_record_under_someone_elses_key_or_unsigned_is_dropped():
    mesh = Mesh(3)
    mesh.join_all()
    a, b = (mesh.nodes[i.node_id] for i in mesh.ids[:2])
    victim = mesh.ids[2].node_id
    before = a.member(victim).advert
    attacker = Identity.generate()                  # signs properly, but is not the victim
    forged = before.replace(memory_free=1, version=before.version + 5,
                            identity=attacker.public_key)
    sig = alive_signer(attacker)(9, forged)
    for record in (["a", victim, 9, None, forged.to_dict(), sig],
                   ["a", victim, 9, None, forged.replace(identity=before.identity).to_dict()]):
        out = a.handle(mesh.ids[1].node_id, Gossip(updates=[record]), mesh.now)
        assert out.rejected and out.rejected[0][0] == victim
    assert "does not hash" in a.handle(b.local_id, Gossip(updates=[
        ["a", victim, 9, None, forged.to_dict(), sig]]), mesh.now).rejected[0][1]
    assert a.member(victim).advert == before and a.member(victim).incarnation == 0


def test_a_false_suspicion_is_refuted_with_a_signed_alive():
    mesh = Mesh(4)
    mesh.join_all()
    accuser, target = mesh.ids[0].node_id, mesh.ids[1].node_id
    m = mesh.nodes[accuser]
    mesh.process(accuser, m.handle(accuser, Gossip(updates=[]), mesh.now))
    # a suspicion (unsigned, as allowed) spreads; the target refutes with a signed alive
    for other in mesh.ids[2:]:
        mesh.process(other.node_id, mesh.nodes[other.node_id].handle(
            accuser, Gossip(updates=[["s", target, 0, accuser, None]]), mesh.now))
    mesh.run(3.0)
    for nid, node_ in mesh.nodes.items():
        if nid != target:
            assert node_.member(target).state is MemberState.ALIVE
            assert node_.member(target).incarnation >= 1
    assert mesh.rejected == []
