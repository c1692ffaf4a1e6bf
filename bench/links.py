"""Link setup time and throughput per link kind, measured in the NAT lab (run as root).

    python bench/links.py [--runs 5] [--frames 16]

Kinds: ``tcp`` (a host behind a cone NAT dialling a public host), ``ice-direct`` (two
hosts behind different cone NATs, hole-punched), ``ice-relay`` (two hosts behind symmetric
NATs, through coturn). Setup time is the Connector's own measurement (TCP attempt failing
fast included for ICE: the peers advertise no address here, so it is pure ICE). Throughput
is 1 MiB frames from first send until the receiver has reported the last one. Prints a
markdown table of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.natlab.driver import Mesh  # noqa: E402
from tests.natlab.lab import PUB_IP, Lab, missing_requirements  # noqa: E402

MiB = 1 << 20


async def setup_and_throughput(mesh: Mesh, a, b, target: dict, expect_kind: str,
                               runs: int, frames: int) -> tuple[list[float], list[float]]:
    setups, rates = [], []
    for _ in range(runs):
        await a.cmd("connect", **target)
        ev = await a.expect("connected", "connect_failed", timeout=60)
        if ev["ev"] != "connected" or ev["kind"] != expect_kind:
            raise RuntimeError(f"expected a {expect_kind} link, got {ev}")
        await b.expect("link", timeout=30)
        setups.append(ev["ms"])
        start = time.monotonic()
        await a.cmd("send", size=MiB, count=frames)
        for _ in range(frames):
            await b.expect("frame", timeout=120)
        rates.append(frames * MiB / (time.monotonic() - start) / 1e6)
        await a.expect("sent", timeout=30)
        await a.cmd("close")
        await b.expect("closed", timeout=30)
    return setups, rates


async def bench(runs: int, frames: int) -> list[tuple[str, float, float]]:
    lab = Lab(["cone", "cone", "symmetric", "symmetric"]).up()
    rows = []
    try:
        lab.start_coturn()
        stun = ["--stun", lab.stun_url]
        turn = stun + ["--turn", lab.turn_url()]
        mesh = Mesh(lab)
        try:
            p = await mesh.spawn("p", lab.pub, *stun)
            await p.cmd("listen", port=7200)
            await p.expect("listening")
            a = await mesh.spawn("a", lab.sites[0].host, *stun)
            b = await mesh.spawn("b", lab.sites[1].host, *stun)
            c = await mesh.spawn("c", lab.sites[2].host, *turn)
            d = await mesh.spawn("d", lab.sites[3].host, *turn)
            cases = [("tcp", a, p, {"peer": "p", "addresses": [f"{PUB_IP}:7200"]}),
                     ("ice-direct", a, b, {"peer": "b"}),
                     ("ice-relay", c, d, {"peer": "d"})]
            for kind, x, y, target in cases:
                setups, rates = await setup_and_throughput(mesh, x, y, target, kind, runs,
                                                           frames)
                rows.append((kind, statistics.median(setups), statistics.median(rates)))
        finally:
            await mesh.close()
    finally:
        lab.down()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        sys.exit(f"cannot run: {reason}")
    rows = asyncio.run(bench(args.runs, args.frames))
    print(f"| link kind | setup time (median of {args.runs}) | "
          f"throughput, {args.frames} x 1 MiB frames (median) |")
    print("|---|---|---|")
    for kind, setup_ms, mbps in rows:
        print(f"| {kind} | {setup_ms:.0f} ms | {mbps:.1f} MB/s |")


if __name__ == "__main__":
    main()
