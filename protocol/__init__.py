"""sedma's wire protocol: frames, message encoding, typed messages and gossip.

Everything in this package is sans-I/O: it turns bytes into messages and messages into
bytes (or, for gossip, messages and a clock into messages and events). The asyncio code
that moves the bytes lives in ``nat`` (links) and ``node`` (the daemon).
"""

PROTOCOL_VERSION = 2  # 2: Noise handshake, encrypted records, signed adverts
