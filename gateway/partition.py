"""Which districts a gateway owns: rendezvous (highest-random-weight) hashing, pure.

Per-pole state (dedup windows, detector state, alarms) must live in exactly one gateway, so the city
is split by district, the topic level every subscription can filter on. With ``n`` gateways, gateway
``k`` owns the districts whose highest-scoring gateway is ``k``; going from n to n+1 gateways moves
only about 1/(n+1) of the districts (and their state), never reshuffles everything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from contract.errors import ConfigError
from contract.ids import DISTRICT_RE


def _score(district: str, k: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{k}:{district}".encode(), digest_size=8).digest(), "big")


def owner(district: str, n: int) -> int:
    return max(range(n), key=lambda k: _score(district, k))


def districts_for(k: int, n: int, districts: Iterable[str]) -> tuple[str, ...]:
    """The districts gateway ``k`` of ``n`` owns (every district is owned by exactly one)."""
    if not 0 <= k < n:
        raise ConfigError(f"partition {k}/{n}: need 0 <= k < n")
    ds = sorted(set(districts))
    for d in ds:
        if DISTRICT_RE.fullmatch(d) is None:
            raise ConfigError(f"invalid district {d!r}")
    return tuple(d for d in ds if owner(d, n) == k)


def parse_partition(text: str) -> tuple[int, int]:
    """``"k/n"`` -> (k, n)."""
    try:
        k_s, n_s = text.split("/")
        k, n = int(k_s), int(n_s)
    except ValueError:
        raise ConfigError(f"partition must look like k/n (e.g. 0/2), not {text!r}") from None
    if not 0 <= k < n:
        raise ConfigError(f"partition {text}: need 0 <= k < n")
    return k, n
