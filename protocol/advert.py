"""A node's advertisement: what the mesh needs to know to place work on it.

Every node publishes one :class:`Advertisement` through gossip. It travels inside gossip
messages as a plain ``dict`` (:meth:`Advertisement.to_dict`) so it is msgpack-able, and is
validated field by field when it comes back (:meth:`Advertisement.from_dict`), because it
arrives from peers we do not control.

``version`` orders the advertisements of one node (together with the node's SWIM
incarnation, see :mod:`protocol.membership`): a receiver keeps the newest. Load and memory
change constantly, so a node only re-advertises when they moved by more than a threshold
(:meth:`Advertisement.differs_enough`), which keeps gossip traffic bounded.

An advertisement is self-certifying: ``identity`` is the node's Ed25519 public key, whose
hash is ``node_id``, and the alive record carrying it is signed by that key
(:func:`sign_alive` / :func:`verify_alive`), so relays cannot alter what a node says about
its memory, capacity, load or addresses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack

from protocol.identity import Identity, verify_claim

REACHABILITY = frozenset({"public", "cone", "symmetric", "unknown"})

#: field name -> accepted Python types when decoding (bool is excluded from int below).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "node_id": (str,), "name": (str,), "addresses": (list,), "reachability": (str,),
    "memory_total": (int,), "memory_free": (int,), "memory_budget": (int,),
    "cores": (int,), "capacity": (float, int), "queue_depth": (int,), "running": (int,),
    "load": (float, int), "device": (str,), "device_summary": (dict,), "extra": (dict,),
    "version": (int,), "identity": (bytes,), "disk_free": (int,), "disk_budget": (int,),
    "tier1_speed": (float, int), "stats": (dict,),
}
_REQUIRED = ("node_id", "name", "addresses")
#: Fields that describe what a node *is*; any change is worth announcing at once.
_IDENTITY = ("node_id", "name", "addresses", "reachability", "memory_total", "cores",
             "capacity", "device", "device_summary", "extra", "identity")
#: Every field but the version and the statistics, compared one by one.
_NOT_STATS = tuple(f for f in _FIELD_TYPES if f not in ("version", "stats"))
#: Statistics in ``stats`` that only ``status --mesh`` reads: no placement, replication,
#: migration or failure-detection rule does (they read ``served_gflops``, ``loop_busy``
#: and the ``rate:`` block rates). News of these alone need not be broadcast: it travels
#: by anti-entropy (push-pull), see :meth:`Advertisement.only_reported_differ`.
REPORT_ONLY_STATS = frozenset({"throughput_per_s", "resource_utilisation", "latency_p50_ms",
                               "latency_p99_ms", "useful_bytes", "resident_bytes"})


@dataclass(slots=True)
class Advertisement:
    """One node's published record. Treat instances as values: replace, don't mutate."""

    node_id: str
    name: str
    addresses: list[str]
    reachability: str = "unknown"
    memory_total: int = 0
    memory_free: int = 0
    memory_budget: int = 0
    cores: int = 1
    capacity: float = 1.0
    queue_depth: int = 0
    running: int = 0
    load: float = 0.0
    device: str = "ideal"
    device_summary: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    version: int = 0
    #: Tier 1 (programmed state on disk, mapped when read): free and total bytes, and its
    #: measured read speed as a fraction of tier 0's (RAM), so placement can discount it.
    disk_free: int = 0
    disk_budget: int = 0
    tier1_speed: float = 1.0
    #: The node's own metrics (throughput, utilisation, latency, memory efficiency,
    #: achieved GFLOP/s serving blocks) for ``status --mesh``; numbers only.
    stats: dict = field(default_factory=dict)
    #: The node's raw Ed25519 public key (node_id is its hash); b"" only in simulations.
    identity: bytes = b""

    def to_dict(self) -> dict:
        """The msgpack-able form carried inside gossip messages."""
        return {f: getattr(self, f) for f in _FIELD_TYPES}

    @classmethod
    def from_dict(cls, d: dict) -> "Advertisement":
        """Validate a peer-supplied dict; raise ValueError naming the first bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"advertisement must be a map, got {type(d).__name__}")
        for name in _REQUIRED:
            if name not in d:
                raise ValueError(f"advertisement: missing field {name!r}")
        unknown = [k for k in d if k not in _FIELD_TYPES]
        if unknown:
            raise ValueError(f"advertisement: unknown field(s) {sorted(map(str, unknown))}")
        for name, value in d.items():
            _check_field(name, value)
        kwargs: dict[str, Any] = dict(d)
        for name in ("capacity", "load", "tier1_speed"):
            if name in kwargs:
                kwargs[name] = float(kwargs[name])
        return cls(**kwargs)

    def replace(self, **fields: Any) -> "Advertisement":
        """A copy with ``fields`` changed (validated like a decoded advertisement)."""
        for name, value in fields.items():
            if name not in _FIELD_TYPES:
                raise ValueError(f"advertisement has no field {name!r}")
            _check_field(name, value)
        return dataclasses.replace(self, **fields)

    def only_reported_differ(self, other: "Advertisement",
                             reported: frozenset[str] = REPORT_ONLY_STATS) -> bool:
        """True when ``other`` differs from this advertisement at most in its version and
        in the statistics named in ``reported``: news nobody decides anything on.

        Such a version is published and signed like any other, but not broadcast (issue
        13): at 100 daemons on one machine the RTT p99 moving with the load re-published
        about one advert a second mesh-wide, each gossiped several times to every member,
        most of the mesh's idle traffic. Anti-entropy (push-pull) carries it within a few
        of its periods; any change that matters carries it at once.
        """
        for name in _NOT_STATS:
            if getattr(self, name) != getattr(other, name):
                return False
        mine, theirs = self.stats, other.stats
        if mine == theirs:
            return True
        return all(mine.get(k, _ABSENT) == theirs.get(k, _ABSENT)
                   for k in mine.keys() | theirs.keys() if k not in reported)

    def differs_enough(self, other: "Advertisement", threshold: float = 0.1) -> bool:
        """True when ``other`` is worth re-advertising over ``self``.

        Identity fields (addresses, reachability, device, ...) matter whenever they change.
        Load-like numbers are noisy, so they count only when they moved by more than
        ``threshold`` relative to their scale: memory relative to the total memory (so a
        few KiB on a large box do not count), counts and load relative to at least 1 (so
        0.00 -> 0.01 load is not a 100% change).
        """
        for name in _IDENTITY:
            if getattr(self, name) != getattr(other, name):
                return True
        scale = max(self.memory_total, other.memory_total, 1)
        for name in ("memory_free", "memory_budget", "disk_free", "disk_budget"):
            if abs(getattr(self, name) - getattr(other, name)) / scale > threshold:
                return True
        for name in ("load", "queue_depth", "running"):
            a, b = getattr(self, name), getattr(other, name)
            if abs(a - b) / max(abs(a), abs(b), 1.0) > threshold:
                return True
        return False


