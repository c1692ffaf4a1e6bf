"""Soak: a 3-node loopback mesh under a steady stream of requests with deploy churn.

For ``--duration`` seconds (default 30 minutes) one client loop keeps the mesh busy:
``matmul`` jobs submitted on each node in turn, ``infer`` on the live deployments, and every
``--churn`` seconds a new matrix deployed (replicas 2) and, where the daemon has
``undeploy``, the oldest one undeployed so a few stay live. Every result is checked exact
(device ``ideal``). Every ``--sample`` seconds it records, per daemon, the resident set
(``/proc/PID/status`` VmRSS), open file descriptors (``/proc/PID/fd``) and asyncio tasks
(``sedma status``), and prints them as a table; the RssAnon column separates heap growth
from file-backed pages (mapped libraries, SQLite's WAL index).

Chasing growth: ``SEDMA_TRACEMALLOC=1`` makes every daemon trace allocations (slow) and
write its top allocation sites and their growth to ``tracemalloc-N.txt`` in its data dir
on ``kill -USR1 PID`` (node/runtime/memtrace.py), with RSS before and after ``malloc_trim``. The
daemons inherit the environment, so glibc's own knobs (``MALLOC_ARENA_MAX=2``,
``MALLOC_MMAP_THRESHOLD_=131072``) can be tried for before/after runs.

After ``--warmup`` seconds (caches, the allocator and SQLite settle) it checks:
  * RSS of every daemon stays within +-10 % of its first post-warm-up sample;
  * file descriptors and tasks do not grow (the last third's mean is at most the first
    third's + 2).
Exit status 0 if every check passes, 1 otherwise (and on any wrong result).

Run by hand (``make soak``; not in CI):  python bench/soak.py [--duration 1800]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.client import Client, DaemonError  # noqa: E402
from node.localmesh import LocalMesh  # noqa: E402

RSS_BAND = 0.10
GROWTH_SLACK = 2.0


@dataclass
class Sample:
    t: float
    rss: list[int]      # bytes, one per daemon
    fds: list[int]
    tasks: list[int]
    resident: list[int] = field(default_factory=list)   # bytes of programmed blocks held
    jobs: list[int] = field(default_factory=list)       # job records the daemon keeps
    anon: list[int] = field(default_factory=list)       # bytes of RssAnon (heap, not file maps)


@dataclass
class Counters:
    matmuls: int = 0
    infers: int = 0
    deploys: int = 0
    undeploys: int = 0
    errors: list[str] = field(default_factory=list)


def rss_of(pid: int, field_name: str = "VmRSS") -> int:
    """A resident-memory line of /proc/PID/status in bytes (VmRSS, RssAnon, RssFile)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} for {pid}")


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def take_sample(mesh: LocalMesh, t: float) -> Sample:
    """RSS, fds, tasks, and what explains RSS: resident blocks and kept job records."""
    pids = [n.proc.pid for n in mesh.nodes]
    status = [n.status() for n in mesh.nodes]
    jobs = []
    for node in mesh.nodes:
        with Client(node.socket) as c:
            jobs.append(len(c.jobs()))
    return Sample(t, [rss_of(p) for p in pids], [fds_of(p) for p in pids],
                  [s["tasks"] for s in status],
                  [s["memory"]["resident_blocks"] for s in status], jobs,
                  [rss_of(p, "RssAnon") for p in pids])


def verdict(samples: list[Sample], warmup: float) -> list[str]:
    """Failed checks, one line each (empty: the soak passed). A pure function of samples."""
    after = [s for s in samples if s.t >= warmup]
    if len(after) < 3:
        return [f"only {len(after)} samples after the {warmup:.0f}s warm-up; run longer"]
    problems = []
    third = max(1, len(after) // 3)
    for i in range(len(after[0].rss)):
        base = after[0].rss[i]
        worst = max((s.rss[i] for s in after), key=lambda r: abs(r - base))
        if abs(worst - base) > RSS_BAND * base:
            problems.append(f"node {i + 1}: RSS {base / 2**20:.1f} -> {worst / 2**20:.1f} MiB, "
                            f"outside +-{RSS_BAND:.0%}")
        for name in ("fds", "tasks"):
            first = statistics.mean(getattr(s, name)[i] for s in after[:third])
            last = statistics.mean(getattr(s, name)[i] for s in after[-third:])
            if last > first + GROWTH_SLACK:
                problems.append(f"node {i + 1}: {name} grew from {first:.1f} to {last:.1f}")
    return problems


def rand(shape, rng) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def exact(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and bool(
        np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max())))


