"""CPU and page faults of a process, per thread, from /proc (issue 13, oneshot5).

A bench's own accounting of where a daemon's CPU goes: each thread's user + system time
and minor page faults (``/proc/PID/task/TID/stat``), taken before and after one unit of
work, and named by the Python thread that runs on it (``py-spy dump``; threads Python
does not know, such as libuv's or a BLAS pool, keep their kernel ``comm``). CPU time is
the steady figure on a shared machine: it does not count waiting for a core. A minor
fault on a fresh anonymous page costs the kernel a zero-fill of 4 KiB; counting them per
unit of work says whether buffers are reused or fresh.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PY_SPY = Path(sys.executable).with_name("py-spy")


@dataclass(frozen=True)
class TaskSample:
    """One thread's counters at one instant: CPU seconds and minor faults so far."""
    cpu_s: float
    minflt: int


def _stat(path: Path) -> TaskSample | None:
    try:
        fields = path.read_text().rpartition(")")[2].split()
    except OSError:          # the thread ended between the listing and the read
        return None
    return TaskSample((int(fields[11]) + int(fields[12])) / TICK, int(fields[7]))


def sample(pid: int) -> dict[int, TaskSample]:
    """Every live thread of ``pid``: tid -> its counters now."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        got = _stat(task / "stat")
        if got is not None:
            out[int(task.name)] = got
    return out


def delta(before: dict[int, TaskSample], after: dict[int, TaskSample]) -> dict[int, TaskSample]:
    """What each thread used between two samples (a thread born in between from zero)."""
    zero = TaskSample(0.0, 0)
    return {tid: TaskSample(a.cpu_s - before.get(tid, zero).cpu_s,
                            a.minflt - before.get(tid, zero).minflt)
            for tid, a in after.items()}


def thread_names(pid: int) -> dict[int, str]:
    """tid -> the Python thread's name where py-spy can tell it, else the kernel's comm.
    Numbered pool threads (``sedma-compute_1``) keep their number: each is one thread."""
    names = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names[int(task.name)] = (task / "comm").read_text().strip()
        except OSError:
            pass
    if PY_SPY.exists():
        dump = subprocess.run([str(PY_SPY), "dump", "--pid", str(pid)], capture_output=True,
                              text=True, timeout=30).stdout
        for tid, name in re.findall(r'^Thread (\d+) \([^)]*\): "([^"]+)"', dump, re.M):
            names[int(tid)] = name
    return names


class PySpy:
    """``py-spy record --native --threads`` of one process, raw (collapsed) stacks, for as
    long as the block runs; stopped with SIGINT, which makes py-spy write its file."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.out, self.rate = out, rate
        self.proc = subprocess.Popen(
            [str(PY_SPY), "record", "--native", "--threads", "-r", str(rate),
             "-f", "raw", "-o", str(out), "--pid", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


#: A sample whose innermost frames are one of these is a thread waiting, not working
#: (py-spy's own idle test does not see through native frames).
IDLE = (r"PyThread_acquire_lock_timed|pthread_cond_(timed)?wait|epoll_p?wait|"
        r"sem_(clock|timed)?wait|Event\.wait|Condition\.wait|select|poll\b|nanosleep|take_gil")

#: What a working sample was doing: the first category whose pattern is in its stack.
CATEGORIES = [
    ("matmul (BLAS)", r"sgemm|dgemm|gemm_|cblas"),
    ("NaN/Inf scan", r"isfinite|as_matrix"),
    ("seal/open (AES-GCM)", r"aesni|_gcm|gcm_|EVP_|ossl_|seal_parts|decrypt_into|format_nonce"),
    ("msgpack / codec", r"msgpack|unpack_|pack_|codec\.py|decode_split|from_wire|to_wire"),
    ("result file write", r"_save_npy_rows"),
    ("result file read", r"npyio|format\.py|read_array|fromfile|JobManager\.result"),
    ("shm export / unmap", r"_write_all|pwrite|Reaper|munmap|mmap|export|attach"),
    ("frame reassembly (copies)", r"feed_sealed|Reassembler|FramePool|recycle"),
    ("loop lag monitor", r"LagMonitor"),
    ("socket read / write", r"writev|uv__read|uv__try_write|uv__write|sock_|recv|send"),
]


def categorise(raw: Path) -> dict[str, Counter]:
    """thread name -> category -> working samples, from a py-spy raw (collapsed) file;
    samples of waiting threads are left out (``IDLE``)."""
    out: dict[str, Counter] = {}
    if not raw.exists():
        return out
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].rpartition(": ")[2].strip('"')
        if re.search(IDLE, ";".join(frames[-4:])):
            continue
        text = ";".join(frames[1:])
        kind = next((name for name, pat in CATEGORIES if re.search(pat, text)), "other")
        out.setdefault(thread, Counter())[kind] += int(count)
    return out
