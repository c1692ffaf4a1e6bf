"""Where one B=1 ``infer`` request's time goes (issue 13): a per-stage breakdown and profiles.

Two daemons on loopback hold one row block each of W (N x N float32, replicas 1), as in the
issue's yardstick. First, with ``$SEDMA_SPANS`` set (node/runtime/spans.py), the client and both
daemons mark each stage boundary of every request with perf_counter (one clock for every
process of the machine); the script merges the marks and prints the median of each stage:
client encode, socket, coordinator, peer hop, compute, gather, reply. Then, on a fresh
mesh whose coordinator runs under cProfile, it measures:

- numpy in-process: W @ x, and one row block's GEMV (what each daemon computes);
- client encode + decode of the request and response (codec only, no socket);
- a local API round trip that does no work (an unknown job id: socket + dispatch);
- infer on the 2-node mesh, end to end (median and p99 of --requests requests);
- the coordinator's profile (main thread only: the event loop; compute runs on executor
  threads and is not in it) and the client's, top functions by own time.

With ``--oneshot N`` it profiles one-shot ``matmul`` jobs instead (N x N A and B, both
shipped; the coordinator keeps one row share, the peer computes the other): the stages of
each job from the client's submit to its result, and the CPU time each daemon spent per job.

Run by hand:  python bench/profile_infer.py [--n 4096] [--requests 400] [--b 1]
              python bench/profile_infer.py --oneshot 2048 [--requests 20]
Prints the tables and writes them to bench/out/profile_infer.md.
"""

from __future__ import annotations

import argparse
import contextlib
import asyncio
import cProfile
import io
import os
import statistics
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node import api  # noqa: E402
from node.runtime import spans  # noqa: E402
import taskaccount  # noqa: E402  (bench/, beside this script)
from node.client import AsyncClient, Client, DaemonError  # noqa: E402
from node.localmesh import DaemonProc, LocalMesh  # noqa: E402
from protocol.messages import decode_message, encode_message  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
ROOT = Path(__file__).resolve().parent.parent


#: Runs ``python -m node ...`` under cProfile timing the main thread's *CPU* time
#: (time.thread_time): on a busy machine wall-clock profiles charge preemption and GIL
#: waits to whichever function was running, which hides where the loop's CPU goes.
CPU_PROFILE = """
import cProfile, runpy, sys, time
out = sys.argv.pop(1)
sys.argv = ["sedma", *sys.argv[3:]]   # drop "-m node"
prof = cProfile.Profile(time.thread_time)
prof.enable()
try:
    runpy.run_module("node", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    prof.disable()
    prof.dump_stats(out)
"""


class ProfiledDaemon(DaemonProc):
    """A daemon whose main thread runs under a CPU-time cProfile, written at its clean exit."""

    def __init__(self, *a, profile_path: Path, **kw) -> None:
        super().__init__(*a, **kw)
        self.profile_path = profile_path

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("-m")
        return [*cmd[:i], "-c", CPU_PROFILE, str(self.profile_path), *cmd[i:]]


def timed(fn, count: int) -> list[float]:
    out = []
    for _ in range(count):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def ms(values: list[float], q: float = 50) -> float:
    return float(np.percentile(values, q)) * 1e3


def top(stats_source, limit: int = 18, key: str = "tottime", only: str | None = None) -> str:
    """The ``limit`` heaviest functions by ``key``; ``only`` keeps paths matching a regex."""
    buf = io.StringIO()
    st = pstats.Stats(stats_source, stream=buf)
    if only is None:
        st.strip_dirs().sort_stats(key).print_stats(limit)
    else:
        st.sort_stats(key).print_stats(only, limit)
    return buf.getvalue()


async def infer_loop(sock: Path, x: np.ndarray, count: int, prof: cProfile.Profile | None) -> list[float]:
    lat = []
    async with AsyncClient(sock) as c:
        for _ in range(5):
            await c.infer("w", x)
        if prof:
            prof.enable()
        for _ in range(count):
            t = time.perf_counter()
            await c.infer("w", x)
            lat.append(time.perf_counter() - t)
        if prof:
            prof.disable()
    return lat


