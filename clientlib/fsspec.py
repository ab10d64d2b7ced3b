"""An fsspec filesystem, ``ringcache``, so pandas and pyarrow read through the cache.

Chained the fsspec way::

    pd.read_parquet("ringcache::s3://bucket/x.parquet",
                    storage_options={"ringcache": {"etcd": URL, "cluster": NAME}})

Range reads become block reads through :class:`CacheClient` (local memory, owners, then
the origin), pinned to the object version seen at open, so a file never mixes versions.
fsspec's file objects are synchronous; the client lives on fsspec's own I/O event loop.

fsspec needs an ``s3`` filesystem class to parse the inner ``s3://`` URL of a chain, and
s3fs cannot be installed next to current boto3. ringcache's ``s3`` entry point therefore
resolves to :data:`S3`: s3fs's own class when s3fs is installed (nothing changes for its
users), else :class:`OriginFileSystem`, a read-only stand-in over ringcache's boto3
origin that can list and stat, so ``ringcache::s3://`` works without s3fs.
"""

from __future__ import annotations

import importlib.util
import posixpath
from typing import Any

from fsspec.asyn import get_loop, sync
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from clientlib.client import CacheClient
from clientlib.errors import NotFound
from clientlib.etcd import EtcdTarget
from clientlib.origin import ObjectInfo, Origins

__all__ = ["S3", "OriginFileSystem", "RingcacheFileSystem"]


def _url(protocol: str, path: str) -> str:
    """A ringcache URL for a path fsspec has stripped of its protocol."""
    if "://" in path:
        return path
    if protocol == "file":
        return "file://" + ("/" + path.lstrip("/"))
    return f"{protocol}://{path.lstrip('/')}"


def _entry(name: str, info: ObjectInfo) -> dict[str, Any]:
    return {"name": name, "size": info.size, "type": "file", "version": info.version}


class _ReadOnly(AbstractFileSystem):
    """What both filesystems share: info and listings from an origin, read-only files."""

    target_protocol = "s3"

    def _origin_call(self, coro: Any) -> Any:
        raise NotImplementedError

    def _origins(self) -> Origins:
        raise NotImplementedError

    def _stat(self, url: str) -> ObjectInfo:
        origin = self._origins().for_url(url)
        return self._origin_call(origin.stat(url))

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        url = _url(self.target_protocol, path)
        try:
            return _entry(path, self._stat(url))
        except NotFound:
            pass
        dirs, files = self._origin_call(
            self._origins().for_url(url).listdir(url.rstrip("/") + "/", max_keys=1)
        )
        if dirs or files:
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path).rstrip("/")
        url = _url(self.target_protocol, path) + "/"
        dirs, files = self._origin_call(self._origins().for_url(url).listdir(url))
        if not dirs and not files:
            return [self.info(path)] if detail else [path]
        out: list[dict[str, Any]] = [
            {"name": posixpath.join(path, d), "size": 0, "type": "directory"} for d in dirs
        ]
        out += [_entry(posixpath.join(path, posixpath.basename(f.key)), f) for f in files]
        return out if detail else [e["name"] for e in out]

    @classmethod
    def _strip_protocol(cls, path: str) -> str:  # type: ignore[override]
        path = super()._strip_protocol(path)
        for prefix in ("s3://", "file://"):
            if path.startswith(prefix):
                return path[len(prefix) :]
        return path


class RingcacheFileSystem(_ReadOnly, ChainedFileSystem):
    """Reads ``<target_protocol>://...`` objects through a ringcache cluster.

    A secured etcd takes the daemons' settings as options: ``etcd_ca``, ``etcd_cert``,
    ``etcd_key``, ``etcd_user`` and ``etcd_password_file`` (or ``$RINGCACHE_ETCD_PASSWORD``).
    ``hedge_delay`` is mountd's ``--hedge-delay``: how long a block's owner may take before
    its next owner is asked too, then the origin.
    """

    protocol = "ringcache"

    def __init__(
        self,
        etcd: EtcdTarget | str | None = None,
        cluster: str = "default",
        token_file: str | None = None,
        etcd_ca: str | None = None,
        etcd_cert: str | None = None,
        etcd_key: str | None = None,
        etcd_user: str | None = None,
        etcd_password_file: str | None = None,
        hedge_delay: float = 1.0,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        fo: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.target_protocol = target_protocol or "s3"
        self._loop = get_loop()
        if isinstance(etcd, str):
            etcd = EtcdTarget.from_settings(
                {
                    "etcd": etcd,
                    "etcd_ca": etcd_ca,
                    "etcd_cert": etcd_cert,
                    "etcd_key": etcd_key,
                    "etcd_user": etcd_user,
                    "etcd_password_file": etcd_password_file,
                }
            )
        self.client = CacheClient(etcd, cluster, token_file=token_file, hedge_delay=hedge_delay)
        sync(self._loop, self.client.start)

    def _origin_call(self, coro: Any) -> Any:
        return sync(self._loop, lambda: coro)

    def _origins(self) -> Origins:
        return self.client.origins

    def _stat(self, url: str) -> ObjectInfo:
        return sync(self._loop, self.client.stat, url)

    def _open(
        self, path: str, mode: str = "rb", block_size: int | None = None, **kwargs: Any
    ) -> AbstractBufferedFile:
        if mode != "rb":
            raise PermissionError("the ringcache filesystem is read-only")
        path = self._strip_protocol(path)
        info = self._stat(_url(self.target_protocol, path))
        return RingcacheFile(self, path, info, block_size=block_size or self.client.block_size)


class RingcacheFile(AbstractBufferedFile):
    """A read-only file pinned to one object version; ranges go through the cache."""

    def __init__(
        self, fs: RingcacheFileSystem, path: str, info: ObjectInfo, block_size: int
    ) -> None:
        self.object = info
        super().__init__(fs, path, mode="rb", block_size=block_size, size=info.size)

    def _fetch_range(self, start: int, end: int) -> bytes:
        fs: RingcacheFileSystem = self.fs
        return sync(fs._loop, fs.client.read_version, self.object, start, end - start)


class OriginFileSystem(_ReadOnly):
    """Read-only ``s3://`` straight from the origin (stand-in when s3fs is absent)."""

    protocol = "s3"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._loop = get_loop()
        self._origin_set = Origins()

    def _origin_call(self, coro: Any) -> Any:
        return sync(self._loop, lambda: coro)

    def _origins(self) -> Origins:
        return self._origin_set

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> AbstractBufferedFile:
        raise PermissionError("use ringcache::s3:// to read (s3fs is not installed)")


def _s3_class() -> type[AbstractFileSystem]:
    if importlib.util.find_spec("s3fs") is not None:
        import s3fs  # type: ignore[import-not-found]

        return s3fs.S3FileSystem  # type: ignore[no-any-return]
    return OriginFileSystem


#: What the ``s3`` entry point resolves to: s3fs when installed, else the stand-in.
S3 = _s3_class()
