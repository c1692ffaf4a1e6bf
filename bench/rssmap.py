"""Where a process's RSS goes, by mapping (issue 13): one helper for the benches.

``/proc/PID/smaps`` lists every mapping with its resident, private and shared pages. The
groups below are the ones that matter for a daemon: the interpreter and each large
native library (file-backed code and data, shared between daemons, so counted in full in
each one's RSS but divided in PSS), the malloc heap, anonymous memory (pymalloc arenas,
numpy buffers, mapped request buffers, thread arenas and stacks), blocks mapped from the
data dir and shared memory from clients.

It also measures what importing the daemon costs, group by group in the order the
daemon imports them (``--imports``): each row is a fresh interpreter importing every group
so far, so a row's delta is what that group adds on top of the ones before it (shared
dependencies count where they are first imported).

Each ``--imports`` row also gives the RSS after glibc's ``malloc_trim(0)``, which a daemon
runs once it has started: compiling a module from source (no cached bytecode, as in this
sandbox, where ``PYTHONDONTWRITEBYTECODE=1``) leaves megabytes of freed compiler memory in
the malloc heap, counted in the plain RSS but given back by the trim. ``--modules`` says
which of the project's own modules hold what stays: the bytes of live Python objects each
one adds when imported (tracemalloc, modules imported leaves first, in the order
``python -X importtime`` finishes them, so each row is the module's own objects: code,
functions, classes, tables).

Run by hand:  python bench/rssmap.py PID [PID ...]   (prints one table per process)
              python bench/rssmap.py --imports [--tree PATH]   (import cost per group)
              python bench/rssmap.py --modules [--tree PATH]   (live bytes per own module)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

_HEAD = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")

#: (group, pattern on the mapping's path): the first match names the group.
GROUPS = (
    ("libpython", re.compile(r"libpython|/python3\.\d+$")),
    ("cryptography (Rust)", re.compile(r"cryptography.*_rust")),
    ("libssl/libcrypto", re.compile(r"libssl|libcrypto")),
    ("openblas", re.compile(r"openblas", re.I)),
    ("numpy", re.compile(r"/numpy/")),
    ("uvloop", re.compile(r"/uvloop/")),
    ("sqlite", re.compile(r"sqlite")),
    ("libc/ld/libm", re.compile(r"/libc[.-]|/ld-linux|/libm[.-]|libgcc|libstdc|libgfortran|libquadmath")),
    ("other .so", re.compile(r"\.so")),
    ("shared memory (memfd, /dev/shm)", re.compile(r"^/memfd:|^/dev/shm/")),
    ("heap", re.compile(r"^\[heap\]$")),
    ("stacks", re.compile(r"^\[stack")),
    ("mapped /dev/zero", re.compile(r"^/dev/zero")),
)


def group_of(path: str, data_dir: str | None) -> str:
    if not path:
        return "anonymous"
    if data_dir and path.startswith(data_dir):
        return "data dir (blocks)"
    for name, pattern in GROUPS:
        if pattern.search(path):
            return name
    return "other"


def breakdown(pid: int, data_dir: str | Path | None = None) -> dict[str, dict[str, int]]:
    """{group: {"rss", "pss", "private", "anon"}} in bytes, for one process."""
    groups: dict[str, dict[str, int]] = {}
    current: dict[str, int] = {}
    dd = str(data_dir) if data_dir else None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if _HEAD.match(line):
                parts = line.split(None, 5)
                path = parts[5].strip() if len(parts) > 5 else ""
                current = groups.setdefault(group_of(path, dd),
                                            {"rss": 0, "pss": 0, "private": 0, "anon": 0})
                continue
            key, _, rest = line.partition(":")
            field = {"Rss": "rss", "Pss": "pss", "Private_Clean": "private",
                     "Private_Dirty": "private", "Anonymous": "anon"}.get(key)
            if field:
                current[field] += int(rest.split()[0]) * 1024
    return groups


def table(pid: int, data_dir: str | Path | None = None) -> str:
    """A markdown table of :func:`breakdown`, largest RSS first, with the total."""
    groups = breakdown(pid, data_dir)
    mib = 2 ** 20
    lines = ["| mapping | RSS MiB | PSS MiB | private MiB | anonymous MiB |", "|---|---:|---:|---:|---:|"]
    for name, v in sorted(groups.items(), key=lambda kv: -kv[1]["rss"]):
        if v["rss"] >= 64 * 1024:
            lines.append(f"| {name} | {v['rss'] / mib:.1f} | {v['pss'] / mib:.1f} | "
                         f"{v['private'] / mib:.1f} | {v['anon'] / mib:.1f} |")
    tot = {k: sum(v[k] for v in groups.values()) for k in ("rss", "pss", "private", "anon")}
    lines.append(f"| **total** | {tot['rss'] / mib:.1f} | {tot['pss'] / mib:.1f} | "
                 f"{tot['private'] / mib:.1f} | {tot['anon'] / mib:.1f} |")
    return "\n".join(lines)


#: The daemon's imports in groups, in the order ``python -m node daemon`` reaches them;
#: the last rows are what a working daemon adds (numpy, its random module, threadpoolctl).
IMPORT_GROUPS = (
    ("the interpreter, logging, typing, dataclasses", "logging typing dataclasses"),
    ("argparse, json (the CLI)", "argparse json"),
    ("asyncio (with ssl, subprocess, inspect, concurrent.futures)", "asyncio"),
    ("uvloop", "uvloop"),
    ("msgpack", "msgpack"),
    ("cryptography (AES-GCM, Ed25519, X25519)",
     "cryptography.hazmat.primitives.ciphers.aead cryptography.hazmat.primitives.asymmetric.ed25519"),
    ("noise (Noise protocol)", "noise.connection"),
    ("sqlite3", "sqlite3"),
    ("ctypes", "ctypes"),
    ("protocol/ (codec, messages, membership)", "protocol.codec protocol.messages protocol.membership"),
    ("nat/ (links, ICE signalling)", "nat.connector nat.signaling"),
    ("compute/ (crossbar, executor, models)", "compute.crossbar compute.executor compute.model"),
    ("node/memory, node/work", "node.memory.store node.work.holder node.work.jobs node.work.models"),
    ("node.daemon, node.cli (the rest)", "node.daemon node.cli"),
    ("numpy (with OpenBLAS, 1 thread)", "numpy"),
    ("numpy.random (loaded with numpy, lazynumpy.PRELOAD)", "numpy.random"),
    ("threadpoolctl", "threadpoolctl"),
)

_PROBE = """
import ctypes, importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
def rollup():
    fields = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup") if ":" in line)
    return [int(fields[key].split()[0]) for key in ("Rss", "Anonymous")]
