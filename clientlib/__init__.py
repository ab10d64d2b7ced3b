"""ringcache client library: what every client of the cache shares.

Block ids, the consistent-hash ring and its etcd watch, the origin backends, and
:class:`CacheClient`, the read path with fallback that mountd, cachectl and users' own
jobs use.
"""

from clientlib.client import CacheClient
from clientlib.errors import RingcacheError

__all__ = ["CacheClient", "RingcacheError"]
