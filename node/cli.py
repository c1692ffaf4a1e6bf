"""The ``sedma`` command line: the daemon and the client commands.

Exit status: 0 success, 1 the job or request failed (message on stderr), 2 usage error
(bad flags, unreadable input file). Never a traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from typing import Any, Iterator

from compute.lazynumpy import np

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user (file, flag value): exit status 2."""


def _terminal_columns() -> int:
    """What ``shutil.get_terminal_size().columns`` answers ($COLUMNS, else the terminal,
    else 80), without importing shutil: it imports lzma, bz2 and fnmatch, and argparse's
    help formatter -- built for every ``add_argument`` -- would load them into every
    daemon for its whole life (issue 13)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter with the width given, so that it does not import shutil."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         width if width is not None else _terminal_columns() - 2)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose help formatter is :class:`_HelpFormatter` (subparsers too:
    ``add_subparsers`` makes them of the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sedma",
        description="sedma: a self-evolving distributed memory mesh. Each machine runs one "
                    "daemon; daemons join by a bootstrap address, gossip their memory and "
                    "capacity, and run matrix work on simulated RRAM crossbars.",
        epilog="Client commands talk to the local daemon over its Unix socket: --socket, "
               "else $SEDMA_SOCKET, else ~/.local/share/sedma/sedma.sock.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("daemon", help="run a node daemon in the foreground",
                       description="Run a node. Flags override keys of the same name in --config (TOML).")
    d.add_argument("--listen", metavar="HOST:PORT", help="peer address to listen on (default 127.0.0.1:7946; port 0 picks one)")
    d.add_argument("--bootstrap", metavar="HOST:PORT", action="append", help="a member to join through (repeatable); retried with backoff")
    d.add_argument("--data-dir", metavar="DIR", help="state directory (default ~/.local/share/sedma)")
    d.add_argument("--socket", metavar="PATH", help="local API socket (default DATA_DIR/sedma.sock)")
    d.add_argument("--name", help="human-readable node name (default: host name)")
    d.add_argument("--memory-limit", metavar="SIZE", help="budget for resident weights, e.g. 2GiB (default 2GiB)")
    d.add_argument("--disk-limit", metavar="SIZE", help="budget for programmed state on disk (tier 1, mapped when read), every block counted; at least --memory-limit (default: equal to it, i.e. no tier 1)")
    d.add_argument("--compute-slowdown", type=float, metavar="F", help="TESTING AID: every compute on this node holds its thread F times as long (sleeping), so the node serves F times fewer requests (default 1 = off)")
    d.add_argument("--no-prefetch", dest="prefetch", action="store_const", const=False, help="do not prefetch predicted blocks into memory (to measure what prefetch buys)")
    d.add_argument("--device", metavar="PRESET", help="this node's crossbar device preset (see `sedma devices`; default ideal)")
    d.add_argument("--stun", metavar="URL", action="append", help="STUN server, stun:HOST:PORT (repeatable)")
    d.add_argument("--turn", metavar="URL", action="append", help="TURN server, turn:USER:PASS@HOST:PORT[?transport=tcp] (repeatable)")
    d.add_argument("--cluster-key", metavar="FILE", action="append", help="cluster key file (repeatable, or one key per line: the keyring; the first key dials, every key admits); only nodes holding a key of it can join")
    d.add_argument("--open", action="store_const", const=True, help="allow an open mesh (no cluster key) on a non-loopback address; anyone who reaches it can join")
    d.add_argument("--advertise", metavar="HOST:PORT", action="append", help="address peers should dial (default: the listen address)")
    d.add_argument("--capacity", type=float, metavar="GFLOPS", help="advertise this compute capacity instead of measuring it at start")
    d.add_argument("--job-retention", metavar="DURATION", help="forget finished jobs and their results after this long, e.g. 24h, 90m, 3600 (default 24h)")
    d.add_argument("--job-retention-count", type=int, metavar="N", help="keep at most this many finished jobs (default 1000)")
    d.add_argument("--config", metavar="FILE", help="TOML file whose keys mirror these flags")
    d.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    d.add_argument("--http", metavar="HOST:PORT", help="dashboard and Prometheus /metrics address (default 127.0.0.1:7947; 'off' disables; port 0 picks one)")
    d.add_argument("--http-token", metavar="FILE", help="file holding the token the dashboard requires (mandatory on a non-loopback --http)")

    def client(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help, **kw)
        c.add_argument("--socket", metavar="PATH", help="the daemon's socket")
        return c

    st = client("status", "this node: id, addresses, memory, load, device, uptime, metrics")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--mesh", action="store_true", help="also the metrics of the whole mesh")
    for name, help in (("memory", "memory tiers, each block's tier, prefetch, learned peers, "
                                  "request rates, last reconfiguration decisions"),
                       ("peers", "the mesh as this node sees it"),
                       ("jobs", "jobs submitted to this node"),
                       ("devices", "crossbar device presets and their parameters")):
        client(name, help).add_argument("--json", action="store_true", help="machine-readable output")

    s = client("submit", "submit a job to the mesh and wait for its result")
    s.add_argument("kind", choices=["matmul"], help="job kind")
    s.add_argument("a", metavar="A.npy")
    s.add_argument("b", metavar="B.npy")
    s.add_argument("-o", "--output", metavar="OUT.npy", required=True)
    s.add_argument("--device", metavar="PRESET", help="simulate every share on this preset (default: each node's own)")
    s.add_argument("--seed", type=int, default=0, help="seed for device noise (default 0)")
    s.add_argument("--timeout", type=float, default=600.0, help="give up waiting after this many seconds")
    s.add_argument("--json", action="store_true", help="print the job record as JSON (no progress bar)")

    dp = client("deploy", "program a matrix (.npy) or a model (.onnx, .safetensors) onto "
                          "crossbars across the mesh; it stays resident")
    dp.add_argument("name", metavar="NAME")
    dp.add_argument("w", metavar="FILE", help="W.npy (Y = W @ X), model.onnx, or "
                    "model.safetensors with its layer list; the daemon reads it block by block")
    dp.add_argument("--device", metavar="PRESET")
    dp.add_argument("--replicas", type=int, metavar="R", help="holders per row block (default 2 when the mesh has two or more nodes)")
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--timeout", type=float, default=3600.0, help="give up waiting after this many seconds")
    dp.add_argument("--json", action="store_true", help="print the job record as JSON")

    i = client("infer", "run a deployment on X: Y = W @ X for a matrix, the whole network for a "
                        "model (rows of X are samples, as onnxruntime takes them)")
    i.add_argument("name", metavar="NAME")
    i.add_argument("x", metavar="X.npy")
    i.add_argument("-o", "--output", metavar="Y.npy", required=True)
    i.add_argument("--seed", type=int, help="read-noise seed (default: fresh per request)")
    i.add_argument("--json", action="store_true", help="print a JSON summary (no progress bar)")

    client("deployments", "every matrix and model the mesh knows: layers, holders, replicas, "
                          "bytes, requests").add_argument("--json", action="store_true",
                                                          help="machine-readable output")
    u = client("undeploy", "remove a deployment from every holder (memory and disk); idempotent")
    u.add_argument("name", metavar="NAME")

    k = sub.add_parser("keygen", help="write a new random cluster key file (mode 0600)",
                       description="Write a new cluster key (32 random bytes, base64) to FILE, "
                                   "readable only by you. Give it to every daemon with --cluster-key.")
    k.add_argument("file", metavar="FILE")

    demo = sub.add_parser("demo", help="start a 3-node mesh on loopback and run real crossbar work on it",
                          description="Starts three daemons on loopback ports in a temporary directory, "
                                      "deploys matrices and the digits MLP, runs jobs, prints what each node did, and stops them.")
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--keep", metavar="DIR", help="use DIR for the nodes' data and keep it")
    return p


def main(argv: list[str] | None = None) -> int:
    # the parser is not kept: main's frame lives as long as the daemon (~70 KB of objects)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "daemon":
            return _daemon(args)
        if args.command == "keygen":
            return _keygen(args.file)
        if args.command == "demo":
            from node.demo import run_demo
            return run_demo(args.nodes, args.keep)
        return _client_command(args)
    except UsageError as exc:
        print(f"sedma: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED


def _daemon(args: argparse.Namespace) -> int:
    from node.runtime import logs
    from node.config import ConfigError, build_config
    from node.daemon import run

    overrides = {k: getattr(args, k) for k in (
        "listen", "bootstrap", "data_dir", "socket", "name", "memory_limit", "device", "stun",
        "turn", "cluster_key", "advertise", "capacity", "open", "job_retention",
        "job_retention_count", "disk_limit", "compute_slowdown", "prefetch")}
    try:
        overrides.update(http=args.http, http_token=args.http_token)   # the dashboard
        config = build_config(args.config, overrides)
        from compute.device import get_preset
        get_preset(config.device)
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    logs.setup(config.name, args.log_level)
    try:
        return run(config)
    except (ConfigError, OSError) as exc:
        logging.getLogger("sedma.daemon").error("cannot start: %s", exc)
        return EXIT_FAILED
    except ValueError as exc:  # e.g. another daemon holds the socket
        logging.getLogger("sedma.daemon").error("cannot start: %s", exc)
        return EXIT_FAILED


def _keygen(path: str) -> int:
    from node.net.identity import new_cluster_key, write_private
    from pathlib import Path
    from protocol.handshake import cluster_id_for

    target = Path(path).expanduser()
    if target.exists():
        raise UsageError(f"{path} exists; not overwriting a key (remove it first)")
    key = new_cluster_key()
    try:
        write_private(target, key)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    print(f"wrote cluster key {path} (cluster {cluster_id_for(key.strip())})")
    return EXIT_OK


def _client_command(args: argparse.Namespace) -> int:
    from node.client import Client, DaemonError

    try:
        with Client(args.socket) as client:
            return COMMANDS[args.command](client, args)
    except DaemonError as exc:
        print(f"sedma: {exc}", file=sys.stderr)
        return EXIT_FAILED


def load_npy(path: str) -> np.ndarray:
    """Read a numeric .npy file (no pickles), or raise UsageError saying what is wrong.

    The header is checked against the file's size before numpy allocates what it declares,
    so a 40-byte file claiming terabytes is one line of error, not a MemoryError.
    """
    try:
        with open(path, "rb") as f:
            shape, dtype = _npy_header(f)
            declared = dtype.itemsize * math.prod(shape)
            available = os.fstat(f.fileno()).st_size - f.tell()
            if declared > available:
                raise UsageError(f"{path}: the header declares {declared} bytes of data, "
                                 f"the file holds {available} (truncated or forged)")
            if dtype.kind not in "fiu":
                raise UsageError(f"{path}: expected a numeric array, got dtype {dtype}")
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except UsageError:
        raise
    except Exception as exc:  # numpy's header parser raises many types; all mean "bad file"
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UsageError(f"{path}: not a readable .npy array ({type(exc).__name__}: "
                         f"{first})") from None


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header (format versions 1.0 to 3.0)."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _fortran, dtype = read(f)
    return shape, dtype


def save_npy(path: str, arr: np.ndarray) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(arr))
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def _print(value: Any, as_json: bool, text) -> None:
    if as_json:
        print(json.dumps(value, indent=2, default=str))
    else:
        text(value)


def _cmd_status(c, args) -> int:
    def text(s):
        mem = s["memory"]
        m = s["metrics"]
        lat = m["communication_latency"]
        print(f"node      {s['name']} ({s['id']})")
        print(f"addresses {', '.join(s['addresses'])}")
        print(f"device    {s['device']}   capacity {s['capacity']:.1f} GFLOP/s   load {s['load']:.2f}"
              f"   reachability {s['reachability']}")
        print(f"memory    {_size(mem['free'])} free of {_size(mem['budget'])} budget "
              f"({_size(mem['total'])} physical)")
        print(f"dashboard {s.get('dashboard') or 'off'}")
        print(f"uptime    {s['uptime_s']:.0f}s   members {s['members']}   deployments "
              f"{', '.join(s['deployments']) or '-'}")
        eff = m["memory_utilisation_efficiency"]
        print(f"metrics   memory efficiency {'-' if eff is None else f'{eff:.1%}'}  "
              f"utilisation {m['resource_utilisation']:.1%}  "
              f"rtt p50 {_ms(lat['p50_ms'])} p99 {_ms(lat['p99_ms'])}  "
              f"throughput {m['throughput_per_s']:.2f}/s")
        for name, h in s.get("loops", {}).items():
            if h["consecutive"]:
                print(f"loop      {name} FAILING ({h['failures']} failures): {h['last_error']}")
        if "mesh" in s:
            g = s["mesh"]
            glat = g["communication_latency"]
            geff = g["memory_utilisation_efficiency"]
            gut = g["resource_utilisation"]
            print(f"mesh      {g['nodes']} node(s)  memory efficiency "
                  f"{'-' if geff is None else f'{geff:.1%}'}  utilisation "
                  f"{'-' if gut is None else f'{gut:.1%}'}  rtt p50 {_ms(glat['p50_ms'])} "
                  f"p99 {_ms(glat['p99_ms'])}  throughput {g['throughput_per_s']:.2f}/s")
    _print(c.status(args.mesh), args.json, text)
    return EXIT_OK


def _cmd_memory(c, args) -> int:
    def text(r):
        t0, t1 = r["tiers"]["0"], r["tiers"]["1"]
        print(f"node      {r['name']} ({r['id'][:8]})")
        print(f"tier 0    {_size(t0['used'])} of {_size(t0['limit'])} (RAM)")
        print(f"tier 1    {_size(t1['used'])} of {_size(t1['limit'])} (disk, mapped when read; "
              f"reads at {r['tiers']['tier1_speed']:.0%} of tier-0 speed)")
        p = r["prefetch"]
        hit, acc = p["hit_rate"], p["accuracy"]
        print(f"prefetch  {'on' if p['enabled'] else 'off'}  hit rate "
              f"{'-' if hit is None else f'{hit:.1%}'} of {p['reads']} reads  issued "
              f"{p['issued']} used {p['used']} wasted {p['wasted']} "
              f"(accuracy {'-' if acc is None else f'{acc:.0%}'})  moved "
              f"{_size(p['bytes_loaded'])}")
        for name, blocks in r["blocks"].items():
            tiers = " ".join(f"{i}:t{t}" for i, t in blocks.items())
            print(f"blocks    {name:16} {tiers}")
        for name, rate in r["request_rates"].items():
            print(f"requests  {name:16} {rate:.2f}/s")
        if r["peers"]:
            print(f"{'PEER':10} {'NAME':14} {'ADVERTISED':>11} {'LEARNED':>9} {'OWN':>9} "
                  f"{'RELIABLE':>8}")
        for nid, p in r["peers"].items():
            print(f"{nid[:8]:10} {p['name'][:14]:14} {p['advertised_gflops']:11.1f} "
                  f"{_num(p['learned_gflops']):>9} {_num(p['self_measured_gflops']):>9} "
                  f"{_num(p['reliability'], '{:.0%}'):>8}")
        for d in r["decisions"][-10:]:
            when = time.strftime("%H:%M:%S", time.localtime(d["at"]))
            print(f"{when} {d['kind']:9} {d['name']}/{d['index']} {d['source'][:8]} -> "
                  f"{d['target'][:8] or '-'}: {d['reason']} (predicted gain "
                  f"{d['predicted_gain']:.3g})")
        if not r["decisions"]:
            print("no reconfiguration decisions yet")
    _print(c.memory(), args.json, text)
    return EXIT_OK


def _cmd_peers(c, args) -> int:
    def text(peers):
        if not peers:
            print("no peers (this node is alone)")
            return
        print(f"{'ID':10} {'NAME':14} {'STATE':8} {'LINK':10} {'RTT':>8} {'FREE':>10} "
              f"{'LOAD':>5} {'GFLOP/s':>8} DEVICE  ADDRESSES")
        for p in peers:
            print(f"{p['id'][:8]:10} {p['name'][:14]:14} {p['state']:8} {p['link']:10} "
                  f"{_ms(p['rtt_ms']):>8} {_size(p['memory']['free']):>10} {p['load']:5.2f} "
                  f"{p['capacity']:8.1f} {p['device']:7} {', '.join(p['addresses'])}"
                  + (f"  ({p['link_error']})" if p.get("link_error") else ""))
    _print(c.peers(), args.json, text)
    return EXIT_OK


def _cmd_jobs(c, args) -> int:
    def text(jobs):
        if not jobs:
            print("no jobs yet (submit one with `sedma submit matmul` or `sedma deploy`)")
        for j in jobs:
            took = f"{j['finished'] - j['submitted']:.2f}s" if j["finished"] else "-"
            print(f"{j['id']}  {j['kind']:7} {j['state']:9} {time.strftime('%H:%M:%S', time.localtime(j['submitted']))} "
                  f"{took:>8}  {j['error'] or ''}")
    _print(c.jobs(), args.json, text)
    return EXIT_OK


def _cmd_devices(c, args) -> int:
    def text(devices):
        for d in devices:
            summary = d.get("summary", {})
            print(f"{d['name']:14} " + "  ".join(f"{k}={v}" for k, v in summary.items() if k != "name"))
    _print(c.devices(), args.json, text)
    return EXIT_OK


class TransferBar:
    """Progress bars (rich, on stderr) for transfers of at least ``MIN_BAR_BYTES``.

    Passed to the client as its ``progress`` callback; small transfers finish before a bar
    would be readable, so they draw nothing. Made by :func:`transfer_bar`, which gives
    None instead (no bar at all) for --json or when stdout is not a terminal."""

    MIN_BAR_BYTES = 4 << 20
    LABELS = {"upload": "sending to the daemon", "download": "receiving the result"}

    def __init__(self) -> None:
        self._progress = None
        self._tasks: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if total < self.MIN_BAR_BYTES:
            return
        if self._progress is None:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      DownloadColumn(binary_units=True), TransferSpeedColumn(),
                                      TimeRemainingColumn(), console=Console(stderr=True))
            self._progress.start()
        task = self._tasks.get(phase)
        if task is None:
            task = self._tasks[phase] = self._progress.add_task(
                self.LABELS.get(phase, phase), total=total)
        self._progress.update(task, completed=done)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


@contextlib.contextmanager
def transfer_bar(args: argparse.Namespace) -> Iterator[TransferBar | None]:
    """A bar only for a person watching: not with --json, not when stdout is piped."""
    if getattr(args, "json", False) or not sys.stdout.isatty():
        yield None
        return
    bar = TransferBar()
    try:
        yield bar
    finally:
        bar.close()


def _cmd_submit(c, args) -> int:
    a, b = load_npy(args.a), load_npy(args.b)
    with transfer_bar(args) as bar:
        job_id = c.submit_matmul(a, b, args.device, args.seed, progress=bar)
    info = c.wait(job_id, args.timeout)
    if info["state"] != "done":
        print(f"sedma: job {job_id} {info['state']}: {info.get('error') or 'timed out'}", file=sys.stderr)
        return EXIT_FAILED
    with transfer_bar(args) as bar:
        save_npy(args.output, c.result(job_id, progress=bar))
    if args.json:
        print(json.dumps(info | {"output": args.output}, indent=2, default=str))
    else:
        print(f"job {job_id} done in {info['finished'] - info['submitted']:.3f}s -> {args.output}")
    return EXIT_OK


def _cmd_deploy(c, args) -> int:
    path = os.path.abspath(args.w)
    if not os.path.isfile(path):
        raise UsageError(f"{args.w}: no such file")
    from node.client import INLINE_DEPLOY_BYTES
    if path.endswith(".npy") and os.path.getsize(path) <= INLINE_DEPLOY_BYTES:
        w = load_npy(path)          # small enough for one message: sent, with a bar
        with transfer_bar(args) as bar:
            info = c.deploy(args.name, w, args.device, args.replicas, args.seed, args.timeout,
                            progress=bar)
    else:                           # a model, or a big matrix: the daemon reads the file
        info = c.deploy(args.name, path, args.device, args.replicas, args.seed, args.timeout)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    names = _node_names(c)
    layers = info.get("layer_placement") or [info.get("placement", {})]
    n_in, n_out = info.get("shape") or ["?", "?"]
    if info.get("model", "matrix") == "matrix":
        print(f"deployed {args.name} ({n_out}x{n_in}) as {len(layers[0])} block(s), "
              f"{info.get('replicas')} replica(s) each, job {info['id']}")
    else:
        print(f"deployed {args.name} ({info['model']}, {len(layers)} layer(s), {n_in} -> "
              f"{n_out}), {info.get('replicas')} replica(s) per block, job {info['id']}")
    for li, placement in enumerate(layers):
        spread = "; ".join(f"block {b}: {', '.join(names.get(h, h[:8]) for h in hs)}"
                           for b, hs in placement.items())
        print(f"  layer {li}: {spread}")
    return EXIT_OK


def _node_names(c) -> dict[str, str]:
    s = c.status()
    names = {p["id"]: p["name"] for p in c.peers()}
    names[s["id"]] = s["name"]
    return names


def _cmd_infer(c, args) -> int:
    x = load_npy(args.x)
    with transfer_bar(args) as bar:
        y = c.infer(args.name, x, args.seed, progress=bar)
    save_npy(args.output, y)
    if args.json:
        print(json.dumps({"name": args.name, "output": args.output, "shape": list(y.shape)}))
    else:
        print(f"{args.name}(X) -> {args.output} {tuple(y.shape)}")
    return EXIT_OK


def _cmd_deployments(c, args) -> int:
    def text(deps):
        if not deps:
            print("no deployments (add one with `sedma deploy NAME FILE`)")
            return
        names = _node_names(c)
        for d in deps:
            print(f"{d['name']}  {d['kind']}  {d['shape'][0]} -> {d['shape'][1]}  "
                  f"{len(d['layers'])} layer(s)  device {d['device']}  "
                  f"{_size(d['bytes_resident'])} resident  replicas "
                  f"{d['replicas_live']}/{d['replicas_wanted']}  requests {d['requests']}"
                  + (f"  bytes/request {d['last_bytes_moved']} (minimum "
                     f"{d['last_bytes_minimum']})" if d["requests"] else ""))
            for li, layer in enumerate(d["layers"]):
                blocks = "; ".join(
                    f"b{k} rows {v['rows'][0]}-{v['rows'][1]}: "
                    + ",".join(names.get(h, h[:8]) for h in v["holders"])
                    for k, v in layer["blocks"].items())
                print(f"  layer {li} {layer['shape'][0]}x{layer['shape'][1]} "
                      f"{layer['activation']:8} {blocks or 'no plan found'}")
    _print(c.deployments(), args.json, text)
    return EXIT_OK


def _cmd_undeploy(c, args) -> int:
    info = c.undeploy(args.name)
    print(info["message"] + (f": freed {_size(info['freed_bytes'])} on "
                             f"{len(info['nodes'])} node(s)" if info["freed_bytes"] else ""))
    return EXIT_OK


COMMANDS = {"status": _cmd_status, "memory": _cmd_memory, "peers": _cmd_peers, "jobs": _cmd_jobs,
            "devices": _cmd_devices, "submit": _cmd_submit, "deploy": _cmd_deploy,
            "infer": _cmd_infer, "deployments": _cmd_deployments, "undeploy": _cmd_undeploy}


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}ms"