#: (label, role, first mark, role, second mark): the stages of one request, in order.
#: Every boundary is a mark taken *before* handing bytes on (or after receiving them), so
#: the stages are causally ordered even when a process is preempted right after a write
#: (a mark after a write can land after the other side already answered). The client's
#: encode alone is the separately measured codec row below.
STAGES = [
    ("client encode + write, socket, coordinator read + decode", "client", "client.send",
     "coord", "coord.decoded"),
    ("coordinator: plan, rank, send share to the peer", "coord", "coord.decoded", "coord",
     "coord.dispatch"),
    ("peer hop out (seal, TCP, open, decode, task)", "coord", "coord.dispatch", "peer", "peer.recv"),
    ("peer: validate X, pin block, queue for a thread", "peer", "peer.recv", "peer", "compute.start"),
    ("peer: compute (its row block; first chunk start to last chunk end)", "peer", "compute.start", "peer", "compute.end"),
    ("peer hop back (thread->loop, reply seal, TCP, open, wake)", "peer", "compute.end", "coord",
     "coord.peer_reply"),
    ("coordinator: gather + finish + answer", "coord", "coord.peer_reply", "coord", "coord.answered"),
    ("coordinator encode + write, socket, client read + decode", "coord", "coord.answered",
     "client", "client.recv"),
]
#: Marks that repeat within a request (a wide read's chunks) and count at their last.
LAST = {"compute.end"}
#: Not on the critical path when the peer is slower, shown for comparison.
SIDE = [
    ("(coordinator: decoded -> own compute start)", "coord", "coord.decoded", "coord", "compute.start"),
    ("(coordinator: own compute, in parallel)", "coord", "compute.start", "coord", "compute.end"),
    ("(coordinator: own compute end -> answered)", "coord", "compute.end", "coord", "coord.answered"),
]


def breakdown(events: list[tuple[float, int, str]], roles: dict[int, str]) -> list[tuple[str, float, float]]:
    """Median and p90 (ms) of each stage, over requests split at the client's sends."""
    requests: list[dict[tuple[str, str], float]] = []
    for t, pid, name in events:
        role = roles.get(pid)
        if role is None:
            continue
        if role == "client" and name == "client.send":
            requests.append({})
        if requests:   # the first occurrence in the request; compute ends: the last
            if name in LAST:
                requests[-1][(role, name)] = t
            else:
                requests[-1].setdefault((role, name), t)
    out = []
    for label, r0, m0, r1, m1 in STAGES + [("total (client send -> client recv)", "client",
                                             "client.send", "client", "client.recv")] + SIDE:
        vals = [req[(r1, m1)] - req[(r0, m0)] for req in requests
                if (r0, m0) in req and (r1, m1) in req]
        if vals:
            out.append((label, ms(vals), ms(vals, 90)))
    return out


@contextlib.contextmanager
def marked_mesh(root: Path):
    """Two daemons (coordinator n1, peer n2) that, like this process, mark span stages into
    ``root / "marks"``; every process's marks are there once the block exits."""
    marks = root / "marks"
    marks.mkdir()
    os.environ["SEDMA_SPANS"] = str(marks)
    spans.DIR = str(marks)
    try:
        with LocalMesh(root) as mesh:
            coord = mesh.add("n1")
            peer = mesh.add("n2")
            mesh.wait_converged(alive=1)
            yield coord, peer
            mesh.stop()          # the daemons write their marks as they stop
        spans.dump(marks)
    finally:
        os.environ.pop("SEDMA_SPANS", None)
        spans.DIR = None


def span_run(n: int, w: np.ndarray, x: np.ndarray,
             count: int) -> tuple[list, float, dict[str, tuple[float, float]]]:
    """The per-stage breakdown on a fresh two-daemon mesh (no profiler), and each daemon's
    CPU per request (all threads, and the event loop's thread alone), in ms. CPU time is
    the steadier figure on a shared machine: it does not count waiting for a core."""
    with tempfile.TemporaryDirectory(prefix="sedma-spans-") as tmp:
        marks = Path(tmp) / "marks"
        with marked_mesh(Path(tmp)) as (coord, peer):
            with Client(coord.socket) as c:
                c.deploy("w", w, device="ideal", replicas=1)
            spans._marks.clear()
            daemons = {"coordinator": coord.proc.pid, "peer": peer.proc.pid}
            cpu0 = {k: (_cpu_seconds(p), _cpu_seconds(p, p)) for k, p in daemons.items()}
            lat = asyncio.run(infer_loop(coord.socket, x, count, None))
            cpu = {k: tuple((after - before) * 1e3 / (count + 5) for after, before in
                            zip((_cpu_seconds(p), _cpu_seconds(p, p)), cpu0[k]))
                   for k, p in daemons.items()}
            roles = {coord.proc.pid: "coord", peer.proc.pid: "peer", os.getpid(): "client"}
        events = spans.load(marks)
    # warm-up requests were marked too: keep the last ``count`` requests
    sends = [i for i, e in enumerate(events) if e[2] == "client.send" and roles.get(e[1]) == "client"]
    if len(sends) > count:
        events = events[sends[-count]:]
    return breakdown(events, roles), ms(lat), cpu


