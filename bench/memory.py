"""Self-evolving memory: tiers + learned prefetch, hot replication, migration, restart.

Every figure is measured against a static baseline in the same run of this script:

tiers     one node, --memory-limit 256MiB, a model of 16 layers of 4096x4096 float32
          (1 GiB of programmed state) served layer by layer; prefetch on vs --no-prefetch
          on two live daemons, interleaved pairs, medians. Reports layers/s, tier-0 hit
          rate, late hits, prefetch accuracy, bytes read and wasted, depth; then the device
          cold (one layer alone, k layers at once) and the bound it sets.
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

split     the skew load with m0 on 2 holders from the start (no reconfiguration): how
          the replica choice splits m0's reads over them (even is the aim).

oscillate 4 nodes, 2 one-block matrices, 90 % of the load on one then the other, swapping
          at the control interval for 10 minutes, default control loop; static vs adaptive:
          requests/s and the number of migrations against the dwell bound.

Run by hand:  python bench/memory.py [--only tiers,skew,split,slow,oscillate] [--seconds 20]
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

STAT_KEYS = ("reads", "tier0_reads", "late", "used", "wasted", "bytes_loaded",
             "bytes_prefetched", "bytes_wasted", "bytes_transient")


def tiers(root: Path, layers: int, n: int, batch: int, passes: int, ram: str,
          pairs: int = 3) -> list[str]:
    """Prefetch on vs off on two live daemons, measured in interleaved pairs, then the device.

    Both daemons hold the same 16 layers under the same budget and read them with the same
    loader (node/memory/blockio.py); the off daemon reads each layer when it is asked for,
    the on daemon loads the learned chain ahead. Each measurement is ``passes`` passes over
    every layer, every result checked against numpy; the pairs alternate which side goes
    first so that a load swing hits both.
    """
    ws = [rand((n, n), i) for i in range(layers)]
    x = rand((n, batch), 1000)
    want = [w @ x for w in ws]
    load0 = os.getloadavg()[0]
    meshes, nodes = {}, {}
    try:
        for pf in (False, True):
            meshes[pf] = LocalMesh(root / f"tiers-{pf}")
            extra = ["--capacity", "10", "--memory-limit", ram, "--disk-limit", "4GiB"]
            nodes[pf] = meshes[pf].add("solo", extra=extra + ([] if pf else ["--no-prefetch"]))
            with Client(nodes[pf].socket) as c:
                for i, w in enumerate(ws):
                    c.deploy(f"L{i}", w, replicas=1)
                for i in range(layers):               # one pass to learn the order
                    np.testing.assert_allclose(c.infer(f"L{i}", x), want[i], rtol=1e-4, atol=1e-3)
        runs: dict[bool, list[dict]] = {False: [], True: []}
        hot: list[float] = []
        for k in range(pairs):
            for pf in ((False, True) if k % 2 == 0 else (True, False)):
                runs[pf].append(_tier_run(nodes[pf], layers, passes, x, want))
            hot.append(_hot_layer_s(nodes[False], x, want))
        limit = _memory(nodes[True])["tiers"]["0"]["limit"]
        over = [r["tier0_end"] for rs in runs.values() for r in rs if r["tier0_end"] > limit]
        files = sorted((root / "tiers-True").glob("*/blocks/L*/*.blk"))
    finally:
        for mesh in meshes.values():
            mesh.stop()
    load1 = os.getloadavg()[0]
    dev, read1, compute_s = _device(files[:8], ws[0], x)
    return _tier_report(runs, layers, n, batch, passes, ram, load0, load1, over, limit,
                        dev, read1, compute_s, hot)


def _hot_layer_s(node, x: np.ndarray, want: list, passes: int = 2) -> float:
    """Seconds per layer of a request whose layer is in RAM, on the daemon itself: the
    compute (and request) cost a layer has when its read is hidden completely. Measured on
    the prefetch-off daemon over the layers its tier policy keeps in RAM."""
    with Client(node.socket) as c:
        ram = sorted(int(m[1:]) for m, idx in c.memory()["blocks"].items()
                     if all(t == 0 for t in idx.values()))
        t = time.perf_counter()
        for _ in range(passes):
            for i in ram:
                if not np.allclose(c.infer(f"L{i}", x), want[i], rtol=1e-4, atol=1e-3):
                    raise AssertionError(f"layer {i}: wrong result")
        return (time.perf_counter() - t) / (passes * len(ram))


def _tier_run(node, layers: int, passes: int, x: np.ndarray, want: list) -> dict:
    """One measurement: ``passes`` passes over every layer; rate and the prefetch counters."""
    with Client(node.socket) as c:
        before = c.memory()["prefetch"]
        tier0_end = 0
        t = time.perf_counter()
        for _ in range(passes):
            for i in range(layers):
                y = c.infer(f"L{i}", x)
                if not np.allclose(y, want[i], rtol=1e-4, atol=1e-3):
                    raise AssertionError(f"layer {i}: wrong result")
        took = time.perf_counter() - t
        rep = c.memory()
        tier0_end = rep["tiers"]["0"]["used"]
    after = rep["prefetch"]
    d = {k: after[k] - before[k] for k in STAT_KEYS}
    done = d["used"] + d["wasted"]
    return {"rate": passes * layers / took, "hits": d["tier0_reads"] / d["reads"],
            "late": d["late"] / d["reads"], "acc": d["used"] / done if done else None,
            "moved": (d["bytes_loaded"] + d["bytes_transient"]) / passes,
            "wasted": d["bytes_wasted"] / passes, "depth": after["depth"],
            "in_flight": after["max_in_flight"], "tier0_end": tier0_end}


def _median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def _tier_report(runs, layers, n, batch, passes, ram, load0, load1, over, limit,
                 dev, read1, compute_s, hot) -> list[str]:
    base = _median([r["rate"] for r in runs[False]])
    out = [f"tiers: {layers} layers of {n}x{n} float32 ({layers * n * n * 4 >> 20} MiB) on one "
           f"node with --memory-limit {ram}, X {n}x{batch}; {len(runs[True])} interleaved "
           f"pairs of {passes} passes each (after one pass to learn); load {load0:.1f} -> "
           f"{load1:.1f}", "",
           "| prefetch | run | layers/s | tier-0 hits | late (waited for its prefetch) "
           "| accuracy | MiB read from disk per pass | MiB wasted per pass | depth | "
           "loads in flight (max) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pct = lambda v: "-" if v is None else f"{v:.0%}"    # noqa: E731
    for pf in (False, True):
        for k, r in enumerate(runs[pf]):
            out.append(f"| {'on' if pf else 'off'} | {k + 1} | {r['rate']:.2f} | "
                       f"{pct(r['hits'])} | {pct(r['late'])} | {pct(r['acc'])} | "
                       f"{r['moved'] / 2**20:.0f} | {r['wasted'] / 2**20:.0f} | "
                       f"{r['depth'] if pf else '-'} | {r['in_flight'] if pf else '-'} |")
    out += ["", "| prefetch | layers/s (median) | vs off | tier-0 hits | late | accuracy |",
            "|---|---:|---:|---:|---:|---:|"]
    for pf in (False, True):
        med = {k: _median([r[k] for r in runs[pf]]) for k in ("rate", "hits", "late", "acc")}
        out.append(f"| {'on' if pf else 'off'} | {med['rate']:.2f} | {med['rate'] / base:.2f}x "
                   f"| {pct(med['hits'])} | {pct(med['late'])} | {pct(med['acc'])} |")
    ratios = [on["rate"] / off["rate"] for off, on in zip(runs[False], runs[True])]
    out.append("")
    out.append("on / off per pair (each pair measured back to back): "
               + ", ".join(f"{r:.2f}x" for r in ratios) + f"; median {_median(ratios):.2f}x")
    out.append(f"tier 0 after every run <= limit {limit >> 20} MiB: "
               f"{'yes' if not over else 'NO: ' + str(over)}")
    out += [""] + dev
    best = max(v for v in _DEPTH_RATE.values())
    per_layer = n * n * 4 / best
    off_s = [1 / r["rate"] for r in runs[False]]
    on_s = [1 / r["rate"] for r in runs[True]]
    out += ["", f"per layer, pair by pair: prefetch off {_ms(off_s)} ms (loads "
            f"{1 - _median([r['hits'] for r in runs[False]]):.0%} of the layers), prefetch on "
            f"{_ms(on_s)} ms; a layer already in RAM on the off daemon right after the pair "
            f"(8 requests: compute + request) {_ms(hot)} ms; one layer read with the daemon's "
            f"loader {read1 * 1000:.0f} ms, at the device's best depth "
            f"{per_layer * 1000:.0f} ms a layer; in-process numpy compute "
            f"{compute_s * 1000:.0f} ms (after the runs). With every read hidden, on/off "
            f"approaches off / max(compute, read at depth), 2x only where a layer's read is "
            f"at least its compute."]
    return out


def _ms(xs) -> str:
    return ", ".join(f"{x * 1000:.0f}" for x in xs)


#: Device MB/s by reads in flight, filled by _device for the bound.
_DEPTH_RATE: dict[str, float] = {}


def _drop(paths) -> float:
    from node.memory.blockio import cached_pages
    """Drop the files' page cache; return the fraction still resident (mincore), 0 ideally."""
    left = total = 0
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            got, pages = cached_pages(fd)
        finally:
            os.close(fd)
        left, total = left + got, total + pages
    return left / total if total else 0.0


