"""ICE links: the DTLS fingerprint is bound to the node identity in the signalling, and
the link itself runs the same Noise handshake as TCP."""

from __future__ import annotations

import asyncio
import dataclasses
import re

from nat import ice, signaling
from nat.connector import ConnectorConfig
from nat.signaling import IceOffer
from node.net.mesh import Mesh
from node.net.session import handshake
from protocol.identity import Identity
from protocol.rpc import Bye
from tests.test_nat_ice import link_pair

ALICE, MALLORY = Identity.generate(), Identity.generate()
KEY = b"c" * 32


async def real_offer() -> IceOffer:
    link, sdp = await ice.make_offer([], ice.IceTimers())
    await link.close()
    assert "a=fingerprint:" in sdp
    return IceOffer(ALICE.node_id, "b" * 32, signaling.DEFAULT_TTL, "s1", sdp)


def other_fingerprint(sdp: str) -> str:
    return re.sub(r"(a=fingerprint:sha-256 )([0-9A-F:]+)",
                  lambda m: m.group(1) + ":".join(["AB"] * 32), sdp)


async def test_a_signed_offer_verifies_and_survives_relaying():
    offer = signaling.signed(await real_offer(), ALICE)
    assert signaling.check(offer) is None
    assert signaling.check(signaling.forwarded(offer)) is None     # ttl is not signed


async def test_a_relay_substituting_its_fingerprint_is_refused():
    offer = signaling.signed(await real_offer(), ALICE)
    swapped = dataclasses.replace(offer, sdp=other_fingerprint(offer.sdp))
    assert swapped.sdp != offer.sdp
    assert signaling.check(swapped) == "bad signature"
    resigned = signaling.signed(dataclasses.replace(swapped, src=MALLORY.node_id), MALLORY)
    assert signaling.check(dataclasses.replace(resigned, src=ALICE.node_id)) \
        .startswith("identity key does not hash")
    assert signaling.check(dataclasses.replace(offer, sig=b"")) == "bad signature"


async def test_the_mesh_hands_only_genuine_offers_to_the_connector():
    mesh = Mesh(Identity.generate(), "b", [KEY], "127.0.0.1:0", [], None, ConnectorConfig())
    handled: list[IceOffer] = []

    async def fake_handle(src, msg):
        handled.append(msg)
    mesh.connector.handle_signal = fake_handle
    offer = signaling.signed(await real_offer(), ALICE)
    await mesh.handle_signal(dataclasses.replace(offer, sdp=other_fingerprint(offer.sdp)))
    assert handled == []
    await mesh.handle_signal(offer)
    assert handled == [offer]


async def test_an_ice_link_runs_the_noise_handshake_and_carries_records():
    a, b = await link_pair()
    try:
        sa, sb = await asyncio.gather(
            handshake(a, ALICE, "a", [], [KEY], initiator=True),
            handshake(b, MALLORY, "b", [], [KEY], initiator=False))
        assert sa.link.kind == "ice-direct" and sa.link.max_frame < a.max_frame
        got: asyncio.Queue = asyncio.Queue()
        sa.start(lambda s, m: asyncio.sleep(0))
        sb.start(lambda s, m: got.put(m))
        await sa.send(Bye("x" * (3 << 20)))          # 3 MiB: ~50 records
        assert (await asyncio.wait_for(got.get(), 30)).reason == "x" * (3 << 20)
        await sa.close("done")
        await sb.close("done")
    finally:
        await a.close()
        await b.close()
