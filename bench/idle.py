"""Idle cost: N daemons on loopback doing nothing; RSS and CPU per daemon (issue 13).

Starts a bootstrap and N-1 joiners (real ``sedma daemon`` processes, one BLAS thread each,
as every bench here) in batches of --batch: each batch is spawned at once, and the next
one only after the bootstrap sees every member so far, so the start-up storm stays
bounded (100 daemons started together on 2 cores saturate them for a minute: probes time
out, suspicions and refutations follow). Then it waits until a sample of them sees the
whole mesh, lets it settle, and samples every daemon's CPU time (utime+stime from
/proc/PID/stat) over --window seconds and its memory (VmRSS, and PSS — RSS with shared
library pages divided among the processes that share them — from /proc/PID/smaps_rollup).
Two figures: start-up (CPU each daemon used from its spawn until the mesh converged) and
steady state (the window after --settle). Targets: <= 40 MB RSS and <= 0.3 % of one core
per daemon with 100 daemons, in steady state.

Each daemon runs in a session of its own (``setsid``): with the kernel's autogroup
scheduling, processes of one session share one CPU share, so 100 daemons started from one
shell would get 1/k of the machine between them (k = sessions competing on this shared
machine) and never settle; in their own sessions each gets what a real daemon would.

Run by hand:  python bench/idle.py [--n 100] [--batch 10] [--settle 30] [--window 60]
              [--tree /path/to/other/checkout]   (A/B: daemons run that tree's code)
Prints a table and writes it to bench/out/idle.md. Every daemon is stopped at the end
(SIGTERM to all at once, SIGKILL after 20 s), also on Ctrl-C. A daemon that dies is
reported with the tail of its log (a segfault's faulthandler trace lands there).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

OUT = Path(__file__).resolve().parent / "out"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import rssmap  # noqa: E402  (bench/rssmap.py: RSS by mapping)
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


def anonymous_kb(pid: int) -> int:
    """Private anonymous memory (the Python heap, arenas, buffers) in kB."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    return 0


def status_or_none(node) -> dict | None:
    """``status`` of one daemon, or None (reported) when it does not answer: on a
    saturated machine one slow or dead daemon must not lose the whole run's figures."""
    try:
        return node.status()
    except Exception as exc:   # NotRunning, a timeout, a dead daemon: say so, go on
        print(f"{node.name}: no status ({exc})", file=sys.stderr)
        return None


def traffic(node) -> dict:
    """The daemon's message counters by type and its sessions (``status``'s traffic)."""
    return (status_or_none(node) or {}).get("traffic") or {}


def traffic_rates(before: list[dict], after: list[dict], elapsed: float) -> list[str]:
    """Table rows: per daemon messages/s by type (median and mean over daemons), and the
    sessions open and opened during the window."""
    pairs = [(b, a) for b, a in zip(before, after) if b and a]   # both answered
    before, after = [b for b, _ in pairs], [a for _, a in pairs]
    if not pairs:
        return ["| traffic | no daemon answered |"]
    tags = sorted({t for d in before + after for way in ("sent", "recv")
                   for t in d.get(way, {})})
    rows = []
    for way in ("sent", "recv"):
        for tag in tags:
            rates = [(a.get(way, {}).get(tag, 0) - b.get(way, {}).get(tag, 0)) / elapsed
                     for b, a in zip(before, after)]
            if any(rates):
                rows.append(f"| {way} {tag}, per s | {summary(rates)} |")
    kinds = sorted({k for d in before + after for k in d.get("events", {})})
    for kind in kinds:
        rates = [(a.get("events", {}).get(kind, 0) - b.get("events", {}).get(kind, 0))
                 / elapsed for b, a in zip(before, after)]
        rows.append(f"| membership events '{kind}', per s | {summary(rates)} |")
    if after and "advert_version" in after[0]:
        rates = [(a["advert_version"] - b["advert_version"]) / elapsed
                 for b, a in zip(before, after)]
        rows.append(f"| own advert published, per s | {summary(rates)} |")
    if after and "sessions" in after[0]:
        rows.append(f"| sessions open | {summary([float(a['sessions']) for a in after])} |")
        opened = [float(a["sessions_opened"] - b["sessions_opened"])
                  for b, a in zip(before, after)]
        rows.append(f"| sessions opened in the window | {summary(opened)} |")
    return rows