def _device(files: list[Path], w: np.ndarray, x: np.ndarray) -> tuple[list[str], float, float]:
    """The device, cold: one layer read alone several ways, k layers read at once.

    Every pass first drops the files' page cache and checks with mincore that it is gone
    (the direct reads bypass it anyway; the buffered ones would otherwise read RAM).
    """
    from concurrent.futures import ThreadPoolExecutor

    from node.memory.blockio import BlockReader
    size = files[0].stat().st_size
    rows, resident = [], []

    def timed(label: str, k: int, fn, reps: int = 3) -> float:
        fn(files[-k:])              # warm-up, untimed: the readers' buffers get faulted in
        ts = []
        for rep in range(reps):
            group = [files[(rep * k + j) % len(files)] for j in range(k)]
            resident.append(_drop(group))
            t = time.perf_counter()
            fn(group)
            ts.append(time.perf_counter() - t)
        med = _median(ts)
        rows.append(f"| {label} | {k} | {med * 1000:.0f} | {k * size / med / 1e6:.0f} |")
        return med

    # Readers keep enough spare buffers that every timed read goes into a reused one: the
    # table is the device's, not the page faults of fresh buffers (the first row aside).
    serial, loader = BlockReader(threads=1, spare=4), BlockReader(spare=4)
    timed("read_bytes() into a fresh buffer (buffered, one reader: the old load)", 1,
          lambda g: g[0].read_bytes())
    timed("direct, 4 MiB chunks, one after another", 1, lambda g: serial.read(g[0]))
    read1 = timed("the daemon's loader: direct, 4 MiB chunks, 4 in flight", 1,
                  lambda g: loader.read(g[0]), reps=5)
    _DEPTH_RATE["loader x1"] = size / read1
    for k in (2, 4):
        with ThreadPoolExecutor(k) as pool:
            med = timed("k layers at once, one serial reader each", k,
                        lambda g: list(pool.map(serial.read, g)))
            _DEPTH_RATE[f"serial x{k}"] = k * size / med
            med = timed("k layers at once through the daemon's loader", k,
                        lambda g: list(pool.map(loader.read, g)))
            _DEPTH_RATE[f"loader x{k}"] = k * size / med
    serial.close()
    loader.close()
    computes = []
    for _ in range(5):
        t = time.perf_counter()
        w @ x
        computes.append(time.perf_counter() - t)
    lines = [f"device, cold (page cache dropped before every pass; resident after the drop "
             f"per mincore: max {max(resident):.1%}), one layer = {size / 2**20:.0f} MiB file, "
             f"median of 3 (the loader alone: 5):", "",
             "| read | layers at once (k) | ms | MB/s |", "|---|---:|---:|---:|", *rows]
    return lines, read1, _median(computes)


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


