"""Self-evolving memory: tiers + learned prefetch, hot replication, migration, restart.

Every figure is measured against a static baseline in the same run of this script:

tiers     one node, --memory-limit 256MiB, a model of 16 layers of 4096x4096 float32
          (1 GiB of programmed state) served layer by layer; prefetch on vs --no-prefetch.
          Reports layers/s, tier-0 hit rate, prefetch accuracy, bytes moved disk -> RAM.
skew      4 nodes, 4 one-block matrices, 4 client processes (one per daemon), 90 % of
          requests to one matrix; static placement (reconfiguration effectively off) vs
          adaptive (hot replication) after a warm-up, --pairs times interleaved. Reports
          requests/s, the load, each process's CPU, m0's reads per node, the median ratio.
slow      4 nodes, one with --compute-slowdown F (a testing aid: it sleeps F-1 times its
          compute time), W spread over all four (one block each); static vs adaptive
          (migration) after a warm-up; then every adaptive node is restarted and the first
          requests are timed (the learned placement must hold from the first request).
          --slowdown and --slow-clients take lists (a sweep; 1 client = the slow node is
          the bottleneck of every request).

oscillate 4 nodes, 2 one-block matrices, 90 % of the load on one then the other, swapping
          at the control interval for 10 minutes, default control loop; static vs adaptive:
          requests/s and the number of migrations against the dwell bound.

Run by hand:  python bench/memory.py [--only tiers,skew,slow,oscillate] [--seconds 20]
Prints markdown tables and writes them to bench/out/memory.md. The machine these numbers
come from is shared (2 cores, several engineers): read ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.client import Client  # noqa: E402
from node.config import parse_size  # noqa: E402
from node.localmesh import LocalMesh, wait_for  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
#: Adaptive runs: a pass every 2 s and a 10 s dwell (defaults 30 s and 120 s), so that the
#: adaptation fits into a warm-up of tens of seconds.
FAST_CONF = "reconfigure_every = 2.0\nrebalance_dwell_s = 10.0\n"
STATIC_CONF = "reconfigure_every = 3600.0\n"


def rand(shape, seed) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


# -- tiers and prefetch ------------------------------------------------------------------

def tiers(root: Path, layers: int, n: int, batch: int, passes: int, ram: str) -> list[str]:
    ws = [rand((n, n), i) for i in range(layers)]
    x = rand((n, batch), 1000)
    want0 = ws[0] @ x
    rows = []
    for prefetch in (False, True):
        mesh = LocalMesh(root / f"tiers-{prefetch}")
        try:  # (a daemon that fails to start is killed by its launcher)
            extra = ["--capacity", "10", "--memory-limit", ram, "--disk-limit", "4GiB"]
            node = mesh.add("solo", extra=extra + ([] if prefetch else ["--no-prefetch"]))
            with Client(node.socket) as c:
                for i, w in enumerate(ws):
                    c.deploy(f"L{i}", w, replicas=1)
                np.testing.assert_allclose(c.infer("L0", x), want0, rtol=1e-4, atol=1e-3)
                for i in range(layers):               # one pass to learn the order
                    c.infer(f"L{i}", x)
                before = c.memory()["prefetch"]
                t = time.perf_counter()
                for _ in range(passes):
                    for i in range(layers):
                        c.infer(f"L{i}", x)
                took = time.perf_counter() - t
                rep = c.memory()
            after = rep["prefetch"]
            reads = after["reads"] - before["reads"]
            hits = after["tier0_reads"] - before["tier0_reads"]
            used, wasted = after["used"] - before["used"], after["wasted"] - before["wasted"]
            late = after["late"] - before["late"]
            rows.append((prefetch, passes * layers / took, hits / reads, late / reads,
                         used / (used + wasted) if used + wasted else None,
                         (after["bytes_loaded"] - before["bytes_loaded"]) / passes,
                         rep["tiers"]["0"]["used"], rep["tiers"]["1"]["used"]))
        finally:
            mesh.stop()
    read_s, compute_s = _layer_costs(root / "tiers-True", ws[0], x)
    base = rows[0][1]
    bound = (read_s + compute_s) / max(read_s, compute_s)
    out = [f"tiers: {layers} layers of {n}x{n} float32 ({layers * n * n * 4 >> 20} MiB) on one "
           f"node with --memory-limit {ram}, X {n}x{batch}, {passes} passes after one to learn",
           "", "| prefetch | layers/s | vs off | tier-0 hits | late (waited for its prefetch) "
           "| prefetch accuracy | MiB moved per pass | tier 0 used | tier 1 used |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for pf, rate, hit, late, acc, moved, t0, t1 in rows:
        out.append(f"| {'on' if pf else 'off'} | {rate:.2f} | {rate / base:.2f}x | {hit:.0%} | "
                   f"{late:.0%} | "
                   f"{'-' if acc is None else f'{acc:.0%}'} | {moved / 2**20:.0f} | "
                   f"{t0 / 2**20:.0f} MiB | {t1 / 2**20:.0f} MiB |")
    fit = int(parse_size(ram) // (n * n * 4))
    out += ["", f"one layer: cold read of its file {read_s * 1000:.0f} ms "
            f"({n * n * 4 / read_s / 1e6:.0f} MB/s), compute {compute_s * 1000:.0f} ms (in-process "
            f"numpy, same X). Prefetch overlaps the two, so prefetch on / off is at most "
            f"(read + compute) / max(read, compute) = {bound:.2f}x here, and with "
            f"{layers - min(fit, layers)} of {layers} layers read from disk every pass, a "
            f"prefetch lands in time only if a read is no slower than a compute "
            f"(read/compute = {read_s / compute_s:.1f})."]
    return out


def _layer_costs(data_root: Path, w: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Seconds to read one layer's block file cold (page cache dropped) and to compute it."""
    path = next(data_root.glob("*/blocks/L1/*.blk"))
    reads = []
    for _ in range(3):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        t = time.perf_counter()
        path.read_bytes()
        reads.append(time.perf_counter() - t)
    computes = []
    for _ in range(3):
        t = time.perf_counter()
        w @ x
        computes.append(time.perf_counter() - t)
    return sorted(reads)[1], sorted(computes)[1]


