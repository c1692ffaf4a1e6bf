"""Testing and bench aid: run processes under a CPU quota (cgroup v1 ``cpu`` controller).

A real way to make one daemon of a local mesh slower than the others, next to the
``--compute-slowdown`` testing aid: the kernel lets the processes in the group run for
``quota`` microseconds of CPU per ``period`` (the CFS bandwidth controller), so everything
the daemon does (BLAS threads, event loop, codec) gets slower, as on a smaller machine.

Needs root and the v1 ``cpu`` controller mounted at ``/sys/fs/cgroup/cpu`` (as in CI);
:func:`available` says why not otherwise. The group is removed on :meth:`CpuQuota.close`
(its processes are moved back to the root group first), also when the process died.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 10_000      # short: the quota then slows each computation evenly, like a slower
                        # CPU, instead of letting a short one run at full speed in a burst
MIN_QUOTA_US = 1_000

def available(root: Path = ROOT) -> str:
    """'' when quotas can be set here, else why not (for a skip reason)."""
    if not (root / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {root}"
    if os.geteuid() != 0:
        return "setting a CPU quota needs root"
    return ""


class CpuQuota:
    """A cgroup holding processes to ``cpus`` CPUs' worth of time (0.1 = 10 % of one)."""

    def __init__(self, name: str, cpus: float, root: Path = ROOT) -> None:
        if not 0.01 <= cpus <= 64:
            raise ValueError(f"cpus must be within 0.01..64, got {cpus}")
        self.root = root
        self.path = root / f"sedma-{name}-{os.getpid()}"
        # the kernel takes quotas of 1 ms and more: a longer period for small fractions
        self.period_us = max(PERIOD_US, -(-MIN_QUOTA_US * 1000 // int(cpus * 1000)))
        self.quota_us = int(cpus * self.period_us)
        self.path.mkdir(exist_ok=True)
        try:
            (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        except OSError:
            self.path.rmdir()
            raise

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the group."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def throttled_us(self) -> int:
        """Microseconds the group was held back by its quota so far (cpu.stat)."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "throttled_time":
                return int(value) // 1000
        return 0

    def close(self) -> None:
        """Move whatever is left back to the root group, then remove the group."""
        if not self.path.exists():
            return
        for pid in self.pids():
            try:
                (self.root / "cgroup.procs").write_text(str(pid))
            except (ProcessLookupError, OSError):
                pass                   # exited meanwhile
        self.path.rmdir()

    def __enter__(self) -> "CpuQuota":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
