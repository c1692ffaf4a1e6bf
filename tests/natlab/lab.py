"""Build and tear down a NAT lab out of Linux network namespaces.

Topology (every name prefixed ``sedma-<pid>-`` so parallel runs and the host never clash)::

    stun (203.0.113.2 + .3, coturn)   pub (203.0.113.10)
            \\                         /
             +------ sw: bridge br0, 203.0.113.254 (a sink: forwards nothing) ------+
            /                                                                        \\
    r1 wan 203.0.113.21 (NAT)  ...                              rN wan 203.0.113.2N (NAT)
    r1 lan 10.0.1.1                                              rN lan 10.0.N.1
            |                                                                        |
    h1 10.0.1.2                                                  hN 10.0.N.2

Routers are "cone" (``MASQUERADE``: Linux keeps the source port, so the mapping does not
depend on the destination) or "symmetric" (``MASQUERADE --random-fully``: a fresh port per
destination). Like home routers they drop unsolicited input from the WAN: FORWARD and INPUT
accept only ESTABLISHED,RELATED from there. Without that, an early probe from the peer
creates a conntrack entry in the router that blocks the mapping hole punching needs.
Every public namespace routes by default into the sink, because coturn tears down
allocations on a host without a default route.

Veth pairs are created from inside the namespaces (``ip -n NS link add ... netns OTHER``),
so no interface, address or route of the default namespace is ever touched. IPv6 is
disabled in the lab so candidates are the lab's IPv4 addresses only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PUBLIC_NET = "203.0.113"
SINK_IP = f"{PUBLIC_NET}.254"
STUN_IPS = (f"{PUBLIC_NET}.2", f"{PUBLIC_NET}.3")
PUB_IP = f"{PUBLIC_NET}.10"
TURN_PORT = 3478
TURN_USER, TURN_PASSWORD = "sedma", "labsecret"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def missing_requirements() -> str:
    """Why the lab cannot run here ('' if it can): needs root, ip, iptables, conntrack, coturn."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables", "conntrack", "turnserver"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs {tool!r} on PATH"
    return ""


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one setup command (bounded), raising with its stderr on failure."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc


@dataclass
class Site:
    """A NAT router and the private host behind it."""

    index: int
    kind: str           # 'cone' | 'symmetric'
    router: str         # namespace names
    host: str

    @property
    def wan_ip(self) -> str:
        return f"{PUBLIC_NET}.{20 + self.index}"

    @property
    def host_ip(self) -> str:
        return f"10.0.{self.index}.2"