# -- closed-loop load --------------------------------------------------------------------

def closed_loop(sockets: list[Path], names: list[str], weights, xs: dict,
                seconds: float, threads: int = 4, check: dict | None = None) -> tuple[float, int]:
    """``threads`` clients, each sending requests back to back for ``seconds``.

    ``weights``: the request mix, or a function of the seconds elapsed returning it."""
    done, failures = [0], [0]
    lock = threading.Lock()
    begin = time.perf_counter()
    stop = begin + seconds
    mix = weights if callable(weights) else (lambda _t: weights)

    def client(k: int) -> None:
        rng = random.Random(k)
        with Client(sockets[k % len(sockets)]) as c:
            while time.perf_counter() < stop:
                name = rng.choices(names, mix(time.perf_counter() - begin))[0]
                try:
                    y = c.infer(name, xs[name])
                    if check is not None and not np.allclose(y, check[name], rtol=1e-4, atol=1e-3):
                        raise ValueError("wrong result")
                    with lock:
                        done[0] += 1
                except Exception as exc:  # counted and reported, never hidden
                    with lock:
                        failures[0] += 1
                    print(f"  request failed: {exc}", file=sys.stderr)
    ts = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return done[0] / (time.perf_counter() - start), failures[0]


def mesh_of(root: Path, n: int, conf: str, slow: float | None = None) -> LocalMesh:
    root.mkdir(parents=True, exist_ok=True)
    (root / "conf.toml").write_text(conf)
    mesh = LocalMesh(root)
    try:
        for i in range(n):
            extra = ["--capacity", "10", "--config", str(root / "conf.toml")]
            if slow and i == n - 1:
                extra += ["--compute-slowdown", str(slow)]
            mesh.add(f"n{i + 1}", extra=extra)
        mesh.wait_converged(alive=n - 1, timeout=120)
    except BaseException:
        mesh.stop()
        raise
    return mesh


