"""What one connected peer's session costs a process, in bytes (issue 13).

Opens K, then K2, handshaked session pairs over loopback TCP in one uvloop process (both
ends here, as two daemons would each hold one), each started and pinged once, and prints
per session end: the RSS growth (Python objects plus native memory: uvloop transports,
cipher contexts), the live tasks, and with --trace the tracemalloc growth and its top
file:line sites. What a daemon holds per member beyond its session (membership record,
adverts, mesh maps) is not in here; bench/idle.py gives the whole daemon.

Run by hand from a source tree (A/B: run each tree's copy from its directory):
    python bench/peerbytes.py [--k 20] [--k2 100] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tracemalloc

sys.path.insert(0, os.getcwd())

import uvloop  # noqa: E402

from nat.tcp import dial_tcp, listen_tcp  # noqa: E402
from node.net.session import handshake  # noqa: E402
from protocol.identity import Identity  # noqa: E402


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


async def _handler(session, msg) -> None:
    pass


async def main(k1: int, k2: int, trace: bool) -> None:
    a, b = Identity.generate(), Identity.generate()
    accepted: asyncio.Queue = asyncio.Queue()

    async def on_link(link) -> None:
        s = await handshake(link, b, "b", ["127.0.0.1:1"], [], initiator=False)
        s.start(_handler)
        await accepted.put(s)

    server = await listen_tcp("127.0.0.1", 0, on_link)
    port = server.sockets[0].getsockname()[1]
    keep = []

    async def add(n: int) -> None:
        for _ in range(n):
            link = await dial_tcp("127.0.0.1", port)
            s = await handshake(link, a, "a", ["127.0.0.1:2"], [], initiator=True)
            s.start(_handler)
            keep.extend([s, await accepted.get()])
            await s.ping(5.0)

    async def settle():
        await asyncio.sleep(0.5)
        gc.collect()
        return rss(), (tracemalloc.take_snapshot() if trace else None), len(asyncio.all_tasks())

    await add(k1)
    r1, s1, t1 = await settle()
    await add(k2 - k1)
    r2, s2, t2 = await settle()
    n = 2 * (k2 - k1)
    print(f"| session ends | RSS per end | tasks per end |\n|---|---|---|\n"
          f"| {2 * k1} -> {2 * k2} | {(r2 - r1) / n:.0f} B | {(t2 - t1) / n:.2f} |")
    if trace:
        stats = s2.compare_to(s1, "lineno")
        print(f"\ntracemalloc: {sum(x.size_diff for x in stats) / n:.0f} B per session end\n")
        for x in stats[:20]:
            where = x.traceback[0]
            print(f"{x.size_diff / n:8.0f} B {x.count_diff / n:6.2f} objects  "
                  f"{'/'.join(where.filename.rsplit('/', 2)[-2:])}:{where.lineno}")
    for s in keep:
        await s.close("done")
    server.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--k2", type=int, default=100)
    ap.add_argument("--trace", action="store_true")
    args = ap.parse_args()
    if args.trace:
        tracemalloc.start(1)
    uvloop.run(main(args.k, args.k2, args.trace))
