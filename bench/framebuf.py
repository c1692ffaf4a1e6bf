"""What reusing frame buffers saves on the event loop (issue 13, protocol/framepool.py).

One process, one event loop (uvloop, as the daemon runs), a real TCP connection on
loopback with an encrypted link at each end: the sender seals ~1 MiB frames
(``SecureLink.send``), the receiver reads and opens them (``recv_sealed`` +
``Reassembler.feed_sealed``, as a session does, then ``recycle``). Each round streams
``--frames`` frames and takes the loop thread's CPU time (``time.thread_time``: waiting for
a core is not counted, so the figure holds on a shared machine) per frame, both ends
together; rounds alternate between the pool (reused buffers) and the pool switched off
(``FramePool.take`` returns None: a fresh ``bytearray`` per sealed and per received frame,
what every frame cost before).

Run by hand:  python bench/framebuf.py [--frames 400] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nat.secure import SecureLink  # noqa: E402
from nat.tcp import dial_tcp, listen_tcp  # noqa: E402
from protocol.framepool import FramePool  # noqa: E402
from protocol.framing import Reassembler, fragments  # noqa: E402
from protocol.handshake import NoiseHandshake  # noqa: E402
from protocol.identity import Identity  # noqa: E402

FRAGMENT = 1 << 20


def ciphers():
    key = [b"k" * 32]
    a = NoiseHandshake(Identity.generate(), "a", [], key, initiator=True)
    b = NoiseHandshake(Identity.generate(), "b", [], key, initiator=False)
    b.on_final(a.on_response(b.on_first(a.first())))
    return a.cipher(), b.cipher()


async def stream(frames: int) -> float:
    """Loop-thread CPU seconds per frame for ``frames`` frames of one message each."""
    accepted: asyncio.Queue = asyncio.Queue()

    async def on_link(link):
        await accepted.put(link)
    server = await listen_tcp("127.0.0.1", 0, on_link)
    a = await dial_tcp("127.0.0.1", server.sockets[0].getsockname()[1])
    b = await accepted.get()
    ca, cb = ciphers()
    tx, rx = SecureLink(a, ca), SecureLink(b, cb)
    fragment = min(tx.max_frame - 64, FRAGMENT)       # what a session cuts messages into
    payload = os.urandom(fragment)
    (frame,) = fragments(1, [payload], fragment)        # one whole message per frame
    reasm = Reassembler()

    async def send():
        for _ in range(frames):
            await tx.send(frame)

    async def receive():
        for _ in range(frames):
            sealed = await rx.recv_sealed()
            reasm.feed_sealed(sealed, rx.cipher)
            rx.recycle(sealed)
    start = time.thread_time()
    await asyncio.gather(send(), receive())
    cpu = time.thread_time() - start
    await tx.close()
    await rx.close()
    server.close()
    return cpu / frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    take = FramePool.take
    results: dict[str, list[float]] = {"pooled": [], "fresh": []}
    load = os.getloadavg()[0]
    for r in range(args.rounds):
        for mode in ("pooled", "fresh") if r % 2 == 0 else ("fresh", "pooled"):
            FramePool.take = take if mode == "pooled" else (lambda self, size: None)
            results[mode].append(uvloop.run(stream(args.frames)) * 1e6)
    FramePool.take = take
    print(f"framebuf: {args.frames} frames of ~1 MiB per round, {args.rounds} rounds each, "
          f"uvloop, loopback TCP, sealed; load {load:.2f} -> {os.getloadavg()[0]:.2f}\n")
    print("| buffers | loop CPU per frame, both ends (us): median | each round |")
    print("|---|---:|---|")
    for mode, vals in results.items():
        print(f"| {mode} | {statistics.median(vals):.0f} | "
              f"{', '.join(f'{v:.0f}' for v in vals)} |")
    ratio = statistics.median(results["pooled"]) / statistics.median(results["fresh"])
    print(f"\npooled / fresh: {ratio:.2f}")


if __name__ == "__main__":
    main()