def _client_proc(k, sockets, names, weights, xs, check, seconds, out) -> None:
    """One client process (a user on its own machine): closed loop against one daemon."""
    rng = random.Random(k)
    done = fails = 0
    stop = time.perf_counter() + seconds
    with Client(sockets[k % len(sockets)]) as c:
        while time.perf_counter() < stop:
            name = rng.choices(names, weights)[0]
            try:
                y = c.infer(name, xs[name])
                if not np.allclose(y, check[name], rtol=1e-4, atol=1e-3):
                    raise ValueError("wrong result")
                done += 1
            except Exception as exc:  # counted and reported, never hidden
                fails += 1
                print(f"  request failed: {exc}", file=sys.stderr)
    out.put((done, fails))


def closed_loop_procs(sockets: list[Path], names: list[str], weights: list[float], xs: dict,
                      seconds: float, check: dict, clients: int = 4) -> tuple[float, int]:
    """Like :func:`closed_loop` with each client in its own process.

    Why: 4 client threads in one Python process share one GIL, and at ~1 MiB of X per
    request the bench itself can become what bounds the rate (it did: see bench/README).
    """
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ps = [ctx.Process(target=_client_proc, args=(k, sockets, names, weights, xs, check,
                                                 seconds, out)) for k in range(clients)]
    start = time.perf_counter()
    for p in ps:
        p.start()
    res = [out.get(timeout=seconds + 120) for _ in ps]
    took = time.perf_counter() - start
    for p in ps:
        p.join(30)
    # spawn start-up (~0.5 s each) is inside ``took``: the rate is slightly understated,
    # equally for both placements
    return sum(d for d, _ in res) / took, sum(f for _, f in res)


class CpuMeter:
    """CPU seconds of the daemons and of this script over a window (which process saturates)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids | {"bench": os.getpid()}

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            if pid == os.getpid():
                t = os.times()
                return t.user + t.system + t.children_user + t.children_system
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0.0

    def __enter__(self) -> "CpuMeter":
        self.t0 = time.perf_counter()
        self.c0 = {k: self._cpu(p) for k, p in self.pids.items()}
        return self

    def __exit__(self, *exc) -> None:
        took = time.perf_counter() - self.t0
        self.share = {k: (self._cpu(p) - self.c0[k]) / took for k, p in self.pids.items()}

    def text(self) -> str:
        return " ".join(f"{k} {v:.0%}" for k, v in self.share.items())


def skew_once(root: Path, label: str, conf: str, seconds: float, warmup: float, k: int,
              procs: bool) -> dict:
    """One system of the skew bench: req/s, the load it ran under, m0's holders and reads."""
    names = [f"m{i}" for i in range(4)]
    ws = {m: rand((128, k), i) for i, m in enumerate(names)}
    xs = {m: rand((k, 64), 100 + i) for i, m in enumerate(names)}
    want = {m: ws[m] @ xs[m] for m in names}
    weights = [0.9] + [0.1 / 3] * 3
    mesh = mesh_of(root, 4, conf)
    try:
        with Client(mesh.nodes[0].socket) as c:
            for m in names:
                c.deploy(m, ws[m], replicas=1)
        socks = [n.socket for n in mesh.nodes]   # each client talks to its own daemon
        load0 = os.getloadavg()[0]
        closed_loop(socks, names, weights, xs, warmup, check=want)
        with CpuMeter({n.name: n.proc.pid for n in mesh.nodes}) as cpu:
            if procs:
                rate, fails = closed_loop_procs(socks, names, weights, xs, seconds, want)
            else:
                rate, fails = closed_loop(socks, names, weights, xs, seconds, check=want)
        holders = [n.name for n in mesh.nodes if n.status()["blocks"].get("m0")]
        reads = {n.name: _memory(n)["block_read_rates"].get("m0/0", 0.0) for n in mesh.nodes}
        made = [d for n in mesh.nodes for d in _memory(n)["decisions"]]
        for d in made:
            print(f"  {label}: {d['kind']} {d['name']}/{d['index']}: {d['reason']}")
        return {"label": label, "rate": rate, "fails": fails, "holders": holders,
                "reads": reads, "cpu": cpu.text(), "decisions": [d["kind"] for d in made],
                "load": f"{load0:.1f} -> {os.getloadavg()[0]:.1f}"}
    finally:
        mesh.stop()


