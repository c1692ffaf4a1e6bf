"""Where a process's RSS goes, by mapping (issue 13): one helper for the benches.

``/proc/PID/smaps`` lists every mapping with its resident, private and shared pages. The
groups below are the ones that matter for a daemon: the interpreter and each large
native library (file-backed code and data, shared between daemons, so counted in full in
each one's RSS but divided in PSS), the malloc heap, anonymous memory (pymalloc arenas,
numpy buffers, mapped request buffers, thread arenas and stacks), blocks mapped from the
data dir and shared memory from clients.

Run by hand:  python bench/rssmap.py PID [PID ...]   (prints one table per process)
"""

from __future__ import annotations

import re
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


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"pid {arg}:\n{table(int(arg))}\n")
