"""Gossip cost and convergence at N = 10 / 100 / 1000, in the deterministic simulator.

Run by hand from the repository root::

    python bench/gossip.py            # all sizes (about a minute)
    python bench/gossip.py 10 100     # chosen sizes

For each size a warm cluster runs with 1% message loss and the default configuration.
Traffic is measured over one scaled push-pull interval of steady state (so every node's
full-state exchange is included once) and reported per node per second; bytes are the
length of :func:`protocol.messages.encode_message` output (the payload a link carries,
before framing). Then one node changes its advertisement (convergence in protocol periods)
and one node crashes (time until every live node declared it dead, and the extra traffic
that costs). The output is a markdown table, followed by the configuration next to
HashiCorp memberlist's published ``DefaultLANConfig``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol.membership import MembershipConfig, MemberState, push_pull_scale  # noqa: E402
from tests.gossip_sim import NetConfig, Simulator, node_name  # noqa: E402

SIZES = (10, 100, 1000)
LOSS = 0.01


@dataclass
class Row:
    n: int
    msgs: float
    bytes: float
    push_pull_share: float
    advert_periods: float
    detect_s: float
    crash_msgs: float
    wall_s: float


def _per_node_rate(sim: Simulator, before: tuple[int, int], seconds: float) -> tuple[float, float]:
    msgs = sim.stats.messages - before[0]
    nbytes = sim.stats.bytes - before[1]
    live = len(sim.up)
    return msgs / live / seconds, nbytes / live / seconds


def measure(n: int, seed: int = 1) -> Row:
    """Steady-state traffic, advert convergence and crash detection for one cluster size."""
    started = time.perf_counter()
    cfg = MembershipConfig()
    sim = Simulator(n, seed=seed, config=cfg, net=NetConfig(loss=LOSS), measure_bytes=True)
    sim.run_for(5.0)
    window = push_pull_scale(cfg.push_pull_interval, n)
    before = (sim.stats.messages, sim.stats.bytes)
    pp_before = sim.stats.bytes_by_type.get("swim.push_pull", 0)
    sim.run_for(window)
    msgs, nbytes = _per_node_rate(sim, before, window)
    pp_bytes = sim.stats.bytes_by_type.get("swim.push_pull", 0) - pp_before
    pp_share = pp_bytes / max(sim.stats.bytes - before[1], 1)

    subject = node_name(n // 2)
    informed: set[str] = set()
    sim.hooks.append(lambda now, o, ev: informed.add(o) if (
        ev.node_id == subject and ev.kind == "advert" and ev.member.advert.load == 42.0) else None)
    start = sim.now
    sim.route(subject, sim.nodes[subject].update_advert(start, load=42.0))
    done = sim.run_until_true(lambda: len(informed) == n - 1, timeout=120.0, step=0.05)
    advert_periods = (done - start) / cfg.probe_interval if done is not None else float("nan")

    victim = node_name(1)
    sim.crash(victim)
    start = sim.now
    before = (sim.stats.messages, sim.stats.bytes)
    done = sim.run_until_true(
        lambda: all(sim.state_of(o, victim) in (MemberState.DEAD, None) for o in sim.up),
        timeout=300.0, step=0.25)
    detect = done - start if done is not None else float("nan")
    crash_msgs, _ = _per_node_rate(sim, before, max(sim.now - start, 1e-9))
    return Row(n, msgs, nbytes, pp_share, advert_periods, detect, crash_msgs,
               time.perf_counter() - started)


def config_table(cfg: MembershipConfig) -> str:
    """Our defaults next to memberlist's DefaultLANConfig."""
    rows = [
        ("probe interval", f"{cfg.probe_interval:g} s", "1 s"),
        ("probe timeout", f"{cfg.probe_timeout:g} s", "500 ms"),
        ("indirect checks", cfg.indirect_checks, 3),
        ("gossip interval / nodes", f"{cfg.gossip_interval * 1000:g} ms / {cfg.gossip_nodes}",
         "200 ms / 3"),
        ("suspicion mult / max-timeout mult",
         f"{cfg.suspicion_mult} / {cfg.suspicion_max_timeout_mult}", "4 / 6"),
        ("retransmit mult", cfg.retransmit_mult, 4),
        ("push-pull interval (scaled > 32 nodes)", f"{cfg.push_pull_interval:g} s", "30 s"),
        ("awareness max multiplier", cfg.awareness_max_multiplier, 8),
        ("dead record kept", f"{cfg.dead_node_reclaim:g} s", "until reaped (GossipToTheDead 30 s)"),
        ("reconnect ping to a dead member", f"every {cfg.reconnect_interval:g} s", "none (Serf: 30 s)"),
    ]
    lines = ["| parameter | sedma | memberlist LAN |", "|---|---|---|"]
    lines += [f"| {name} | {ours} | {theirs} |" for name, ours, theirs in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    sizes = tuple(int(a) for a in argv) or SIZES
    print(f"Simulated, default config, {LOSS:.0%} loss, 5-10 ms one-way latency.\n")
    print("| N | msgs/node/s | bytes/node/s | of which push-pull | advert convergence (periods) "
          "| crash -> dead everywhere (s) | msgs/node/s while detecting | sim wall (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        r = measure(n)
        print(f"| {r.n} | {r.msgs:.2f} | {r.bytes:,.0f} | {r.push_pull_share:.0%} "
              f"| {r.advert_periods:.2f} "
              f"| {r.detect_s:.1f} | {r.crash_msgs:.2f} | {r.wall_s:.1f} |", flush=True)
    print()
    print(config_table(MembershipConfig()))


if __name__ == "__main__":
    main(sys.argv[1:])
