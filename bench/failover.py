"""Infer latency around a kill -9 of a holder, on a real 3-daemon loopback mesh.

Deploys a matrix with 2 replicas from node 1, streams infers from node 1 (one at a time),
kills -9 a remote holder half-way and prints one row per infer: its latency, whether the
victim was already suspected/dead in node 1's view when it finished, and the result check.
Run by hand: ``python bench/failover.py [--before N] [--after N]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.client import Client  # noqa: E402
from node.localmesh import LocalMesh  # noqa: E402


def victim_state(client: Client, victim: str) -> str:
    return next((p["state"] for p in client.peers() if p["id"] == victim), "gone")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--before", type=int, default=5)
    ap.add_argument("--after", type=int, default=10)
    ap.add_argument("--logs", action="store_true", help="print the daemons' logs")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4096, 256)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, LocalMesh(Path(tmp)) as mesh:
        # node 2 advertises far more capacity, so node 1 sends remote blocks to it first
        # and its death is what the next infer runs into
        for capacity in ("1", "100", "2"):
            mesh.add(extra=["--log-level", "DEBUG", "--capacity", capacity])
        mesh.wait_converged(alive=2)
        n1, n2, n3 = mesh.nodes
        n1_id = n1.id
        rows = []
        with Client(n1.socket) as c:
            info = c.deploy("w", w, replicas=2)
            remote = [hs for hs in info["placement"].values() if n1_id not in hs]
            if not remote:
                sys.exit(f"node 1 holds every block: nothing to fail over {info['placement']}")
            victim = n2
            names = {n.id: n.name for n in mesh.nodes}
            print("placement:", {b: [names[h] for h in hs] for b, hs in info["placement"].items()})
            victim_id = victim.id
            for i in range(args.before + args.after):
                if i == args.before:
                    victim.kill9()
                    killed = time.perf_counter()
                x = rng.standard_normal((256, 4)).astype(np.float32)
                start = time.perf_counter()
                y = c.infer("w", x)
                took = time.perf_counter() - start
                ok = np.allclose(y, w @ x, rtol=1e-4, atol=1e-3)
                since = "" if i < args.before else f"{start - killed:7.2f}"
                rows.append((i, since, took * 1000, victim_state(c, victim_id), ok))
        if args.logs:
            print(mesh.logs(tail=1_000_000))
    print(f"{'#':>3} {'t since kill s':>14} {'latency ms':>11} {'victim seen as':>15} {'exact':>6}")
    for i, since, ms, state, ok in rows:
        print(f"{i:>3} {since:>14} {ms:>11.1f} {state:>15} {str(ok):>6}")


if __name__ == "__main__":
    main()