#: The stages of one one-shot job (``--oneshot``), split at the bench's own ``bench.job``
#: mark. The first occurrence of a mark in a job counts, except those in ONESHOT_LAST.
#: Since oneshot4 a peer's share goes as B (``MatmulOperand``) and then row chunks
#: (``MatmulRows``), each computed as it arrives; this node's own share computes at once.
ONESHOT_STAGES = [
    ("client submit: encode, shm/socket, coordinator decode", "client", "bench.job", "coord",
     "coord.decoded"),
    ("coordinator: validate A and B (NaN scan, executor)", "coord", "coord.decoded", "coord",
     "job.validated"),
    ("coordinator: start job, plan, encode the share", "coord", "job.validated", "coord",
     "share.send"),
    ("share out: coordinator seals + writes B", "coord", "share.send", "coord",
     "session.sent"),
    ("share out: coordinator seals + writes B and every A chunk", "coord", "share.send",
     "coord", "share.handed"),
    ("share out: send -> peer's first bulk frame", "coord", "share.send", "peer", "link.bulk_in"),
    ("share out: peer's first frame -> B decoded", "peer", "link.bulk_in", "peer",
     "peer.operand_recv"),
    ("peer: validate B (executor, while the chunks travel)", "peer", "peer.operand_recv",
     "peer", "peer.validated"),
    ("peer: B decoded -> first chunk decoded", "peer", "peer.operand_recv", "peer",
     "peer.share_recv"),
    ("peer: compute (first chunk start -> last chunk end, scan fused)", "peer",
     "compute.start", "peer", "compute.end"),
    ("result back: peer's last compute end -> its reply handed to the link", "peer",
     "compute.end", "peer", "peer.replied"),
    ("result back: peer's last compute end -> coordinator has the last chunk", "peer",
     "compute.end", "coord", "share.reply"),
    ("coordinator: gathered -> result file written", "coord", "job.gathered", "coord",
     "job.saved"),
    ("job saved -> client has the result (wait + result calls)", "coord", "job.saved",
     "client", "bench.done"),
    ("(coordinator: own share compute, first start -> last end)", "coord", "compute.start",
     "coord", "compute.end"),
    ("(coordinator: job start -> own share done)", "coord", "job.validated", "coord",
     "compute.end"),
    ("(coordinator: job start -> peer's last chunk in)", "coord", "job.validated", "coord",
     "share.reply"),
    ("total: submit -> result in the client", "client", "bench.job", "client", "bench.done"),
]
ONESHOT_LAST = {"compute.end", "link.bulk_in", "share.copied", "peer.replied", "share.reply"}


def oneshot_breakdown(events, roles) -> list[tuple[str, float, float]]:
    """Median and p90 (ms) of each one-shot stage, over jobs split at ``bench.job``."""
    jobs: list[dict[tuple[str, str], float]] = []
    for t, pid, name in events:
        role = roles.get(pid)
        if role is None:
            continue
        if role == "client" and name == "bench.job":
            jobs.append({})
        if jobs:
            key = (role, name)
            if name in ONESHOT_LAST and not (role == "peer" and name == "link.bulk_in"):
                jobs[-1][key] = t
            else:
                jobs[-1].setdefault(key, t)
    out = []
    for label, r0, m0, r1, m1 in ONESHOT_STAGES:
        vals = [job[(r1, m1)] - job[(r0, m0)] for job in jobs
                if (r0, m0) in job and (r1, m1) in job]
        if vals:
            out.append((label, ms(vals), ms(vals, 90)))
    return out


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds a process has used so far (all its threads), or one
    thread of it (``tid``; the main thread, which runs the event loop, has ``tid == pid``)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def split_summary(jobs: list[dict], names: dict[str, str]) -> str:
    """How the profiled jobs were split (by capacity or by transfer cost), rows per node."""
    seen: dict[str, int] = {}
    for job in jobs:
        split = job.get("split", {}).get("by", "?")
        rows = ", ".join(f"{names.get(nid, nid[:8])} {r}"
                         for nid, r in sorted(job.get("placement", {}).items()))
        key = f"by {split}: {rows}"
        seen[key] = seen.get(key, 0) + 1
    text = "Splits (jobs): " + "; ".join(f"{key} ({k})" for key, k in seen.items())
    predicted: dict[str, list[float]] = {}
    for job in jobs:       # the model's finish times, to set against the stages below
        for nid, t in job.get("split", {}).get("predicted_ms", {}).items():
            predicted.setdefault(names.get(nid, nid[:8]), []).append(t)
    if predicted:
        text += ("\nPredicted finish (model, median over the transfer-split jobs, ms from "
                 "the job's start): " + ", ".join(f"{name} {statistics.median(ts):.0f}"
                                                  for name, ts in sorted(predicted.items())))
    return text


