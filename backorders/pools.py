"""Stock pools: groups the sales channels that share a source into independent allocation problems.

Two channels are in the same pool when they share a source, directly or
through other channels (connected components of the channel-source graph).
Channels in different pools never compete for stock, so each pool can be
allocated on its own (``allocation.allocate_pool``) and the results put
together.

Pool ids are deterministic and readable:

* ``"pool-<source>"`` where ``<source>`` is the first, in sorted order, of
  the source codes of the pool;
* ``"nosource-<store>"`` for a channel with no source: it is a pool of its
  own (its demand can never be allocated).
"""

from __future__ import annotations

from typing import Mapping

from backorders.allocation import ChannelPolicy

__all__ = ["stock_pools", "pool_sources"]


def _components(policies: Mapping[str, ChannelPolicy]) -> dict[str, str]:
    """Union-find over source codes; returns source -> smallest source of its component."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for policy in policies.values():
        for s in policy.sources:
            parent.setdefault(s, s)
        for a, b in zip(policy.sources, policy.sources[1:]):
            ra, rb = find(a), find(b)
            if ra != rb:
                # the smaller code becomes the root, so a root is its component's minimum
                if rb < ra:
                    ra, rb = rb, ra
                parent[rb] = ra
    return {s: find(s) for s in parent}


def stock_pools(policies: Mapping[str, ChannelPolicy]) -> dict[str, str]:
    """Map each store (channel) to the id of its stock pool."""
    root = _components(policies)
    out: dict[str, str] = {}
    for store in sorted(policies):
        sources = policies[store].sources
        out[store] = f"pool-{root[sources[0]]}" if sources else f"nosource-{store}"
    return out


def pool_sources(policies: Mapping[str, ChannelPolicy]) -> dict[str, tuple[str, ...]]:
    """Map each pool id to the sorted source codes it holds (empty for a channel with no source)."""
    pools = stock_pools(policies)
    out: dict[str, set[str]] = {}
    for store, pool in pools.items():
        out.setdefault(pool, set()).update(policies[store].sources)
    return {pool: tuple(sorted(srcs)) for pool, srcs in sorted(out.items())}