_ABSENT = object()


def _check_field(name: str, value: Any) -> None:
    """Raise ValueError unless ``value`` is acceptable for advertisement field ``name``."""
    types = _FIELD_TYPES[name]
    if isinstance(value, bool) or not isinstance(value, types):
        raise ValueError(f"advertisement.{name}: expected {types[0].__name__}, "
                         f"got {type(value).__name__}")
    if name == "addresses" and not all(isinstance(a, str) for a in value):
        raise ValueError("advertisement.addresses: every address must be a string")
    if name == "reachability" and value not in REACHABILITY:
        raise ValueError(f"advertisement.reachability: {value!r} not in {sorted(REACHABILITY)}")
    if name in ("device_summary", "extra", "stats") and not all(isinstance(k, str) for k in value):
        raise ValueError(f"advertisement.{name}: keys must be strings")
    if name == "stats" and not all(v is None or (isinstance(v, (int, float))
                                                 and not isinstance(v, bool))
                                   for v in value.values()):
        raise ValueError("advertisement.stats: values must be numbers")
    if name == "tier1_speed" and not 0.0 <= value <= 1.0:
        raise ValueError("advertisement.tier1_speed: must be within 0..1")
    if name == "identity" and len(value) not in (0, 32):
        raise ValueError("advertisement.identity: an Ed25519 public key has 32 bytes")
    if name in ("memory_total", "memory_free", "memory_budget", "cores", "queue_depth",
                "running", "version", "disk_free", "disk_budget") and value < 0:
        raise ValueError(f"advertisement.{name}: must not be negative")
    if name in ("capacity", "load") and not 0 <= value < math.inf:
        # placement divides by these: one peer's inf or NaN would fail every plan
        raise ValueError(f"advertisement.{name}: must be a finite number >= 0, got {value!r}")


#: Signs (incarnation, advert) of this node; checks someone's (node_id, incarnation,
#: advert, signature), returning why it is refused or None.
AliveSigner = Callable[[int, Advertisement], bytes]
AliveVerifier = Callable[[str, int, Advertisement, bytes], "str | None"]
ALIVE_CONTEXT = b"sedma-alive-v1"


def alive_claim(node_id: str, incarnation: int, advert: Advertisement) -> bytes:
    """The bytes an alive record's signature covers: canonical (from the parsed advert,
    fields in declaration order), so a relay's re-encoding cannot change them."""
    return msgpack.packb([node_id, incarnation, advert.to_dict()], use_bin_type=True)


def alive_signer(identity: Identity) -> AliveSigner:
    """The signer a node plugs into its membership."""
    def sign(incarnation: int, advert: Advertisement) -> bytes:
        return identity.sign(ALIVE_CONTEXT, alive_claim(identity.node_id, incarnation, advert))
    return sign


def verify_alive(node_id: str, incarnation: int, advert: Advertisement,
                 signature: bytes) -> str | None:
    """Why an alive record of ``node_id`` is not X's own, or None when it verifies."""
    return verify_claim(node_id, advert.identity, ALIVE_CONTEXT,
                        alive_claim(node_id, incarnation, advert), signature)