def skew(root: Path, seconds: float, warmup: float, k: int, pairs: int = 1,
         procs: bool = True) -> list[str]:
    """Static vs adaptive, ``pairs`` times, interleaved (odd pairs run adaptive first, so a
    trend in the machine's load favours neither); each ratio is against its own pair."""
    rows, ratios = [], []
    for i in range(pairs):
        order = [("static", STATIC_CONF), ("adaptive", FAST_CONF)]
        got = {label: skew_once(root / f"skew-{i}-{label}", label, conf, seconds, warmup, k,
                                procs) for label, conf in (order if i % 2 == 0 else order[::-1])}
        ratios.append(got["adaptive"]["rate"] / got["static"]["rate"])
        for label in ("static", "adaptive"):
            rows.append((i + 1, got[label], got[label]["rate"] / got["static"]["rate"]))
        print(f"  pair {i + 1}: {ratios[-1]:.2f}x", flush=True)
    out = [f"skew: 4 nodes, 4 matrices of 128x{k} (one block each), 4 clients "
           f"({'processes' if procs else 'threads'}), one per daemon, 90 % of requests to m0, "
           f"X {k}x64; {warmup:.0f} s warm-up then {seconds:.0f} s measured; {pairs} "
           "interleaved pair(s)", "",
           "| pair | placement | req/s | vs static | failed | load avg | holders of m0 | "
           "m0 reads/s per node | CPU per process (1 core = 100 %) | decisions |",
           "|---:|---|---:|---:|---:|---|---|---|---|---|"]
    for i, r, ratio in rows:
        reads = " ".join(f"{n} {v:.0f}" for n, v in r["reads"].items())
        out.append(f"| {i} | {r['label']} | {r['rate']:.1f} | {ratio:.2f}x | {r['fails']} | "
                   f"{r['load']} | {', '.join(r['holders'])} | {reads} | {r['cpu']} | "
                   f"{', '.join(r['decisions']) or '-'} |")
    ratios.sort()
    out += ["", f"median adaptive/static over {pairs} pair(s): "
            f"{ratios[len(ratios) // 2] if pairs % 2 else sum(ratios[pairs//2-1:pairs//2+1]) / 2:.2f}x "
            f"(each: {', '.join(f'{x:.2f}x' for x in ratios)})"]
    return out