def split(root: Path, seconds: float, k: int) -> list[str]:
    """The replica choice alone: m0 deployed with 2 replicas from the start (no
    reconfiguration), the skew load; how m0's reads split over its holders. Why: the skew
    run measures the replicate rule and the choice together, and a replica the choice
    leaves idle looked like a rule that did not fire (bench/README, 2026-12-01 evening)."""
    names = [f"m{i}" for i in range(4)]
    ws = {m: rand((128, k), i) for i, m in enumerate(names)}
    xs = {m: rand((k, 64), 100 + i) for i, m in enumerate(names)}
    want = {m: ws[m] @ xs[m] for m in names}
    mesh = mesh_of(root / "split", 4, STATIC_CONF)
    try:
        with Client(mesh.nodes[0].socket) as c:
            for m in names:
                c.deploy(m, ws[m], replicas=2 if m == "m0" else 1)
        load0 = os.getloadavg()[0]
        with CpuMeter({n.name: n.proc.pid for n in mesh.nodes}) as cpu:
            rate, fails = closed_loop_procs([n.socket for n in mesh.nodes], names,
                                            [0.9] + [0.1 / 3] * 3, xs, seconds, want)
        holders = [n.name for n in mesh.nodes if n.status()["blocks"].get("m0")]
        reads = {n: _memory(node)["block_read_rates"].get("m0/0", 0.0)
                 for n, node in ((x.name, x) for x in mesh.nodes) if n in holders}
    finally:
        mesh.stop()
    per = " ".join(f"{n} {v:.1f}" for n, v in reads.items())
    return [f"split: m0 on 2 holders from the start, 4 client processes, 90 % to m0, "
            f"{seconds:.0f} s: {rate:.1f} req/s, {fails} failed, load {load0:.1f} -> "
            f"{os.getloadavg()[0]:.1f}; m0 reads/s (aged) per holder: {per}; "
            f"smaller/larger {min(reads.values()) / max(max(reads.values()), 1e-9):.2f}; "
            f"CPU {cpu.text()}"]


def slow(root: Path, seconds: float, warmup: float, factor: float, n: int,
         slow_by: str = "slowdown", quota_cpus: float = 0.1, batch: int = 16,
         clients: int = 4) -> list[str]:
    """One node made slow (``--compute-slowdown`` or a cgroup CPU quota): static vs adaptive.

    The adaptive window is measured once the adaptation happened (the slow node released
    its block), not during it; the static one after the same warm-up. Then every adaptive
    node is restarted (the slow one back under its quota) and the first requests timed.
    """
    from node.runtime.cpuquota import CpuQuota, available
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
                   help="tiers: interleaved on/off pairs; skew: static/adaptive pairs, "
                        "interleaved; the median ratio is reported")
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
            lines += tiers(root, args.layers, args.n, args.batch, args.passes, args.ram,
                           args.pairs) + [""]
            print("\n".join(lines), flush=True)
        if "skew" in parts:
            lines += skew(root, args.seconds, args.warmup, args.n, args.pairs,
                          not args.client_threads) + [""]
            print("\n".join(lines), flush=True)
        if "split" in parts:
            lines += split(root, args.seconds, args.n) + [""]
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
