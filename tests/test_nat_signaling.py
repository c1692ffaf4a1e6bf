"""Signalling messages: registered, routable, and hop-limited."""

from __future__ import annotations

from nat.signaling import IceAnswer, IceError, IceOffer, forwarded, is_signal
from protocol.messages import decode_message, encode_message


def roundtrip(msg):
    return decode_message(b"".join(bytes(b) for b in encode_message(msg)))


def test_signals_survive_the_wire_codec():
    for msg in (IceOffer("a", "b", 4, "s1", "v=0\r\n"), IceAnswer("b", "a", 4, "s1", "v=0"),
                IceError("b", "a", 4, "s1", "busy")):
        assert roundtrip(msg) == msg
        assert msg.TAG.startswith("ice.")


def test_is_signal_only_for_ice_messages():
    assert is_signal(IceOffer("a", "b", 4, "s", ""))
    assert is_signal(IceError("a", "b", 4, "s", ""))
    assert not is_signal({"src": "a", "dst": "b", "ttl": 3})
    assert not is_signal("ice.offer")


def test_forwarding_spends_one_hop_and_stops_at_zero():
    msg = IceAnswer("a", "b", 2, "s", "sdp")
    hop = forwarded(msg)
    assert hop == IceAnswer("a", "b", 1, "s", "sdp") and msg.ttl == 2
    assert forwarded(hop) is None