def oneshot_run(n: int, count: int, py_spy: Path | None = None) -> str:
    """Per-stage breakdown and per-daemon CPU time of ``count`` one-shot N x N jobs."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    load_before = os.getloadavg()
    np_runs = max(5, count // 2)
    cpu_np = time.process_time()
    np_lat = timed(lambda: a @ b, np_runs)
    cpu_np = (time.process_time() - cpu_np) / (np_runs + 1)   # timed() warms up once
    with tempfile.TemporaryDirectory(prefix="sedma-spans-") as tmp:
        marks = Path(tmp) / "marks"
        with marked_mesh(Path(tmp)) as (coord, peer):
            lat: list[float] = []
            with Client(coord.socket) as c:
                expect = a @ b
                for _ in range(2):   # warm-up, and a check that the answer is right
                    got = c.matmul(a, b, device="ideal")
                    assert np.allclose(got, expect, rtol=1e-3, atol=1e-2)
                spans._marks.clear()
                pids = {"coordinator": coord.proc.pid, "peer": peer.proc.pid}
                names = {role: taskaccount.thread_names(pid) for role, pid in pids.items()}
                spies = ([taskaccount.PySpy(pid, py_spy / f"{role}.txt")
                          for role, pid in pids.items()] if py_spy else [])
                cpu0 = {p.proc.pid: _cpu_seconds(p.proc.pid) for p in (coord, peer)}
                per_job: list[dict[str, dict]] = []
                try:
                    for _ in range(count):
                        before = {role: taskaccount.sample(pid) for role, pid in pids.items()}
                        t = time.perf_counter()
                        spans.mark("bench.job")
                        c.matmul(a, b, device="ideal")
                        spans.mark("bench.done")
                        lat.append(time.perf_counter() - t)
                        per_job.append({role: taskaccount.delta(before[role],
                                                                taskaccount.sample(pid))
                                        for role, pid in pids.items()})
                finally:
                    for spy in spies:
                        spy.stop()
                cpu = {p.proc.pid: (_cpu_seconds(p.proc.pid) - cpu0[p.proc.pid]) / count
                       for p in (coord, peer)}
                jobs = c.jobs()[-count:]
                split = split_summary(jobs, {coord.id: "coordinator", peer.id: "peer"})
                account = account_table(jobs, per_job, names)
            roles = {coord.proc.pid: "coord", peer.proc.pid: "peer", os.getpid(): "client"}
        stages = oneshot_breakdown(spans.load(marks), roles)
    text = (f"profile_infer --oneshot: N={n} (A and B both shipped), {count} jobs, 2 daemons; "
            f"load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}\n\n"
            f"numpy in-process A @ B: p50 {ms(np_lat):.1f} ms; sedma end to end: p50 "
            f"{ms(lat):.1f} ms ({ms(np_lat) / ms(lat):.2f}x numpy)\n"
            f"CPU per job: coordinator {cpu[coord.proc.pid] * 1e3:.0f} ms, peer "
            f"{cpu[peer.proc.pid] * 1e3:.0f} ms (numpy in-process, CPU per A @ B: "
            f"{cpu_np * 1e3:.0f} ms)\n{split}\n\n| stage of one job | p50 ms | p90 ms |\n"
            "|---|---:|---:|\n")
    text += "\n".join(f"| {name} | {p50:.1f} | {p90:.1f} |" for name, p50, p90 in stages)
    text += "\n\n" + account
    if py_spy:
        text += "\n\n" + spy_table(py_spy, per_job, names)
    return text + "\n"


def account_table(jobs: list[dict], per_job: list[dict[str, dict]],
                  names: dict[str, dict[int, str]]) -> str:
    """CPU ms and minor page faults per job, per daemon thread, for jobs kept whole on the
    coordinator and for jobs split with the peer (each job's own /proc deltas)."""
    kinds = ["whole" if len(job.get("placement", {})) <= 1 else "split" for job in jobs]
    rows: dict[tuple[str, str], dict[str, list[tuple[float, int]]]] = {}
    for kind, used in zip(kinds, per_job):
        for role, threads in used.items():
            totals: dict[str, tuple[float, int]] = {}
            for tid, got in threads.items():
                name = names[role].get(tid, f"thread {tid}")
                cpu, flt = totals.get(name, (0.0, 0))
                totals[name] = (cpu + got.cpu_s, flt + got.minflt)
            totals["(all threads)"] = (sum(g.cpu_s for g in threads.values()),
                                       sum(g.minflt for g in threads.values()))
            for name, value in totals.items():
                rows.setdefault((role, name), {}).setdefault(kind, []).append(value)
    counts = {k: kinds.count(k) for k in ("whole", "split")}
    text = (f"CPU per job by thread (/proc task stats; mean ms and minor faults per job; "
            f"whole: {counts['whole']} jobs, split: {counts['split']} jobs)\n\n"
            "| daemon | thread | whole: CPU ms | whole: minor faults | split: CPU ms | "
            "split: minor faults |\n|---|---|---:|---:|---:|---:|\n")
    for (role, name), by_kind in sorted(rows.items()):
        cells = []
        for kind in ("whole", "split"):
            vals = by_kind.get(kind, [])
            if vals and counts[kind]:
                cells += [f"{sum(v[0] for v in vals) * 1e3 / counts[kind]:.0f}",
                          f"{sum(v[1] for v in vals) / counts[kind]:.0f}"]
            else:
                cells += ["–", "–"]
        if any(c not in ("0", "–") for c in cells):
            text += f"| {role} | {name} | " + " | ".join(cells) + " |\n"
    return text


def spy_table(directory: Path, per_job: list[dict[str, dict]],
              names: dict[str, dict[int, str]]) -> str:
    """Each daemon thread's CPU per job (/proc) shared out by what py-spy saw it doing in
    its working samples: a share of measured CPU, not sampled wall time (a thread waiting
    for a core is sampled as running, so sample counts alone overstate busy threads)."""
    text = ("py-spy record --native --threads during the same jobs: each thread's CPU per "
            "job (mean over all jobs) shared out by what its working samples were doing\n\n"
            "| daemon | thread | what | share of its samples | CPU ms per job |\n"
            "|---|---|---|---:|---:|\n")
    for role in ("coordinator", "peer"):
        cpu: dict[str, float] = {}
        for used in per_job:
            for tid, got in used[role].items():
                name = names[role].get(tid, f"thread {tid}")
                cpu[name] = cpu.get(name, 0.0) + got.cpu_s * 1e3 / len(per_job)
        for thread, kinds in sorted(taskaccount.categorise(directory / f"{role}.txt").items()):
            total = sum(kinds.values())
            for kind, k in kinds.most_common():
                msec = cpu.get(thread, 0.0) * k / total
                if msec >= 0.5:
                    text += f"| {role} | {thread} | {kind} | {k / total:.0%} | {msec:.1f} |\n"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--no-cprofile", action="store_true", help="only the per-stage breakdown")
    ap.add_argument("--oneshot", type=int, default=0, metavar="N",
                    help="profile one-shot N x N matmul jobs instead of infer")
    ap.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                    help="with --oneshot: record both daemons with py-spy (--native "
                         "--threads) during the jobs into DIR and print what each thread did")
    args = ap.parse_args()
    if args.oneshot:
        if args.py_spy:
            args.py_spy.mkdir(parents=True, exist_ok=True)
        text = oneshot_run(args.oneshot, min(args.requests, 400), args.py_spy)
        print(text)
        OUT.mkdir(exist_ok=True)
        (OUT / f"profile_oneshot_{args.oneshot}.md").write_text(text)
        return
    n, b = args.n, args.b
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n), dtype=np.float32)
    x = rng.standard_normal((n, b), dtype=np.float32)
    half = w[: n // 2]
    rows: list[tuple[str, float, float]] = []
    load_before = os.getloadavg()

    lat = timed(lambda: w @ x, args.requests)
    rows.append(("numpy in-process W @ x", ms(lat), ms(lat, 99)))
    lat = timed(lambda: half @ x, args.requests)
    rows.append(("numpy, one row block (N/2 rows)", ms(lat), ms(lat, 99)))
    req = api.InferRequest("w", x, None)
    resp = api.Response(True, np.empty((n, b), np.float32))
    lat = timed(lambda: decode_message(b"".join(encode_message(req))), args.requests)
    rows.append(("codec: encode+decode request (joined)", ms(lat), ms(lat, 99)))
    lat = timed(lambda: decode_message(b"".join(encode_message(resp))), args.requests)
    rows.append(("codec: encode+decode response (joined)", ms(lat), ms(lat, 99)))
    stages, span_p50, cpu = span_run(n, w, x, args.requests)
    head = (f"profile_infer: N={n}, B={b}, {args.requests} requests, 2 daemons (one row block "
            f"each, replicas 1); load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    text = (head + "\n\n### one request, stage by stage (medians of per-request spans; "
            f"end-to-end p50 {span_p50:.3f} ms)\n\n| stage | p50 ms | p90 ms |\n|---|---:|---:|\n")
    text += "\n".join(f"| {name} | {p50:.3f} | {p90:.3f} |" for name, p50, p90 in stages)
    text += ("\n\nCPU per request (ms; warm-up included): " + "; ".join(
        f"{who} {total:.2f} (event loop {loop:.2f})" for who, (total, loop) in cpu.items()))
    text += "\n\n| step (separately measured) | p50 ms | p99 ms |\n|---|---:|---:|\n"
    text += "\n".join(f"| {name} | {p50:.3f} | {p99:.3f} |" for name, p50, p99 in rows)
    shown = len(rows)
    if args.no_cprofile:
        print(text)
        OUT.mkdir(exist_ok=True)
        (OUT / f"profile_infer_b{b}.md").write_text(text + "\n")
        return

    with tempfile.TemporaryDirectory(prefix="sedma-prof-") as tmp, LocalMesh(Path(tmp)) as mesh:
        root = Path(tmp)
        prof_path = root / "coordinator.prof"
        coord = ProfiledDaemon(root / "n1", "n1", profile_path=prof_path).start()
        mesh.nodes.append(coord)
        mesh.add("n2")
        mesh.wait_converged(alive=1)
        with Client(coord.socket) as c:
            c.deploy("w", w, device="ideal", replicas=1)
            def nothing() -> None:
                try:
                    c.job("no-such-job")
                except DaemonError:
                    pass
            lat = timed(nothing, args.requests)
            rows.append(("API round trip doing nothing (unknown job id)", ms(lat), ms(lat, 99)))
            lat = timed(lambda: c.status(), 50)
            rows.append(("API status (for scale)", ms(lat), ms(lat, 99)))
        client_prof = cProfile.Profile(time.thread_time)
        lat = asyncio.run(infer_loop(coord.socket, x, args.requests, client_prof))
        rows.append((f"sedma infer, 2 daemons, 1 client (profiled)", ms(lat), ms(lat, 99)))
        lat = asyncio.run(infer_loop(coord.socket, x, args.requests, None))
        rows.append((f"sedma infer, 2 daemons, 1 client", ms(lat), ms(lat, 99)))
        mesh.stop()
        coord_stats = top(str(prof_path))
        coord_cum = top(str(prof_path), 25, "cumtime", r"(node|protocol|nat|compute)/")
    client_stats = top(client_prof)
    load_after = os.getloadavg()

    text += "\n" + "\n".join(f"| {name} | {p50:.3f} | {p99:.3f} |" for name, p50, p99 in rows[shown:])
    text += f"\n\n(load after: {load_after[0]:.2f})\n"
    text += "\n\n### coordinator daemon, main thread, by own CPU time (whole life incl. start)\n```\n"
    text += _trim(coord_stats) + "```\n\n### coordinator, sedma's own functions by cumulative time\n```\n"
    text += _trim(coord_cum) + "```\n\n### client, the infer loop, by own CPU time\n```\n"
    text += _trim(client_stats) + "```\n"
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / f"profile_infer_b{b}.md").write_text(text)


def _trim(stats: str) -> str:
    keep = []
    started = False
    for line in stats.splitlines():
        if "ncalls" in line:
            started = True
        if started and line.strip():
            keep.append(line.rstrip().replace(str(ROOT) + "/", "")[:150])
        elif "function calls" in line:
            keep.append(line.strip())
    return "\n".join(keep) + "\n"


if __name__ == "__main__":
    main()
