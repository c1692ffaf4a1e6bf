"""Network faults for real daemons: hosts on one switch, with loss and partitions.

The kernel here has no ``netem``, so faults are iptables rules inside each host's own
namespace: random loss is ``-m statistic --mode random --probability P -j DROP`` on INPUT
(every packet a host receives from the switch is dropped with probability P), a partition
is DROP to and from the other hosts' addresses. Each host namespace belongs to the lab
alone, so clearing a fault is flushing its filter table. Built on :class:`Lab` (same
naming, sweeping of stale runs and teardown), without NAT sites or coturn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tests.natlab.lab import PUBLIC_NET, Lab, sweep_stale


@dataclass
class FaultLab(Lab):
    """``n`` hosts (203.0.113.31, .32, ...) on the lab's switch; no NAT, no coturn."""

    site_kinds: list[str] = field(default_factory=list)
    n_hosts: int = 3
    prefix: str = field(default_factory=lambda: f"sedma-{os.getpid()}-f")
    hosts: list[str] = field(default_factory=list)

    def host_ip(self, i: int) -> str:
        return f"{PUBLIC_NET}.{31 + i}"

    def up(self) -> "FaultLab":
        sweep_stale()
        try:
            self._add_switch()
            for i in range(self.n_hosts):
                ns = f"{self.prefix}h{i + 1}"
                self._add_public(ns, f"h{i + 1}", (self.host_ip(i),))
                self.hosts.append(ns)
        except BaseException:
            self.down()
            raise
        return self

    # faults -----------------------------------------------------------------------
    def lose(self, i: int, probability: float) -> None:
        """Drop each packet host ``i`` receives with ``probability``."""
        self.sh(self.hosts[i], "iptables", "-A", "INPUT", "-m", "statistic", "--mode",
                "random", "--probability", str(probability), "-j", "DROP")

    def isolate(self, i: int) -> None:
        """Cut host ``i`` off from every other host, both ways."""
        for j in range(self.n_hosts):
            if j != i:
                self.sh(self.hosts[i], "iptables", "-A", "INPUT", "-s", self.host_ip(j),
                        "-j", "DROP")
                self.sh(self.hosts[i], "iptables", "-A", "OUTPUT", "-d", self.host_ip(j),
                        "-j", "DROP")

    def heal(self, i: int | None = None) -> None:
        """Remove every fault from host ``i`` (all hosts when None)."""
        for ns in self.hosts if i is None else [self.hosts[i]]:
            self.sh(ns, "iptables", "-F")

    def dropped(self, i: int) -> int:
        """Packets host ``i``'s fault rules dropped so far (proof the fault was real)."""
        out = self.sh(self.hosts[i], "iptables", "-L", "-v", "-n", "-x").stdout
        return sum(int(line.split()[0]) for line in out.splitlines()
                   if line.strip().split()[2:3] == ["DROP"])