def slow(root: Path, seconds: float, warmup: float, factor: float, n: int,
         slow_by: str = "slowdown", quota_cpus: float = 0.1, batch: int = 16,
         clients: int = 4) -> list[str]:
    """One node made slow (``--compute-slowdown`` or a cgroup CPU quota): static vs adaptive.

    The adaptive window is measured once the adaptation happened (the slow node released
    its block), not during it; the static one after the same warm-up. Then every adaptive
    node is restarted (the slow one back under its quota) and the first requests timed.
    """
    from node.cpuquota import CpuQuota, available
    if slow_by == "quota" and available():
        return [f"slow (quota): skipped: {available()}"]
    w = rand((n, n), 7)
    xs = {"w": rand((n, batch), 8)}
    want = {"w": w @ xs["w"]}
    rows = []
    for label, conf in (("static", STATIC_CONF), ("adaptive", FAST_CONF)):
        mesh = mesh_of(root / f"slow-{slow_by}-{factor:g}-{clients}-{label}", 4, conf,
                       slow=factor if slow_by == "slowdown" else None)
        quota = CpuQuota(f"bench-{label}", quota_cpus) if slow_by == "quota" else None
        try:
            slow_node = mesh.nodes[-1]
            if quota:
                quota.add(slow_node.proc.pid)
            with Client(mesh.nodes[0].socket) as c:
                c.deploy("w", w, replicas=1)
            socks = [nd.socket for nd in mesh.nodes[:3]]
            closed_loop(socks, ["w"], [1.0], xs, warmup, clients, check=want)
            adapted = None
            if label == "adaptive":      # keep the load on until the slow node let go
                t = time.perf_counter()
                while slow_node.status()["blocks"].get("w") and time.perf_counter() - t < 240:
                    closed_loop(socks, ["w"], [1.0], xs, 5.0, clients, check=want)
                adapted = warmup + time.perf_counter() - t
            load0 = os.getloadavg()[0]
            rate, fails = closed_loop(socks, ["w"], [1.0], xs, seconds, clients, check=want)
            decisions = [d["kind"] for d in _memory(slow_node)["decisions"]]
            row = [label, rate, fails, ", ".join(decisions) or "-", adapted, None,
                   f"{load0:.1f} -> {os.getloadavg()[0]:.1f}"]
            if label == "adaptive":
                for node in mesh.nodes:
                    node.stop()
                first = mesh.nodes[0].start()          # ports are fresh: join the new one
                for node in mesh.nodes[1:]:
                    node.bootstrap = [first.address]
                    node.start()
                if quota:
                    quota.add(slow_node.proc.pid)
                mesh.wait_converged(alive=3, timeout=120)
                row[5], _ = closed_loop(socks, ["w"], [1.0], xs, min(seconds, 10), clients,
                                       check=want)
            rows.append(row)
        finally:
            mesh.stop()
            if quota:
                quota.close()
    base = rows[0][1]
    how = (f"--compute-slowdown {factor:g}" if slow_by == "slowdown"
           else f"a cgroup CPU quota of {quota_cpus:g} CPU")
    out = [f"slow: 4 nodes, one slowed by {how}, W {n}x{n} float32 in one block "
           f"per node, {clients} client thread(s), X {n}x{batch}; {warmup:.0f} s warm-up, then "
           f"(adaptive) load until the slow node released its block, then {seconds:.0f} s "
           "measured", "", "| placement | req/s | vs static | failed | load avg | slow node's "
           "decisions | adapted after | req/s right after restarting every node |",
           "|---|---:|---:|---:|---|---|---:|---:|"]
    for label, rate, fails, decisions, adapted, after, load in rows:
        out.append(f"| {label} | {rate:.1f} | {rate / base:.2f}x | {fails} | {load} | {decisions} | "
                   f"{'-' if adapted is None else f'{adapted:.0f} s'} | "
                   f"{'-' if after is None else f'{after:.1f} ({after / base:.2f}x)'} |")
    return out


def oscillate(root: Path, seconds: float, period: float, k: int) -> list[str]:
    """Two one-block matrices; 90 % of the requests go to one, then to the other, swapping
    every ``period / 2`` s, for ``seconds``: the daemons' default control loop (a pass
    every 30 s, 120 s dwell), so the load swings at the control interval itself."""
    from node.work.rebalance import Policy, migration_bound
    names = ["m0", "m1"]
    ws = {m: rand((128, k), 20 + i) for i, m in enumerate(names)}
    xs = {m: rand((k, 64), 30 + i) for i, m in enumerate(names)}
    want = {m: ws[m] @ xs[m] for m in names}

    def mix(t: float) -> list[float]:
        return [0.9, 0.1] if int(t / (period / 2)) % 2 == 0 else [0.1, 0.9]
    rows = []
    for label, conf in (("static", STATIC_CONF), ("adaptive", "")):
        mesh = mesh_of(root / f"osc-{label}", 4, conf)
        try:
            with Client(mesh.nodes[0].socket) as c:
                for m in names:
                    c.deploy(m, ws[m], replicas=1)
            rate, fails = closed_loop([n.socket for n in mesh.nodes], names, mix, xs, seconds,
                                      check=want)
            kinds = [d["kind"] for n in mesh.nodes for d in _memory(n)["decisions"]]
            rows.append((label, rate, fails, {x: kinds.count(x) for x in sorted(set(kinds))}))
        finally:
            mesh.stop()
    base = rows[0][1]
    bound = migration_bound(len(names), seconds, Policy())
    out = [f"oscillate: 4 nodes, 2 matrices of 128x{k} (one block each), 4 client threads, "
           f"90 % of requests to one matrix, swapping every {period / 2:.0f} s, {seconds:.0f} s "
           f"per system; default control loop (a pass every 30 s, dwell 120 s)", "",
           f"| placement | req/s | vs static | failed | decisions | migrations vs bound |",
           "|---|---:|---:|---:|---|---:|"]
    for label, rate, fails, kinds in rows:
        decided = ", ".join(f"{v} {k}" for k, v in kinds.items()) or "-"
        out.append(f"| {label} | {rate:.1f} | {rate / base:.2f}x | {fails} | {decided} | "
                   f"{kinds.get('migrate', 0)} / {bound} |")
    return out


