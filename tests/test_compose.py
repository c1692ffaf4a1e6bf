"""docker-compose.yml is valid compose, and every service runs a command sedma accepts."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from nat.iceservers import parse_servers
from node.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = shutil.which("docker-compose")


@pytest.mark.skipif(COMPOSE is None, reason="Debian's docker-compose is not installed "
                    "(make test installs it when run as root)")
def test_compose_file_validates_without_an_engine():
    out = subprocess.run([COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "config"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    assert {"bootstrap", "node1", "node2", "coturn"} <= set(config["services"])


def test_every_service_command_parses_and_joiners_point_at_the_bootstrap():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    parser = build_parser()
    daemons = {}
    for name, svc in services.items():
        if svc.get("image", "").startswith("coturn") or "turnserver" in str(svc.get("command")):
            continue
        args = parser.parse_args(svc["command"])
        assert args.command == "daemon"
        daemons[name] = args
    assert not daemons["bootstrap"].bootstrap
    for name in ("node1", "node2"):
        assert daemons[name].bootstrap == ["bootstrap:7946"]
        assert daemons[name].advertise == [f"{name}:7946"]
    for args in daemons.values():               # every node can use the compose TURN server
        assert args.stun == ["stun:coturn:3478"]
        servers = parse_servers(args.stun, args.turn)
        assert [s.url for s in servers] == ["stun:coturn:3478", "turn:coturn:3478"]
    coturn = services["coturn"]["command"]
    user = next(a.split("=", 1)[1] for a in coturn if a.startswith("--user="))
    assert all(t.startswith(f"turn:{user}@") for a in daemons.values() for t in a.turn)


def test_the_compose_mesh_is_keyed_and_client_commands_find_the_daemon_socket():
    from node.config import build_config

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    parser = build_parser()
    assert compose["secrets"]["cluster_key"]["file"] == "./cluster.key"
    for name in ("bootstrap", "node1", "node2"):
        svc = compose["services"][name]
        args = parser.parse_args(svc["command"])
        assert svc["secrets"] == ["cluster_key"]
        assert args.cluster_key == ["/run/secrets/cluster_key"]
        # a keyed daemon may listen on every interface (an open one would be refused)
        overrides = {k: getattr(args, k) for k in ("listen", "cluster_key", "data_dir", "open")}
        assert build_config(None, overrides).socket_path.as_posix() == "/data/sedma.sock"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ENV SEDMA_SOCKET=/data/sedma.sock" in dockerfile   # `compose exec ... sedma peers`
