"""A block's request rate as the mesh sees it: every holder's own read rate, advertised.

Why: one node acts for each block (its lowest-id live holder: no vote) and judged the
block's rate from its own reads times the number of holders, which assumes the requests
spread evenly. They do not when the acting node is a replica that its coordinators do not
favour, and not at all after a restart (a replica that landed on a lower id has served
nothing): the acting node then saw a rate near 0 and retired a replica another holder was
serving, which the next pass replicated again (the replicate/retire churn of
bench/README's skew runs). Each holder now publishes its hottest blocks' read rates in its
advert's ``stats`` (flat numbers, as that field requires), and the acting node adds them
up over the block's live holders.

Limits: at most ``ADVERT_LIMIT`` blocks per node, only rates of at least ``FLOOR`` req/s
(an idle node advertises none, so its advert does not change), on a grid of half octaves
(within 19 %: the rules compare rates 4x apart). Why the grid: any change of an advert is
gossiped to every member, and a rate decaying after the load stopped (half-life 60 s)
would otherwise republish the advert every ~8 s (the daemon's 10 % tolerance) for minutes;
on the grid it changes once per 30 s until it falls below the floor. A block a holder
does not list counts 0 there (it is cooler than its listed ones, or idle). Sans I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Key = tuple[str, int]

PREFIX = "rate:"
ADVERT_LIMIT = 8     # blocks per advert (a few hot blocks matter; adverts stay small)
FLOOR = 0.05         # req/s below which a block is not advertised (one read in 20 s)


def advert_entries(rates: Mapping[Key, float]) -> dict[str, float]:
    """``stats`` entries for this node's hottest blocks: ``rate:NAME/INDEX`` -> req/s."""
    hot = sorted(((r, k) for k, r in rates.items() if r >= FLOOR and math.isfinite(r)),
                 reverse=True)[:ADVERT_LIMIT]
    return {f"{PREFIX}{name}/{index}": on_grid(r) for r, (name, index) in hot}


def on_grid(rate: float) -> float:
    """``rate`` (> 0) rounded to the nearest half octave, 2 significant figures."""
    return float(f"{2.0 ** (round(2 * math.log2(rate)) / 2):.2g}")


def advertised(stats: Mapping[str, object]) -> dict[Key, float]:
    """The block rates in a peer's ``stats`` (entries that do not parse are ignored: a
    peer's advert is input, and one bad entry must not cost the others)."""
    out: dict[Key, float] = {}
    for k, v in stats.items():
        if not (isinstance(k, str) and k.startswith(PREFIX)) or isinstance(v, bool):
            continue
        name, _, index = k[len(PREFIX):].rpartition("/")
        if (not name or not index.isdigit() or not isinstance(v, (int, float))
                or not 0 <= v < math.inf):
            continue
        out[(name, int(index))] = float(v)
    return out


def mesh_rate(key: Key, holders: list[str], me: str, mine: float,
              others: Mapping[str, Mapping[Key, float]]) -> float:
    """Requests/s of block ``key`` over its live ``holders``: this node's own read rate
    ``mine`` plus what each other holder advertises (``others``: node -> its rates)."""
    return mine + sum(others.get(h, {}).get(key, 0.0) for h in holders if h != me)