@dataclass
class Lab:
    """One lab instance; ``up()`` builds it, ``down()`` removes everything it made."""

    site_kinds: list[str]
    prefix: str = field(default_factory=lambda: f"sedma-{os.getpid()}-")
    sites: list[Site] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sedma-lab-")))

    # names ------------------------------------------------------------------------
    @property
    def sw(self) -> str:
        return self.prefix + "sw"

    @property
    def stun(self) -> str:
        return self.prefix + "stun"

    @property
    def pub(self) -> str:
        return self.prefix + "pub"

    @property
    def stun_url(self) -> str:
        return f"stun:{STUN_IPS[0]}:{TURN_PORT}"

    def turn_url(self, transport: str = "udp") -> str:
        tail = "?transport=tcp" if transport == "tcp" else ""
        return f"turn:{TURN_USER}:{TURN_PASSWORD}@{STUN_IPS[0]}:{TURN_PORT}{tail}"

    # build ------------------------------------------------------------------------
    def _add_switch(self) -> None:
        """The "internet": a bridge in its own namespace whose own address is a sink."""
        self._add_ns(self.sw)
        run("ip", "-n", self.sw, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.sw, "addr", "add", f"{SINK_IP}/24", "dev", "br0")
        run("ip", "-n", self.sw, "link", "set", "br0", "up")

    def up(self) -> "Lab":
        """Create namespaces, wiring and NAT rules; on any error, undo what was done."""
        sweep_stale()
        try:
            self._add_switch()
            self._add_public(self.stun, "stun", STUN_IPS)
            self._add_public(self.pub, "pub", (PUB_IP,))
            for i, kind in enumerate(self.site_kinds, start=1):
                self._add_site(i, kind)
        except BaseException:
            self.down()
            raise
        return self

    def _add_ns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        self.sh(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        self.sh(name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")

    def _plug(self, ns: str, port: str, inside: str) -> None:
        """A veth from bridge port ``port`` in the switch to interface ``inside`` of ``ns``."""
        run("ip", "-n", self.sw, "link", "add", port, "type", "veth",
            "peer", "name", inside, "netns", ns)
        run("ip", "-n", self.sw, "link", "set", port, "master", "br0", "up")
        run("ip", "-n", ns, "link", "set", inside, "up")

    def _add_public(self, ns: str, port: str, ips: tuple[str, ...]) -> None:
        self._add_ns(ns)
        self._plug(ns, port, "eth0")
        for ip in ips:
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        run("ip", "-n", ns, "route", "add", "default", "via", SINK_IP)

    def _add_site(self, i: int, kind: str) -> None:
        if kind not in ("cone", "symmetric"):
            raise ValueError(f"unknown router kind {kind!r}")
        site = Site(i, kind, f"{self.prefix}r{i}", f"{self.prefix}h{i}")
        self._add_ns(site.router)
        self._add_ns(site.host)
        self.sites.append(site)
        self._plug(site.router, f"r{i}", "wan")
        run("ip", "-n", site.router, "addr", "add", f"{site.wan_ip}/24", "dev", "wan")
        run("ip", "-n", site.router, "route", "add", "default", "via", SINK_IP)
        run("ip", "-n", site.router, "link", "add", "lan", "type", "veth",
            "peer", "name", "eth0", "netns", site.host)
        run("ip", "-n", site.router, "addr", "add", f"10.0.{i}.1/24", "dev", "lan")
        run("ip", "-n", site.router, "link", "set", "lan", "up")
        run("ip", "-n", site.host, "addr", "add", f"{site.host_ip}/24", "dev", "eth0")
        run("ip", "-n", site.host, "link", "set", "eth0", "up")
        run("ip", "-n", site.host, "route", "add", "default", "via", f"10.0.{i}.1")
        self._nat_rules(site)

    def _nat_rules(self, site: Site) -> None:
        r = site.router
        self.sh(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        masq = ["-j", "MASQUERADE"] + (["--random-fully"] if site.kind == "symmetric" else [])
        self.sh(r, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", *masq)
        self.sh(r, "iptables", "-P", "FORWARD", "DROP")
        self.sh(r, "iptables", "-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT")
        self.sh(r, "iptables", "-A", "FORWARD", "-i", "wan", "-o", "lan", "-m", "conntrack",
                "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        self.sh(r, "iptables", "-A", "INPUT", "-i", "wan", "-m", "conntrack",
                "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        self.sh(r, "iptables", "-A", "INPUT", "-i", "wan", "-j", "DROP")

    # use --------------------------------------------------------------------------
    def sh(self, ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside namespace ``ns``."""
        return run("ip", "netns", "exec", ns, *cmd, check=check)

    def argv(self, ns: str, *cmd: str) -> list[str]:
        """The argv that runs ``cmd`` inside ``ns`` (for asyncio subprocesses)."""
        return ["ip", "netns", "exec", ns, *cmd]

    def python_argv(self, ns: str, module: str, *args: str) -> list[str]:
        return self.argv(ns, sys.executable, "-m", module, *args)

    def flush_conntrack(self, site: Site) -> None:
        """Forget every NAT mapping of a router, as a reboot or a mapping timeout would."""
        self.sh(site.router, "conntrack", "-F", check=False)

    def start_coturn(self) -> subprocess.Popen:
        """Start coturn in the stun namespace with a rendered config; wait until it listens."""
        conf = (HERE / "turnserver.conf.in").read_text().format(
            ip1=STUN_IPS[0], ip2=STUN_IPS[1], port=TURN_PORT, user=TURN_USER,
            password=TURN_PASSWORD, workdir=self.workdir)
        path = self.workdir / "turnserver.conf"
        path.write_text(conf)
        log = open(self.workdir / "turnserver.out", "wb")
        proc = subprocess.Popen(self.argv(self.stun, "turnserver", "-c", str(path)),
                                stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"coturn exited: {self.coturn_log()[-2000:]}")
            out = self.sh(self.stun, "ss", "-lnu", check=False).stdout
            if f"{STUN_IPS[0]}:{TURN_PORT}" in out:
                return proc
            time.sleep(0.1)
        raise RuntimeError("coturn did not start listening within 10s")

    def coturn_log(self) -> str:
        parts = []
        for name in ("turnserver.out", "turnserver.log"):
            p = self.workdir / name
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return "\n".join(parts)

    def track(self, proc) -> None:
        """Have ``down()`` kill this process too."""
        self.processes.append(proc)

    # teardown ---------------------------------------------------------------------
    def down(self) -> None:
        """Kill what the lab started and delete its namespaces (idempotent, never raises)."""
        for proc in self.processes:
            _stop(proc)
        self.processes.clear()
        for ns in reversed(self.namespaces):
            pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:  # anything still inside one of OUR namespaces is ours
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


def sweep_stale() -> list[str]:
    """Delete lab namespaces left by runs whose process is gone (e.g. killed with SIGKILL).

    Only names of the form ``sedma-<pid>-...`` whose pid no longer exists are touched.
    """
    removed = []
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(r"sedma-(\d+)-\w+", name)
        if m is None or _alive(int(m.group(1))):
            continue
        for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run("ip", "netns", "del", name, check=False)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(proc) -> None:
    """Terminate, then kill, one child process (works for Popen and asyncio processes)."""
    if getattr(proc, "returncode", None) is not None:
        return
    try:
        proc.terminate()
        if isinstance(proc, subprocess.Popen):
            proc.wait(timeout=3)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


if __name__ == "__main__":  # manual use: python -m tests.natlab.lab cone symmetric
    lab = Lab(sys.argv[1:] or ["cone", "cone"]).up()
    print("lab up:", " ".join(lab.namespaces), "\npress Enter to tear down")
    try:
        input()
    finally:
        lab.down()
