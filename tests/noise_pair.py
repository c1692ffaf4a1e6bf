"""Two ends of a finished Noise handshake in memory, for tests of what is sealed after it."""

from __future__ import annotations

from protocol.handshake import NoiseHandshake
from protocol.identity import Identity

KEY = b"k" * 32
A, B = Identity.generate(), Identity.generate()


def ciphers():
    """A finished handshake in memory: (dialler's cipher, responder's cipher)."""
    dialler = NoiseHandshake(A, "a", [], [KEY], initiator=True)
    responder = NoiseHandshake(B, "b", [], [KEY], initiator=False)
    responder.on_final(dialler.on_response(responder.on_first(dialler.first())))
    return dialler.cipher(), responder.cipher()