def profile(pid: int, seconds: float) -> subprocess.Popen:
    """py-spy record of one daemon (idle samples left out), as raw collapsed stacks and a
    flame graph in bench/out: what an idle daemon's few milliseconds a second are."""
    OUT.mkdir(exist_ok=True)
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--rate", "1000",
                             "--duration", str(int(seconds)), "--format", "raw",
                             "--output", str(OUT / "idle-profile.txt"), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def thread_times(pid: int) -> dict[str, tuple[str, float, int]]:
    """Per thread of ``pid``: (name, CPU seconds, voluntary context switches). A
    voluntary switch is the thread going to sleep, so their rate is its wake-ups."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                switches = next(int(line.split()[1]) for line in f
                                if line.startswith("voluntary_ctxt_switches"))
        except (OSError, StopIteration):
            continue          # the thread ended meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        out[tid] = (stat[stat.index("(") + 1:stat.rindex(")")],
                    (int(fields[11]) + int(fields[12])) / TICK, switches)
    return out


def thread_rows(before: dict, after: dict, elapsed: float) -> list[str]:
    """Table rows: each thread's share of a core and wake-ups a second over the window."""
    rows = []
    for tid, (name, cpu, switches) in sorted(after.items()):
        if tid in before:
            rows.append(f"| thread {tid} ({name}): CPU % of a core, wake-ups/s | "
                        f"{(cpu - before[tid][1]) / elapsed * 100:.3f} | "
                        f"{(switches - before[tid][2]) / elapsed:.2f} | |")
    return rows


