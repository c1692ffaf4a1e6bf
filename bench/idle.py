"""Idle cost: N daemons on loopback doing nothing; RSS and CPU per daemon (issue 13).

Starts a bootstrap and N-1 joiners (real ``sedma daemon`` processes, one BLAS thread each,
as every bench here), waits until a sample of them sees the whole mesh, lets it settle,
then samples every daemon's CPU time (utime+stime from /proc/PID/stat) over --window
seconds and its memory (VmRSS, and PSS — RSS with shared library pages divided among the
processes that share them — from /proc/PID/smaps_rollup). Targets: <= 40 MB RSS and
<= 0.3 % of one core per daemon with 100 daemons.

Each daemon runs in a session of its own (``setsid``): with the kernel's autogroup
scheduling, processes of one session share one CPU share, so 100 daemons started from one
shell would get 1/k of the machine between them (k = sessions competing on this shared
machine) and never settle; in their own sessions each gets what a real daemon would.

Run by hand:  python bench/idle.py [--n 100] [--settle 30] [--window 60]
Prints a table and writes it to bench/out/idle.md. Every daemon is stopped at the end
(SIGTERM to all at once, SIGKILL after 20 s), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.localmesh import DaemonProc, wait_for  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK     # utime, stime


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def summary(values: list[float]) -> str:
    return (f"{statistics.median(values):.2f} | {statistics.mean(values):.2f} | "
            f"{max(values):.2f}")


def stop_all(nodes: list[DaemonProc], grace: float = 20.0) -> None:
    """SIGTERM every daemon at once, then SIGKILL what is still running after ``grace``."""
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.terminate()
    deadline = time.monotonic() + grace
    for node in nodes:
        if node.proc is None:
            continue
        try:
            node.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(10)
        node.stop()        # closes its log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--settle", type=float, default=30.0, help="seconds after convergence")
    ap.add_argument("--window", type=float, default=60.0, help="CPU sampling window, s")
    ap.add_argument("--extra", default="", help="extra daemon flags, space separated")
    args = ap.parse_args()
    load_before = os.getloadavg()
    nodes: list[DaemonProc] = []
    with tempfile.TemporaryDirectory(prefix="sedma-idle-") as tmp:
        root = Path(tmp)
        try:
            t0 = time.monotonic()
            extra = args.extra.split()
            nodes.append(DaemonProc(root / "n1", "n1", extra=extra, prefix=["setsid"]).start(600))
            boot = [nodes[0].address]
            fresh = [DaemonProc(root / f"n{i}", f"n{i}", boot, extra, prefix=["setsid"]).spawn()
                     for i in range(2, args.n + 1)]
            nodes += fresh
            for node in fresh:
                node.wait_ready(600)
            started = time.monotonic() - t0
            sample = nodes[:: max(1, args.n // 5)]
            for node in sample:
                try:
                    wait_for(lambda: node.status()["members"] >= args.n, 300,
                             f"{node.name} to see all {args.n} members")
                except TimeoutError as exc:
                    print(f"not converged: {exc}", file=sys.stderr)
            converged = time.monotonic() - t0
            time.sleep(args.settle)
            pids = [node.proc.pid for node in nodes]
            cpu0 = {pid: cpu_seconds(pid) for pid in pids}
            w0 = time.monotonic()
            time.sleep(args.window)
            elapsed = time.monotonic() - w0
            cpu = [(cpu_seconds(pid) - cpu0[pid]) / elapsed * 100 for pid in pids]
            mem = [memory_kb(pid) for pid in pids]
            nthreads = [threads(pid) for pid in pids]
            members = [node.status()["members"] for node in sample]
        finally:
            stop_all(nodes)
    load_after = os.getloadavg()
    rss = [r / 1024 for r, _ in mem]
    pss = [p / 1024 for _, p in mem]
    lines = [f"idle: {args.n} daemons on loopback, {args.settle:.0f} s settle, CPU over "
             f"{elapsed:.0f} s; started in {started:.0f} s, sample saw {min(members)}-"
             f"{max(members)} members after {converged:.0f} s; load {load_before[0]:.2f} -> "
             f"{load_after[0]:.2f} (2 cores)", "",
             "| per daemon | median | mean | max |", "|---|---:|---:|---:|",
             f"| CPU, % of one core | {summary(cpu)} |",
             f"| RSS, MB | {summary(rss)} |",
             f"| PSS, MB (shared pages divided) | {summary(pss)} |",
             f"| threads | {summary([float(t) for t in nthreads])} |",
             "", f"all {args.n} together: {sum(cpu):.1f} % of one core, RSS {sum(rss):.0f} MB, "
             f"PSS {sum(pss):.0f} MB"]
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "idle.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