class Workload:
    """The request stream: matmuls on each node in turn, infers, deploy churn."""

    def __init__(self, mesh: LocalMesh, n: int, churn: float, live: int) -> None:
        self.mesh, self.n, self.churn, self.live = mesh, n, churn, live
        self.rng = np.random.default_rng(7)
        self.clients = [Client(node.socket).__enter__() for node in mesh.nodes]
        self.deployed: list[tuple[str, np.ndarray]] = []
        self.count = Counters()
        self.next_churn = 0.0
        self.step = 0

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def run_one(self, now: float) -> None:
        c = self.clients[self.step % len(self.clients)]
        self.step += 1
        if now >= self.next_churn:
            self._churn(c)
            self.next_churn = now + self.churn
        a, b = rand((self.n, self.n), self.rng), rand((self.n, 32), self.rng)
        self._check("matmul", c.matmul(a, b, timeout=120), a @ b)
        self.count.matmuls += 1
        for name, w in self.deployed[-2:]:
            x = rand((self.n, 8), self.rng)
            self._check(f"infer {name}", c.infer(name, x), w @ x)
            self.count.infers += 1

    def _churn(self, c: Client) -> None:
        name = f"soak{self.count.deploys}"
        w = rand((self.n, self.n), self.rng)
        c.deploy(name, w, replicas=2, timeout=120)
        self.deployed.append((name, w))
        self.count.deploys += 1
        undeploy = getattr(c, "undeploy", None) if _has(c, "undeploy") else None
        while undeploy is not None and len(self.deployed) > self.live:
            old, _ = self.deployed.pop(0)
            undeploy(old)
            self.count.undeploys += 1

    def _check(self, what: str, got: np.ndarray, want: np.ndarray) -> None:
        if not exact(got, want):
            self.count.errors.append(f"{what}: wrong result")


def _has(client: Client, name: str) -> bool:
    try:
        getattr(client, name)
    except AttributeError:
        return False
    return True


def print_table(samples: list[Sample], names: list[str]) -> None:
    head = " | ".join(f"{n} RSS MiB | anon MiB | fds | tasks | blocks MiB | jobs" for n in names)
    print(f"| t (s) | {head} |")
    print("|---:|" + "---:|" * (6 * len(names)))
    for s in samples:
        cells = " | ".join(f"{r / 2**20:.1f} | {a / 2**20:.1f} | {f} | {k} | {b / 2**20:.1f} | {j}"
                           for r, a, f, k, b, j in zip(s.rss, s.anon, s.fds, s.tasks,
                                                       s.resident, s.jobs))
        print(f"| {s.t:.0f} | {cells} |")


def soak(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="sedma-soak-") as tmp, LocalMesh(Path(tmp)) as mesh:
        mesh.start(args.nodes, extra=["--capacity", "10"])
        mesh.wait_converged(alive=args.nodes - 1, timeout=60)
        work = Workload(mesh, args.n, args.churn, args.live)
        samples: list[Sample] = []
        start = time.monotonic()
        next_sample = 0.0
        try:
            while (now := time.monotonic() - start) < args.duration:
                if now >= next_sample:
                    samples.append(take_sample(mesh, now))
                    last = samples[-1]
                    print(f"[{now:6.0f}s] RSS MiB {[round(r / 2**20, 1) for r in last.rss]}"
                          f" fds {last.fds} tasks {last.tasks} jobs {last.jobs}", flush=True)
                    next_sample = now + args.sample
                try:
                    work.run_one(now)
                except DaemonError as exc:
                    work.count.errors.append(f"request failed: {exc}")
            samples.append(take_sample(mesh, time.monotonic() - start))
        finally:
            work.close()
        names = [n.name for n in mesh.nodes]
    c = work.count
    print()
    print_table(samples, names)
    print(f"\n{args.duration:.0f}s: {c.matmuls} matmuls, {c.infers} infers, {c.deploys} deploys, "
          f"{c.undeploys} undeploys ({'undeploy available' if c.undeploys else 'no undeploy: deployed matrices accumulate'}), "
          f"{len(c.errors)} errors")
    problems = verdict(samples, args.warmup) + c.errors[:10]
    print("PASS: RSS flat within +-10 % after warm-up, no fd or task growth, every result exact"
          if not problems else "FAIL:\n  " + "\n  ".join(problems))
    return 0 if not problems else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds (default 1800)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds before the checks start (default: a fifth, at most 300)")
    ap.add_argument("--sample", type=float, default=None,
                    help="seconds between samples (default: duration/30, at least 5)")
    ap.add_argument("--churn", type=float, default=5.0,
                    help="seconds between deploys (a huge value: one deploy, no churn)")
    ap.add_argument("--live", type=int, default=3, help="deployments kept live (with undeploy)")
    ap.add_argument("--n", type=int, default=256, help="matrix size")
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args()
    args.warmup = min(args.duration / 5, 300.0) if args.warmup is None else args.warmup
    args.sample = max(5.0, args.duration / 30) if args.sample is None else args.sample
    sys.exit(soak(args))


if __name__ == "__main__":
    main()