rss, anon = rollup()
ctypes.CDLL(None).malloc_trim(0)
print(len(sys.modules), rss, anon, rollup()[0])
"""


def import_costs(tree: Path) -> str:
    """A markdown table of :data:`IMPORT_GROUPS`' cumulative import cost (fresh
    interpreters, ``tree`` first on the path, one BLAS thread)."""
    env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def probe(names: list[str]) -> list[int]:
        out = subprocess.run([sys.executable, "-c", _PROBE, *names], env=env, cwd=tree,
                             capture_output=True, text=True, timeout=120, check=True)
        return [int(v) for v in out.stdout.split()]

    lines = ["| imported (cumulative) | modules | RSS MB | + RSS MB | + anonymous MB "
             "| RSS after trim MB | + after trim MB |", "|---|---:|---:|---:|---:|---:|---:|"]
    before = probe([])
    lines.append(f"| python -c '' | {before[0]} | {before[1] / 1024:.1f} | | | "
                 f"{before[3] / 1024:.1f} | |")
    names: list[str] = []
    for label, group in IMPORT_GROUPS:
        names += group.split()
        now = probe(names)
        lines.append(f"| + {label} | {now[0]} | {now[1] / 1024:.1f} | "
                     f"{(now[1] - before[1]) / 1024:+.1f} | {(now[2] - before[2]) / 1024:+.1f} | "
                     f"{now[3] / 1024:.1f} | {(now[3] - before[3]) / 1024:+.1f} |")
        before = now
    return "\n".join(lines)


#: The project's own packages (``--modules``).
OWN = ("node", "protocol", "nat", "compute")

_MODULES_PROBE = """
import gc, importlib, sys, tracemalloc
for name in sys.argv[2].split():
    importlib.import_module(name)
tracemalloc.start()
gc.collect()
before = tracemalloc.get_traced_memory()[0]
for name in sys.argv[1].split():
    importlib.import_module(name)
    gc.collect()
    now = tracemalloc.get_traced_memory()[0]
    print(name, now - before)
    before = now
"""


def finish_order(tree: Path, env: dict[str, str], roots: str) -> list[str]:
    """The project's modules that importing ``roots`` loads, leaves first (the order in
    which ``python -X importtime`` reports them done)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {roots}"],
                         env=env, cwd=tree, capture_output=True, text=True, timeout=120,
                         check=True)
    names = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
             if line.startswith("import time:")]
    return [n for n in names if n.split(".")[0] in OWN]


def module_costs(tree: Path, top: int = 25) -> str:
    """A markdown table: live bytes of Python objects each own module adds when the daemon's
    imports run (the libraries before them not counted), largest first, and the total."""
    env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1")
    order = finish_order(tree, env, "node.cli, node.daemon")
    libraries = " ".join(g for _, g in IMPORT_GROUPS[:9])
    out = subprocess.run([sys.executable, "-c", _MODULES_PROBE, " ".join(order), libraries],
                         env=env, cwd=tree, capture_output=True, text=True, timeout=120,
                         check=True)
    sizes = [(int(size), name) for name, size in (ln.split() for ln in out.stdout.splitlines())]
    total = sum(size for size, _ in sizes)
    lines = ["| own module | live KB |", "|---|---:|"]
    lines += [f"| {name} | {size / 1024:.0f} |" for size, name in sorted(sizes, reverse=True)[:top]]
    lines.append(f"| **all {len(sizes)} own modules** | **{total / 1024:.0f}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] in (["--imports"], ["--modules"]):
        tree = Path(sys.argv[3]) if sys.argv[2:3] == ["--tree"] else Path(__file__).resolve().parents[1]
        print((import_costs if sys.argv[1] == "--imports" else module_costs)(tree.resolve()))
    else:
        for arg in sys.argv[1:]:
            print(f"pid {arg}:\n{table(int(arg))}\n")
