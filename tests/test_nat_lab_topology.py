"""The lab itself: isolation from the host, teardown, and stale-run cleanup."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.natlab.lab import Lab, missing_requirements, run, sweep_stale

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(bool(missing_requirements()), reason=missing_requirements())]


def host_state() -> tuple[str, str, str]:
    return (run("ip", "-o", "link").stdout, run("ip", "-o", "addr").stdout,
            run("ip", "route").stdout)


def test_lab_leaves_the_default_namespace_alone_and_tears_down():
    before = host_state()
    lab = Lab(["cone"], prefix=f"sedma-{os.getpid()}-t")  # distinct from other labs
    try:
        lab.up()
        assert host_state() == before
        names = run("ip", "netns", "list").stdout
        assert all(ns in names for ns in lab.namespaces)
        # the router really NATs: its nat table has the masquerade rule on its WAN side
        rules = lab.sh(lab.sites[0].router, "iptables", "-t", "nat", "-S").stdout
        assert "-A POSTROUTING -o wan -j MASQUERADE" in rules
    finally:
        made = list(lab.namespaces)
        lab.down()
    names = run("ip", "netns", "list").stdout.split()
    assert not set(made) & set(names)
    assert host_state() == before


def test_stale_namespaces_of_dead_runs_are_swept():
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"sedma-{dead.pid}-leftover"
    run("ip", "netns", "add", name)
    try:
        assert name in sweep_stale()
        assert name not in run("ip", "netns", "list").stdout.split()
    finally:
        run("ip", "netns", "del", name, check=False)
