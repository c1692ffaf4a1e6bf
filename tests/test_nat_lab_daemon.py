"""Real daemons in the NAT lab: join through a public bootstrap, link across NATs, run jobs."""

from __future__ import annotations

import time

import numpy as np
import pytest

from node.net.mesh import DUPLICATE_LINK_GRACE
from tests.natlab.daemons import Daemon, daemon_unavailable, links, start_daemon, wait_until
from tests.natlab.fixtures import lab  # noqa: F401  (pytest fixture)
from tests.natlab.lab import PUB_IP

_UNAVAILABLE = daemon_unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.slow,
              pytest.mark.skipif(bool(_UNAVAILABLE), reason=_UNAVAILABLE)]
PORT = 7946
BOOT = f"{PUB_IP}:{PORT}"


@pytest.fixture
def daemons(lab):
    started: list[Daemon] = []
    yield lambda *a: started.append(start_daemon(lab, *a)) or started[-1]
    for d in started:
        if d.proc.poll() is None:
            d.proc.terminate()
    for d in started:
        try:
            d.proc.wait(timeout=15)
        except Exception:
            d.proc.kill()


def three_nodes(lab, daemons, tag: str, sites: tuple[int, int], servers: list[str]):
    boot = daemons(f"{tag}-boot", lab.pub, f"{PUB_IP}:{PORT}", *servers)
    a = daemons(f"{tag}-a", lab.sites[sites[0]].host, f"0.0.0.0:{PORT}", "--bootstrap", BOOT,
                *servers)
    b = daemons(f"{tag}-b", lab.sites[sites[1]].host, f"0.0.0.0:{PORT}", "--bootstrap", BOOT,
                *servers)
    nodes = (boot, a, b)
    for d in nodes:  # everyone sees everyone (through gossip relayed by the bootstrap)
        others = {n.name for n in nodes} - {d.name}
        wait_until(lambda d=d, o=others: o <= {n for n, p in links(d).items()
                                               if p["state"] == "alive"},
                   60, f"{d.name} to see {others} alive", *nodes)
    return nodes


def link_kind(src: Daemon, dst: Daemon) -> str:
    return links(src).get(dst.name, {}).get("link", "none")


def submit_matmul(lab, node: Daemon, tag: str) -> tuple[np.ndarray, np.ndarray, dict]:
    rng = np.random.default_rng(7)
    a = rng.integers(-4, 5, size=(2048, 64)).astype(np.float32)  # 256-row blocks: room to share
    b = rng.integers(-4, 5, size=(64, 48)).astype(np.float32)
    pa, pb, po = (lab.workdir / f"{tag}-{n}.npy" for n in "abo")
    np.save(pa, a)
    np.save(pb, b)
    out = node.cli("submit", "matmul", str(pa), str(pb), "-o", str(po), "--timeout", "120",
                   timeout=150)
    assert out.returncode == 0, f"submit failed: {out.stderr}\n{node.log()[-3000:]}"
    jobs = node.json("jobs")
    return np.load(po), a @ b, jobs[-1]


async def test_cone_nats_link_directly_and_matmul_is_exact(lab, daemons):
    stun = ["--stun", lab.stun_url]
    boot, a, b = three_nodes(lab, daemons, "cone", (0, 1), stun)
    kind = wait_until(lambda: link_kind(a, b) if link_kind(a, b) != "none" else None, 60,
                      "a link between the two NATed nodes", boot, a, b)
    assert kind == "ice-direct"
    assert link_kind(a, boot) == "tcp"
    result, expected, job = submit_matmul(lab, a, "cone")
    assert np.array_equal(result, expected)
    assert job["state"] == "done" and job["placement"], job


async def test_symmetric_nats_link_through_turn_and_job_works(lab, daemons):
    servers = ["--stun", lab.stun_url, "--turn", lab.turn_url()]
    boot, a, b = three_nodes(lab, daemons, "sym", (2, 3), servers)
    kind = wait_until(lambda: link_kind(a, b) if link_kind(a, b) != "none" else None, 60,
                      "a link between the two NATed nodes", boot, a, b)
    assert kind == "ice-relay"
    result, expected, job = submit_matmul(lab, a, "sym")
    assert np.array_equal(result, expected)
    assert job["state"] == "done" and job["placement"], job


async def test_symmetric_without_turn_fails_clearly_and_work_routes_around(lab, daemons):
    stun = ["--stun", lab.stun_url]
    boot, a, b = three_nodes(lab, daemons, "noturn", (2, 3), stun)
    error = wait_until(lambda: links(a)[b.name]["link_error"], 60,
                       "a recorded link failure between the symmetric nodes", boot, a, b)
    assert ("both ends are behind symmetric NATs and neither has a TURN relay" in error
            or "no working candidate pair" in error), error
    assert link_kind(a, b) == "none"
    result, expected, _job = submit_matmul(lab, a, "noturn")
    assert np.array_equal(result, expected)


async def test_a_vanished_nat_mapping_is_noticed_and_the_daemons_relink(lab, daemons):
    """Flushing a's router breaks every mapping behind it. The TCP link a dialled to the
    bootstrap is dead (the next segment is reset): a must notice and dial again, and the
    bootstrap must take the new link over the stale one. The relayed a-b link either
    survives (TURN permissions are per IP) or is rebuilt; either way the mesh heals."""
    servers = ["--stun", lab.stun_url, "--turn", lab.turn_url()]
    # Fixed ids (bootstrap < a) make the bootstrap's duplicate-link rule face the case that
    # once kept a dead link: both links dialled by a, the stale one first.
    for name, node_id in (("flush-boot", "0" * 32), ("flush-a", "f" * 32)):
        (lab.workdir / name).mkdir(parents=True, exist_ok=True)
        (lab.workdir / name / "node_id").write_text(node_id + "\n")
    boot, a, b = three_nodes(lab, daemons, "flush", (2, 3), servers)
    wait_until(lambda: link_kind(a, b) == "ice-relay", 60, "the relayed link", boot, a, b)
    boot_id = links(a)[boot.name]["id"][:8]

    def count(node: Daemon, text: str) -> int:
        return sum(text in line and "duplicate link" not in line
                   for line in node.log().splitlines())
    lost_before = count(a, f"link to {boot_id} closed")
    linked_before = count(a, f"linked to {boot.name} ")

    lab.flush_conntrack(lab.sites[2])   # a's symmetric router forgets every mapping

    wait_until(lambda: count(a, f"link to {boot_id} closed") > lost_before, 60,
               "a to notice that its link to the bootstrap is gone", boot, a, b)
    wait_until(lambda: count(a, f"linked to {boot.name} ") > linked_before
               and link_kind(a, boot) == "tcp", 60, "a new link to the bootstrap", boot, a, b)
    for node in (boot, a, b):
        others = {n.name for n in (boot, a, b)} - {node.name}
        wait_until(lambda node=node, others=others: all(
            links(node)[o]["state"] == "alive" and links(node)[o]["link"] != "none"
            for o in others), 90, f"{node.name} to see everyone alive and linked", boot, a, b)
    settled = count(a, f"link to {boot_id} closed")
    time.sleep(DUPLICATE_LINK_GRACE + 1)   # watch one grace period: no link may flap
    assert count(a, f"link to {boot_id} closed") == settled, a.log()[-2000:]
    result, expected, job = submit_matmul(lab, a, "flush")
    assert np.array_equal(result, expected)
    assert job["state"] == "done", job
