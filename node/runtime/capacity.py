"""This node's compute capacity (GFLOP/s): measured in a short-lived child process, and
remembered in the data dir for a day.

Why not in the daemon: the probe (a few 512x512 float32 matmuls) faults in BLAS's code
pages and work buffers, about 3 MB of RSS that an idle daemon then keeps for nothing
(issue 13). A child process pays that and exits. Why remember it: a restart should not
pay a second interpreter start; the value is keyed by what it depends on (CPU model,
usable cores, BLAS threads, numpy version), so another machine or setting measures
afresh, and it expires so a measurement taken at a bad moment does not stick forever.
The dual memory learns what peers really achieve; this number only seeds placement.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from compute.executor import BLAS_THREAD_VARS

log = logging.getLogger("sedma.capacity")

CACHE_FILE = "capacity.json"
MAX_AGE_S = 24 * 3600.0
CHILD_TIMEOUT_S = 120.0
#: What the child runs: the same probe the daemon would run in-process.
CHILD_CODE = "from compute.executor import measure_capacity; print(measure_capacity())"


def machine_key(blas_threads: int) -> dict[str, Any]:
    """What a capacity measurement depends on."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {"cpu": model, "cores": usable, "blas_threads": blas_threads,
            "numpy": numpy_version()}


def numpy_version() -> str:
    """The installed numpy's version, read from its ``numpy-X.Y.Z.dist-info`` directory
    without importing numpy (an idle daemon does not load it: ~10 MB of RSS) or
    ``importlib.metadata`` (which pulls in the email package); "" if not found."""
    spec = importlib.util.find_spec("numpy")
    if spec is None or not spec.origin:
        return ""
    site = Path(spec.origin).parent.parent
    for info in sorted(site.glob("numpy-*.dist-info")):
        return info.name[len("numpy-"):-len(".dist-info")]
    return ""


def read_cached(path: Path, key: dict[str, Any], now: float) -> float | None:
    """The remembered capacity if ``path`` holds one for ``key`` younger than
    ``MAX_AGE_S``; None otherwise (missing, unreadable, other machine, too old)."""
    try:
        data = json.loads(path.read_text())
        value, at = float(data["gflops"]), float(data["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if data.get("key") != key or not 0 <= now - at <= MAX_AGE_S:
        return None
    return value if math.isfinite(value) and value > 0 else None


def write_cached(path: Path, key: dict[str, Any], gflops: float, now: float) -> None:
    """Remember ``gflops`` atomically (a crash leaves the old file or the new one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"gflops": gflops, "at": now, "key": key}))
    os.replace(tmp, path)


async def measure_in_child(blas_threads: int, timeout: float = CHILD_TIMEOUT_S) -> float:
    """Run the probe in a child Python with the daemon's BLAS thread count.

    The child is started and waited for by ``subprocess`` on a one-off thread, not by the
    event loop's subprocess support: the daemon keeps no child watcher, and the loop's
    process machinery (uvloop's) stays out of a daemon that otherwise never spawns."""
    root = str(Path(__file__).resolve().parents[2])   # the repository root
    env = dict(os.environ)
    for var in BLAS_THREAD_VARS:
        env[var] = str(blas_threads)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    done: concurrent.futures.Future = concurrent.futures.Future()

    def work() -> None:
        try:
            done.set_result(subprocess.run(
                [sys.executable, "-c", CHILD_CODE], env=env, cwd=root,
                stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout))
        except BaseException as exc:     # delivered to the awaiting coroutine
            done.set_exception(exc)

    threading.Thread(target=work, name="sedma-capacity", daemon=True).start()
    try:
        proc = await asyncio.wrap_future(done)
    except subprocess.TimeoutExpired as exc:       # run() killed the child
        raise asyncio.TimeoutError(f"capacity probe took over {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"capacity probe exited with {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    value = float(lines[-1]) if lines else math.nan      # ValueError if not a number
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"capacity probe printed {value!r}")
    return value


async def node_capacity(data_dir: Path, blas_threads: int,
                        in_process: Callable[[], Awaitable[float]],
                        clock: Callable[[], float] = time.time) -> float:
    """The capacity to advertise: remembered, else measured in a child (else, if the
    child cannot run, in-process by ``in_process``) and remembered."""
    path = data_dir / CACHE_FILE
    key = machine_key(blas_threads)
    cached = read_cached(path, key, clock())
    if cached is not None:
        log.info("capacity %.1f GFLOP/s, measured within the last %.0f h (%s)", cached,
                 MAX_AGE_S / 3600, path)
        return cached
    try:
        value = await measure_in_child(blas_threads)
    except (OSError, RuntimeError, ValueError, asyncio.TimeoutError) as exc:
        log.warning("capacity probe in a child process failed (%s); measuring here", exc)
        value = await in_process()
    try:
        write_cached(path, key, value, clock())
    except OSError as exc:
        log.warning("cannot remember the capacity in %s: %s", path, exc)
    return value
