"""Daemon configuration: defaults, the optional TOML file, and command-line overrides.

Keys in the TOML file mirror the ``sedma daemon`` flags (``listen``, ``bootstrap``,
``data_dir``, ``socket``, ``name``, ``memory_limit``, ``disk_limit``, ``device``, ``stun``,
``turn``, ``cluster_key``, ``open``, ...); a flag given on the command line wins over the file.
``cluster_key`` is a list (the keyring: first key dials, every key admits); a single
string is one file.
"""

from __future__ import annotations

import math
import os
import re
import socket as sockets
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from nat.iceservers import parse_servers

DEFAULT_PORT = 7946
DEFAULT_HTTP = "127.0.0.1:7947"
DEFAULT_DATA_DIR = "~/.local/share/sedma"
SOCKET_NAME = "sedma.sock"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "ki": 2**10,
          "m": 10**6, "mb": 10**6, "mib": 2**20, "mi": 2**20, "g": 10**9, "gb": 10**9,
          "gib": 2**30, "gi": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40, "ti": 2**40}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the value."""


def parse_size(text: str | int) -> int:
    """``'512MiB'`` -> 536870912; plain integers are bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"not a size: {text!r} (examples: 512MiB, 4GiB, 1000000)")
    size = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if not math.isfinite(size):
        raise ConfigError(f"size {text!r} is too large")
    return int(size)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int | float) -> float:
    """``'24h'`` -> 86400.0; plain numbers are seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise ConfigError(f"not a duration: {text!r} (examples: 24h, 90m, 3600)")
    return float(m.group(1)) * _SECONDS[m.group(2).lower()]


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``HOST`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) < 65536:
        raise ConfigError(f"not a HOST:PORT address: {text!r}")
    return host, int(port)


@dataclass
class NodeConfig:
    """Everything a daemon needs to start."""

    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    bootstrap: list[str] = field(default_factory=list)
    data_dir: str = DEFAULT_DATA_DIR
    socket: str | None = None
    name: str = field(default_factory=sockets.gethostname)
    memory_limit: int = 2 << 30
    #: Tier 1: programmed state kept on disk beyond the RAM budget (every block counts,
    #: the RAM copies too); never below ``memory_limit``.
    disk_limit: int | None = None      # None: equal to memory_limit (no tier 1)
    device: str = "ideal"
    stun: list[str] = field(default_factory=list)
    turn: list[str] = field(default_factory=list)
    #: Cluster key files (the keyring, in order); empty: an open mesh.
    cluster_key: list[str] = field(default_factory=list)
    #: Allow an open mesh (no cluster key) on a non-loopback address.
    open: bool = False
    #: Addresses advertised to peers; default: the listen address (with a real IP).
    advertise: list[str] = field(default_factory=list)
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    #: Advertised GFLOP/s; None measures this machine at start (placement then refines
    #: it with what the dual memory observes).
    capacity: float | None = None
    shutdown_grace: float = 10.0
    #: Testing aid: every compute on this node holds its thread this many times as long
    #: (the extra time is slept on it), to see the mesh move work away from a slow node.
    compute_slowdown: float = 1.0
    #: Learned prefetch of predicted blocks into RAM (off only to measure what it buys).
    prefetch: bool = True
    #: Seconds between reconfiguration passes (replica repair, hot replication, retiring,
    #: migration). TOML only; tests shorten it.
    reconfigure_every: float = 30.0
    #: Seconds a block keeps its holders before it may migrate or lose a replica (the
    #: anti-thrash dwell; migrations per block over T seconds <= T / dwell + 1). TOML only.
    rebalance_dwell_s: float = 120.0
    #: Half-life in seconds of a block's read count, so the time scale on which request
    #: rates (and hot replication, retiring) follow load. TOML only; tests shorten it.
    rate_half_life_s: float = 60.0
    #: Finished jobs (records and result files) are forgotten after this many seconds...
    job_retention: float = 24 * 3600.0
    #: ...or once this many newer ones finished.
    job_retention_count: int = 1000
    #: Seconds between dual-memory consolidations (each one persists both memories).
    memory_save_every: float = 10.0
    #: Dashboard and /metrics address, ``off`` to disable; None is the default address,
    #: served when free (a second daemon on the machine then runs without one).
    http: str | None = None
    #: File holding the bearer token the dashboard requires (mandatory off loopback).
    http_token: str | None = None

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def socket_path(self) -> Path:
        return Path(self.socket).expanduser() if self.socket else self.data_path / SOCKET_NAME

    def validate(self) -> "NodeConfig":
        """Check every value; raise :class:`ConfigError` naming the first bad one."""
        parse_address(self.listen)
        for b in self.bootstrap:
            parse_address(b)
        if self.memory_limit <= 0:
            raise ConfigError(f"memory_limit must be positive, got {self.memory_limit}")
        if self.disk_limit is None:
            self.disk_limit = self.memory_limit
        if self.disk_limit < self.memory_limit:
            raise ConfigError(f"disk_limit ({self.disk_limit}) must be at least memory_limit "
                              f"({self.memory_limit}): every block in RAM is also on disk")
        if not 1.0 <= self.compute_slowdown <= 1000.0:
            raise ConfigError(f"compute_slowdown must be within 1..1000, got "
                              f"{self.compute_slowdown}")
        if not self.name or len(self.name) > 64:
            raise ConfigError("name must be 1 to 64 characters")
        if self.capacity is not None and not 0 < self.capacity < math.inf:
            raise ConfigError(f"capacity must be positive, got {self.capacity}")
        if not 0 <= self.shutdown_grace < math.inf:
            raise ConfigError(f"shutdown_grace must be a finite number of seconds >= 0, "
                              f"got {self.shutdown_grace}")
        try:
            parse_servers(self.stun, self.turn)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not 0.5 <= self.reconfigure_every <= 3600:
            raise ConfigError(f"reconfigure_every must be within 0.5..3600 s, got "
                              f"{self.reconfigure_every}")
        if not 1.0 <= self.rate_half_life_s <= 86400:
            raise ConfigError(f"rate_half_life_s must be within 1..86400 s, got "
                              f"{self.rate_half_life_s}")
        if not 1.0 <= self.rebalance_dwell_s <= 86400:
            raise ConfigError(f"rebalance_dwell_s must be within 1..86400 s, got "
                              f"{self.rebalance_dwell_s}")
        if not 0 < self.memory_save_every < math.inf:   # NaN too: the save loop sleeps on it
            raise ConfigError("memory_save_every must be positive")
        if not 0 < self.job_retention < math.inf or self.job_retention_count < 1:
            raise ConfigError("job_retention must be positive and job_retention_count >= 1")
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        host, _ = parse_address(self.listen)
        if not self.cluster_key and not self.open and not is_loopback(host):
            raise ConfigError(
                f"refusing to listen on {self.listen} without a cluster key: anyone who "
                "reaches it could join, gossip and submit work. Give --cluster-key FILE "
                "(make one with `sedma keygen FILE`), or --open to accept that")
        self._validate_http()
        return self

    def _validate_http(self) -> None:
        """A dashboard on a non-loopback address must have a token: it shows the mesh."""
        if self.http is None or self.http == "off":
            return
        host, _ = parse_address(self.http, 7947)
        if not is_loopback(host) and not self.http_token:
            raise ConfigError(f"--http {self.http} is not a loopback address: it needs "
                              "--http-token FILE (or use --http off)")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost`` (names are not resolved)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into NodeConfig keyword arguments."""
    import tomllib   # only with --config: runs before the event loop starts

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    known = {f.name for f in fields(NodeConfig)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        norm = key.replace("-", "_")
        if norm not in known:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
        out[norm] = value
    return out


def build_config(file: str | None, overrides: dict[str, Any]) -> NodeConfig:
    """Defaults, then the file, then non-None overrides; sizes parsed; validated."""
    values: dict[str, Any] = load_file(file) if file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("memory_limit", "disk_limit"):
        if key in values:
            values[key] = parse_size(values[key])
    if "job_retention" in values:
        values["job_retention"] = parse_duration(values["job_retention"])
    for key in ("bootstrap", "stun", "turn", "advertise", "cluster_key"):
        if isinstance(values.get(key), str):
            values[key] = [values[key]]
    try:
        cfg = NodeConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    _check_types(cfg)
    return cfg.validate()


def _check_types(cfg: NodeConfig) -> None:
    """A TOML file can hold any type: each value must have its field's, or a ConfigError
    names the key (a number where a string belongs failed deep inside start-up)."""
    for name, hint in typing.get_type_hints(NodeConfig).items():
        value = getattr(cfg, name)
        options = (hint,) if typing.get_origin(hint) is list else typing.get_args(hint) or (hint,)
        if not any(_has_type(value, t) for t in options):
            raise ConfigError(f"{name} must be {_type_name(hint)}, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and float in options:
            setattr(cfg, name, float(value))


def _has_type(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint) and not (hint is int and isinstance(value, bool))


def _type_name(hint: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", type(None): "absent"}
    if typing.get_origin(hint) is list:
        return "a list of strings"
    return " or ".join(names.get(t, str(t)) for t in (typing.get_args(hint) or (hint,)))


def with_overrides(cfg: NodeConfig, **changes: Any) -> NodeConfig:
    return replace(cfg, **changes).validate()
