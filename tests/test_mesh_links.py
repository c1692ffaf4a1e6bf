"""Which of two links to the same peer the mesh keeps (both ends must agree)."""

from types import SimpleNamespace

from node.net.mesh import Mesh


def session(initiator: bool, peer: str) -> SimpleNamespace:
    return SimpleNamespace(initiator=initiator, peer_id=peer)


def prefer_new(me: str, old, new) -> bool:
    return Mesh._prefer_new(SimpleNamespace(node_id=me), old, new)


def test_crossed_dials_keep_the_link_the_smaller_id_dialled_on_both_ends():
    # "a" < "b". At a: old link a dialled, new link b dialled -> keep a's (the old).
    assert prefer_new("a", session(True, "b"), session(False, "b")) is False
    assert prefer_new("a", session(False, "b"), session(True, "b")) is True
    # At b, the same two links seen from the other end -> the same choice.
    assert prefer_new("b", session(False, "a"), session(True, "a")) is False
    assert prefer_new("b", session(True, "a"), session(False, "a")) is True


def test_a_re_dial_from_the_same_end_replaces_the_stale_link():
    # The dialler only dials again when it lost its link; the other end may not know yet.
    for me, peer in (("a", "b"), ("b", "a")):
        assert prefer_new(me, session(False, peer), session(False, peer)) is True
        assert prefer_new(me, session(True, peer), session(True, peer)) is True