def _memory(node) -> dict:
    with Client(node.socket) as c:
        return c.memory()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="tiers,skew,slow")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per system")
    p.add_argument("--warmup", type=float, default=40.0, help="seconds to adapt first")
    p.add_argument("--pairs", type=int, default=3,
                   help="skew: static/adaptive pairs, interleaved; the median ratio is reported")
    p.add_argument("--client-threads", action="store_true",
                   help="skew: clients as threads of this script (last round's setup) "
                        "instead of one process each")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--ram", default="256MiB")
    p.add_argument("--slowdown", default="16",
                   help="slow: --compute-slowdown factor(s), comma-separated (a sweep)")
    p.add_argument("--slow-clients", default="4",
                   help="slow: client threads, comma-separated (1 = a closed loop whose "
                        "every request waits for the slow node's block)")
    p.add_argument("--slow-by", choices=("slowdown", "quota"), default="slowdown",
                   help="slow: the --compute-slowdown testing aid, or a real cgroup v1 CPU "
                        "quota on the slow daemon (needs root)")
    p.add_argument("--quota-cpus", type=float, default=0.1,
                   help="slow --slow-by quota: CPUs' worth of time the slow node gets")
    p.add_argument("--slow-batch", type=int, default=0,
                   help="slow: columns of X (default 16 with --slow-by slowdown, 256 with "
                        "quota: a block's compute must outlast a quota slice to show)")
    p.add_argument("--osc-seconds", type=float, default=600.0,
                   help="oscillate: seconds per system (the issue asks for 10 minutes)")
    p.add_argument("--osc-period", type=float, default=30.0,
                   help="oscillate: seconds per full swing of the load (the control interval)")
    args = p.parse_args()
    lines = [f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", ""]
    with tempfile.TemporaryDirectory(prefix="sedma-bench-memory-") as tmp:
        root = Path(tmp)
        parts = args.only.split(",")
        if "tiers" in parts:
            lines += tiers(root, args.layers, args.n, args.batch, args.passes, args.ram) + [""]
            print("\n".join(lines), flush=True)
        if "skew" in parts:
            lines += skew(root, args.seconds, args.warmup, args.n, args.pairs,
                          not args.client_threads) + [""]
            print("\n".join(lines), flush=True)
        if "slow" in parts:
            for factor in [float(f) for f in str(args.slowdown).split(",")]:
                for clients in [int(c) for c in args.slow_clients.split(",")]:
                    lines += slow(root, args.seconds, args.warmup, factor, min(args.n, 2048),
                                  args.slow_by, args.quota_cpus,
                                  args.slow_batch or (16 if args.slow_by == "slowdown" else 256),
                                  clients) + [""]
                    print("\n".join(lines), flush=True)
        if "oscillate" in parts:
            lines += oscillate(root, args.osc_seconds, args.osc_period, args.n) + [""]
    lines.append(f"load average at end: {os.getloadavg()[0]:.1f}")
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "memory.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
