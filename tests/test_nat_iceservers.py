"""Parsing --stun/--turn URLs into ICE servers."""

from __future__ import annotations

import pytest

from nat.iceservers import IceServer, parse_servers, parse_stun, parse_turn, to_rtc


def test_stun_url_with_and_without_port():
    assert parse_stun("stun:203.0.113.2:3479") == IceServer("stun", "203.0.113.2", 3479)
    assert parse_stun("stun:stun.example.test").port == 3478


def test_turn_url_carries_credentials_and_transport():
    s = parse_turn("turn:alice:s3cret@203.0.113.2:3478?transport=tcp")
    assert (s.username, s.password, s.host, s.port, s.transport) == (
        "alice", "s3cret", "203.0.113.2", 3478, "tcp")
    assert s.url == "turn:203.0.113.2:3478?transport=tcp"
    assert parse_turn("turn:u:p@h:1").transport == "udp"


def test_ipv6_host_is_bracketed_in_the_url():
    s = parse_stun("stun:[2001:db8::1]:3478")
    assert s.host == "2001:db8::1" and s.url == "stun:[2001:db8::1]:3478"


@pytest.mark.parametrize("bad", ["stun:", "stun:h:0", "stun:h:99999", "turn:h:3478",
                                 "http://h", "stun:h:12?transport=tcp"])
def test_bad_stun_urls_raise_value_error(bad):
    with pytest.raises(ValueError, match="URL|port"):
        parse_stun(bad)


@pytest.mark.parametrize("bad", ["turn:h:3478", "turn:user@h:3478", "stun:u:p@h:1",
                                 "turn:u:p@h:3478?transport=sctp"])
def test_bad_turn_urls_raise_value_error(bad):
    with pytest.raises(ValueError, match="TURN URL"):
        parse_turn(bad)


def test_turn_error_does_not_leak_the_password():
    with pytest.raises(ValueError) as info:
        parse_turn("turn:alice:hunter2@h:3478?transport=quic")
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in str(parse_turn("turn:alice:hunter2@h:3478"))


def test_rtc_servers_are_explicit_and_carry_credentials():
    servers = parse_servers(["stun:203.0.113.2:3478"], ["turn:u:p@203.0.113.2:3478"])
    rtc = to_rtc(servers)
    assert [r.urls for r in rtc] == ["stun:203.0.113.2:3478", "turn:203.0.113.2:3478"]
    assert (rtc[1].username, rtc[1].credential) == ("u", "p")
    assert to_rtc(parse_servers()) == []