def inspect(pid: int, seconds: float) -> list[str]:
    """After the CPU window (so tracing does not count in it): one daemon's syscalls by
    kind for ``seconds`` (``strace -c -f``: epoll_pwait is the loop's wake-ups), then a
    py-spy record (``--idle --threads``, collapsed stacks in bench/out/idle-spy.txt)."""
    OUT.mkdir(exist_ok=True)
    trace = OUT / "idle-strace.txt"
    subprocess.run(["timeout", "-s", "INT", str(seconds), "strace", "-c", "-f", "-p", str(pid),
                    "-o", str(trace)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
           "--rate", "1000", "--duration", str(int(seconds)), "--format", "raw", "--idle",
           "--threads", "--nonblocking", "--output", str(OUT / "idle-spy.txt")]
    subprocess.run(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [f"syscalls of one daemon over {seconds:.0f} s (strace -c -f), calls/s:"]
    try:
        for line in trace.read_text().splitlines()[2:]:
            parts = line.split()
            if len(parts) >= 5 and parts[-1] != "total" and parts[3].isdigit():
                lines.append(f"  {parts[-1]}: {int(parts[3]) / seconds:.1f}")
    except OSError as exc:
        lines.append(f"  (no strace output: {exc})")
    return lines


def wakeups(pid: int, seconds: float) -> list[str]:
    """One daemon's event-loop wake-ups by source over ``seconds``, from a timestamped
    trace of its loop thread (``strace -tt -T``, the main thread only).

    A wake-up is a blocking ``epoll_pwait`` (non-zero timeout) that returns. It returned
    0: a timer woke the loop; it sent something (a write) -- the probe -- or not -- the
    beat's loops alone. It returned events: a message arrived; a reply went out in the same
    wake-up -- a peer's ping, answered by the ack -- or not -- our probe's ack, push-pull.
    Timer wake-ups are also grouped by their instant within the second (10 ms bins): the
    beat and the probe on one phase give one group; two phases, two groups. The busy time
    (from the wake-up to the next blocking wait) is inflated by strace's own cost per
    system call, so it ranks the sources rather than measuring them."""
    OUT.mkdir(exist_ok=True)
    trace = OUT / "idle-wakeups.txt"
    subprocess.run(["timeout", "-s", "INT", str(seconds), "strace", "-tt", "-T", "-p", str(pid),
                    "-e", "trace=epoll_pwait,epoll_wait,read,readv,recvfrom,recvmsg,write,"
                    "writev,sendto,sendmsg", "-o", str(trace)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lines = trace.read_text().splitlines()
    except OSError as exc:
        return [f"  (no wake-up trace: {exc})"]
    classes: dict[str, list[float]] = {}
    phases: dict[int, int] = {}
    current: tuple[str, float, bool] | None = None    # (kind, woke at, wrote)
    wait = re.compile(r"epoll_p?wait\(\d+, \[.*\], \d+, (-?\d+)")

    def stamp(line: str) -> float:
        h, m, sec = line.split()[0].split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)

    def close(at: float) -> None:
        if current is None:
            return
        kind, woke, wrote = current
        name = {("timer", True): "timer, sent (the probe)",
                ("timer", False): "timer, nothing sent (beat loops only)",
                ("io", True): "message in, reply out (a peer's ping)",
                ("io", False): "message in, nothing out (our probe's ack, push-pull)",
                ("thread", True): "a thread's hand-off (eventfd), sent",
                ("thread", False): "a thread's hand-off (eventfd: database, executor)"}[
                    (kind, wrote)]
        classes.setdefault(name, []).append(at - woke)

    for line in lines:
        if "epoll_pwait(" in line or "epoll_wait(" in line:
            match = wait.search(line)
            if match is None or match.group(1) == "0" or "<unfinished" in line:
                continue                      # a poll that did not sleep: not a wake-up
            start = stamp(line)
            close(start)
            dur = float(line.rsplit("<", 1)[1].rstrip(">")) if line.endswith(">") else 0.0
            woke = start + dur
            ret = line.rsplit("=", 1)[1].split()[0]
            kind = "timer" if ret == "0" else "io"
            if kind == "timer":
                phases[int((woke % 1.0) * 100)] = phases.get(int((woke % 1.0) * 100), 0) + 1
            current = (kind, woke, False)
            first_read = True
        elif current is not None and line.split()[1].startswith(("write", "send")):
            current = (current[0], current[1], True)
        elif current is not None and line.split()[1].startswith("read"):
            if first_read and current[0] == "io" and '"\\1\\0\\0\\0\\0\\0\\0\\0"' in line:
                current = ("thread", current[1], current[2])
            first_read = False
    out = [f"loop thread wake-ups over {seconds:.0f} s (strace -tt -T, main thread), per s "
           f"| busy ms (median, strace-inflated):"]
    for name, busy in sorted(classes.items()):
        out.append(f"  {name}: {len(busy) / seconds:.2f} | {statistics.median(busy) * 1000:.2f}")
    groups = sorted(phases.items(), key=lambda kv: -kv[1])
    out.append("  timer wake-ups by instant within the second (10 ms bins, top 4): " +
               ", ".join(f".{b:02d}: {c / seconds:.2f}/s" for b, c in groups[:4]))
    return out


def lag_ticker_fast(node) -> bool:
    """Whether the daemon's loop-lag ticker runs at its fast (20 ms, work under way) pace:
    50 wake-ups a second, which an idle daemon should not be paying."""
    lag = (status_or_none(node) or {}).get("loop_lag") or {}
    return lag.get("interval_ms", 1000.0) < 100.0


def rss_by_mapping(pids: list[int]) -> list[str]:
    """Table rows: each mapping group's RSS and PSS, median over the daemons, largest first
    (libraries are shared: they count in full in each RSS, divided in PSS)."""
    per = [rssmap.breakdown(pid) for pid in pids]
    names = {name for groups in per for name in groups}
    rows = []
    for name in names:
        rss = statistics.median(g.get(name, {}).get("rss", 0) for g in per) / 2**20
        pss = statistics.median(g.get(name, {}).get("pss", 0) for g in per) / 2**20
        if rss >= 0.3:
            rows.append((rss, f"| RSS / PSS in {name}, MB (median) | {rss:.1f} / {pss:.1f} | | |"))
    return [row for _, row in sorted(rows, reverse=True)]


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def summary(values: list[float]) -> str:
    return (f"{statistics.median(values):.2f} | {statistics.mean(values):.2f} | "
            f"{max(values):.2f}")


def stop_all(nodes: list, grace: float = 20.0) -> None:
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


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def members(node) -> int:
    return node.status()["members"]


def start_mesh(root: Path, n: int, batch: int, extra: list[str], procs: list) -> None:
    """Bootstrap, then joiners ``batch`` at a time; each batch waits for the bootstrap to
    see everyone started so far (bounded: a slow batch is reported, not waited forever)."""
    procs.append(DaemonProc(root / "n1", "n1", extra=extra, prefix=["setsid"]).start(600))
    boot = [procs[0].address]
    names = [f"n{i}" for i in range(2, n + 1)]
    for group in chunks(names, max(1, batch)):
        fresh = [DaemonProc(root / name, name, boot, extra, prefix=["setsid"]).spawn()
                 for name in group]
        procs += fresh
        for node in fresh:
            node.wait_ready(600)
        try:
            wait_for(lambda: members(procs[0]) >= len(procs), 300,
                     f"the bootstrap to see {len(procs)} members")
        except TimeoutError as exc:
            print(f"batch slow: {exc}", file=sys.stderr)


def dead(nodes: list) -> list[str]:
    """Names and log tails of daemons that exited (a crash must not go unnoticed)."""
    return [f"{n.name} exited {n.proc.returncode}:\n{n.log_path.read_text()[-3000:]}"
            for n in nodes if n.proc is not None and n.proc.poll() is not None]


def main() -> None:
    global DaemonProc, wait_for
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch", type=int, default=10,
                    help="daemons spawned at once (n for all together, as before)")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds after convergence")
    ap.add_argument("--window", type=float, default=60.0, help="CPU sampling window, s")
    ap.add_argument("--extra", default="", help="extra daemon flags, space separated")
    ap.add_argument("--profile", type=float, default=0.0,
                    help="py-spy record the second daemon for this many seconds of the "
                         "window (collapsed stacks in bench/out/idle-profile.txt)")
    ap.add_argument("--inspect", type=float, default=0.0,
                    help="after the window, strace -c and py-spy (--idle --threads) the "
                         "second daemon for this many seconds each")
    ap.add_argument("--wakeups", type=float, default=0.0,
                    help="after the window (and --inspect), trace the second daemon's loop "
                         "thread for this many seconds: its wake-ups by source")
    ap.add_argument("--tree", default=str(HERE), help="source tree the daemons run")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.tree).resolve()))
    from node.localmesh import DaemonProc, wait_for   # that tree's, which sets PYTHONPATH
    os.environ["PYTHONFAULTHANDLER"] = "1"            # a crash leaves its trace in the log
    load_before = os.getloadavg()
    nodes: list = []
    with tempfile.TemporaryDirectory(prefix="sedma-idle-") as tmp:
        root = Path(tmp)
        try:
            t0 = time.monotonic()
            start_mesh(root, args.n, args.batch, args.extra.split(), nodes)
            started = time.monotonic() - t0
            sample = nodes[:: max(1, args.n // 5)]
            for node in sample:
                try:
                    wait_for(lambda: members(node) >= args.n, 300,
                             f"{node.name} to see all {args.n} members")
                except TimeoutError as exc:
                    print(f"not converged: {exc}", file=sys.stderr)
            converged = time.monotonic() - t0
            pids = [node.proc.pid for node in nodes]
            startup_cpu = [cpu_seconds(pid) for pid in pids]   # spawn until convergence
            startup_mem = [memory_kb(pid) for pid in pids]
            time.sleep(args.settle)
            traffic0 = [traffic(node) for node in nodes]
            cpu0 = {pid: cpu_seconds(pid) for pid in pids}
            threads0 = thread_times(nodes[1].proc.pid)
            w0 = time.monotonic()
            spy = profile(nodes[1].proc.pid, args.profile) if args.profile else None
            time.sleep(args.window)
            if spy is not None:
                spy.wait()
            elapsed = time.monotonic() - w0
            cpu1 = {pid: cpu_seconds(pid) for pid in pids}
            per_thread = thread_rows(threads0, thread_times(nodes[1].proc.pid), elapsed)
            traffic1 = [traffic(node) for node in nodes]
            fast_lag = sum(1 for node in nodes if lag_ticker_fast(node))
            cpu = [(cpu1[pid] - cpu0[pid]) / elapsed * 100 for pid in pids]
            mem = [memory_kb(pid) for pid in pids]
            anon = [anonymous_kb(pid) / 1024 for pid in pids]
            by_mapping = rss_by_mapping(pids)
            nthreads = [threads(pid) for pid in pids]
            seen = [members(node) for node in sample]
            crashed = dead(nodes)
            inspected = inspect(nodes[1].proc.pid, args.inspect) if args.inspect else []
            if args.wakeups:
                inspected += wakeups(nodes[1].proc.pid, args.wakeups)
        finally:
            crashed_late = dead(nodes)
            stop_all(nodes)
    load_after = os.getloadavg()
    rss = [r / 1024 for r, _ in mem]
    pss = [p / 1024 for _, p in mem]
    lines = [f"idle: {args.n} daemons on loopback ({args.tree}), started {args.batch} at a "
             f"time in {started:.0f} s, sample saw {min(seen)}-{max(seen)} members after "
             f"{converged:.0f} s; {args.settle:.0f} s settle, CPU over {elapsed:.0f} s; "
             f"load {load_before[0]:.2f} -> {load_after[0]:.2f} (2 cores)", "",
             "| per daemon | median | mean | max |", "|---|---:|---:|---:|",
             f"| start-up CPU, s (spawn to convergence) | {summary(startup_cpu)} |",
             f"| start-up RSS, MB | {summary([r / 1024 for r, _ in startup_mem])} |",
             f"| steady CPU, % of one core | {summary(cpu)} |",
             f"| steady RSS, MB | {summary(rss)} |",
             f"| steady PSS, MB (shared pages divided) | {summary(pss)} |",
             f"| steady anonymous, MB (private heap) | {summary(anon)} |",
             f"| threads | {summary([float(t) for t in nthreads])} |",
             *by_mapping,
             *traffic_rates(traffic0, traffic1, elapsed),
             f"| lag ticker fast (20 ms) at the window's end, daemons | {fast_lag} of {len(nodes)} |",
             "", f"one daemon ({nodes[1].name}) by thread, over the window:", "",
             "| thread | CPU % | wake-ups/s | |", "|---|---:|---:|---|", *per_thread,
             "", *inspected, "", f"all {args.n} together, steady: {sum(cpu):.1f} % of one core, RSS "
             f"{sum(rss):.0f} MB, PSS {sum(pss):.0f} MB; start-up CPU {sum(startup_cpu):.0f} s"]
    for report in crashed or crashed_late:
        lines += ["", "DAEMON DIED: " + report]
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "idle.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
