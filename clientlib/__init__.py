"""ringcache client library: what every client of the cache shares.

Block ids, the consistent-hash ring and its etcd watch, the origin backends, and
:class:`CacheClient`, the read path with fallback that mountd, cachectl and users' own
jobs use.
"""

from clientlib.errors import RingcacheError

__all__ = ["CacheClient", "RingcacheError"]


def __getattr__(name: str) -> object:
    # CacheClient pulls in aiohttp and aetcd; importing it lazily keeps `cachenode`
    # (which only needs block ids and origins from here) light.
    if name == "CacheClient":
        from clientlib.client import CacheClient

        return CacheClient
    raise AttributeError(name)
