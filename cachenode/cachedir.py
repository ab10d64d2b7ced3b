"""One cache dir of a node's store: its layout, its index, its room and its health.

Layout::

    <dir>/.lock                  flock'ed while a store uses the dir
    <dir>/index.snapshot         the index saved at a clean stop (cachenode.indexsnapshot)
    <dir>/tmp/                   writes in progress
    <dir>/blocks/00 .. ff/       block files (clientlib.blockfile), sharded by the id's first byte

A dir's index is its eviction policy (:mod:`cachenode.eviction`): block key (the id as a
128-bit int) to length and checksum, which together name the block's file. Opening a dir
rebuilds that index from its snapshot or else from the shards' listings alone, with no
stat and no read. A dir is *up* until an error shows it cannot be used (gone, replaced,
read-only, failing); it is then *down* for good: its blocks leave the
index and their files stay for a later start.

Everything here runs on the event loop thread except :meth:`CacheDir.open`, which a
store runs before it serves.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import xxhash

from cachenode import indexsnapshot
from cachenode.eviction import EvictionPolicy, make_policy
from clientlib.blockfile import NameColumns, block_filename, parse_name, parse_names
from clientlib.errors import ConfigError

__all__ = [
    "CacheDir",
    "CacheDirSpec",
    "disk_usage",
    "unlink_quietly",
]

log = logging.getLogger(__name__)

_SHARDS = tuple(f"{i:02x}" for i in range(256))

#: Errors that may mean a dir cannot be used any more (gone, replaced, read-only, failing);
#: :meth:`CacheDir.failed` then looks at the dir to decide.
_DIR_ERRNOS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}
)


def disk_usage(path: str) -> tuple[int, int]:
    """``(total, available)`` bytes of the file system holding ``path``.

    The one place a store asks the disk how full it is (tests replace it to simulate a
    disk that other programs fill).
    """
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def unlink_quietly(paths: Iterable[str]) -> None:
    """Delete these files; one already gone is no error."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@dataclass(frozen=True)
class CacheDirSpec:
    """One cache dir as configured: where it is and how many bytes it may hold."""

    path: Path
    size: int


class CacheDir:
    """One cache dir: its paths, its index (the policy), its byte limit and its health.

    ``on_evict(nbytes)`` is called for each block that leaves to make room.
    """

    __slots__ = (
        "blocks",
        "down",
        "limit",
        "lock_fd",
        "on_evict",
        "policy",
        "policy_name",
        "reserved",
        "root",
        "seed",
        "shard_paths",
        "tmp",
    )

    def __init__(
        self, spec: CacheDirSpec, policy_name: str, on_evict: Callable[[int], None]
    ) -> None:
        if spec.size <= 0:
            raise ConfigError(f"cache dir {spec.path}: size must be positive")
        self.root = os.path.abspath(spec.path)
        self.blocks = os.path.join(self.root, "blocks")
        self.shard_paths = [f"{self.blocks}/{shard}" for shard in _SHARDS]
        self.tmp = os.path.join(self.root, "tmp")
        self.limit = spec.size
        self.policy_name = policy_name
        self.policy: EvictionPolicy = make_policy(policy_name)
        self.on_evict = on_evict
        #: Bytes of puts being written here: counted against the limit before they land.
        self.reserved = 0
        self.down = False
        self.lock_fd = -1
        #: This dir's seed for rendezvous placement (see BlockStore).
        self.seed = xxhash.xxh3_64_intdigest(self.root.encode())

    def block_path(self, block_id: str, nbytes: int, checksum: int) -> str:
        return f"{self.blocks}/{block_id[:2]}/{block_filename(block_id, nbytes, checksum)}"

    def victim_path(self, key: int, nbytes: int, checksum: int) -> str:
        return self.block_path(f"{key:032x}", nbytes, checksum)

    # -- health --------------------------------------------------------------------------

    def healthy(self) -> bool:
        """Whether the dir's structure is still in place and writable."""
        return (
            os.path.isdir(self.blocks)
            and os.path.isdir(self.tmp)
            and os.access(self.tmp, os.W_OK | os.X_OK)
        )

    def failed(self, err: int | None) -> bool:
        """Whether an error ``err`` met in this dir shows the dir cannot be used."""
        return err in _DIR_ERRNOS and not self.healthy()

    def mark_down(self, reason: str) -> None:
        """Stop using the dir: forget its blocks, leave its files for a later start."""
        if self.down:
            return
        self.down = True
        log.error(
            "cache dir %s is down (%s): %d blocks dropped from the index, dir no longer used",
            self.root,
            reason,
            len(self.policy),
        )
        self.policy = make_policy(self.policy_name)

    # -- room ----------------------------------------------------------------------------

    def make_room(self, nbytes: int, free_space_ratio: float) -> list[tuple[int, str]] | None:
        """Evict victims until ``nbytes`` more fit: their keys and file paths, or None if
        no eviction can make the room.

        Room means: under the limit, counting puts still being written, and the disk
        keeping ``free_space_ratio`` of its size free. Victims leave the index here, so
        concurrent puts see the room as taken; the caller deletes their files.
        """
        policy = self.policy
        total, available = disk_usage(self.root)
        over_limit = policy.nbytes + self.reserved + nbytes - self.limit
        short_of_free = math.ceil(total * free_space_ratio) + nbytes + self.reserved
        short_of_free -= available
        needed = max(over_limit, short_of_free)
        if needed <= 0:
            return []
        if needed > policy.nbytes:
            return None
        doomed: list[tuple[int, str]] = []
        while needed > 0 and (victim := policy.pop_victim()) is not None:
            needed -= victim.nbytes
            doomed.append((victim.key, self.victim_path(victim.key, victim.nbytes, victim.tag)))
            self.on_evict(victim.nbytes)
        return doomed

    # -- open and close ------------------------------------------------------------------

    def open(self, free_space_ratio: float, others: Sequence[EvictionPolicy]) -> None:
        """Lock the dir, create its layout, remove what a crash left, build the index.

        ``others`` are the indexes of the dirs opened before: a block found in one of
        them is not indexed here (its file here is deleted). The limit is capped so the
        disk keeps ``free_space_ratio`` free, and blocks over it are evicted.
        Raises OSError when the dir cannot be used, ConfigError when another process
        holds it.
        """
        self._prepare()
        total, _ = disk_usage(self.root)
        self.limit = min(self.limit, int(total * (1.0 - free_space_ratio)))
        malformed: list[str] = []
        saved = indexsnapshot.load(self.root, self.shard_paths)
        if saved is not None and not any(any(map(o.__contains__, saved[0])) for o in others):
            self.policy.load(*saved)
            log.info("cache dir %s: index loaded from its snapshot", self.root)
        else:
            for columns in self._scan(others, malformed):
                self.policy.load(*columns)
        unlink_quietly(malformed)
        if malformed:
            log.warning("cache dir %s: removed %d malformed block files", self.root, len(malformed))
        over: list[str] = []
        while self.policy.nbytes > self.limit and (victim := self.policy.pop_victim()):
            over.append(self.victim_path(victim.key, victim.nbytes, victim.tag))
            self.on_evict(victim.nbytes)
        unlink_quietly(over)
        if over:
            log.info(
                "cache dir %s: evicted %d blocks to fit %d bytes", self.root, len(over), self.limit
            )

    def save_snapshot(self) -> None:
        """Save the index for a fast next start (see :mod:`cachenode.indexsnapshot`)."""
        entries = list(self.policy.entries())
        keys, nbytes, tags = (
            (list(c) for c in zip(*entries, strict=True)) if entries else ([], [], [])
        )
        try:
            indexsnapshot.save(self.root, self.shard_paths, keys, nbytes, tags)
        except OSError as exc:
            log.warning(
                "cache dir %s: no index snapshot saved (%s); next start scans", self.root, exc
            )

    def release(self) -> None:
        """Let another process use the dir."""
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1

    def _prepare(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self.lock_fd = os.open(
            os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        )
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"cache dir {self.root} is in use by another process") from None
        os.makedirs(self.tmp, exist_ok=True)
        for shard_path in self.shard_paths:
            os.makedirs(shard_path, exist_ok=True)
        leftovers = 0
        with os.scandir(self.tmp) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    log.warning(
                        "cache dir %s: unexpected directory %s left alone", self.root, entry
                    )
                    continue
                os.unlink(entry.path)
                leftovers += 1
        if leftovers:
            log.info("cache dir %s: removed %d unfinished writes", self.root, leftovers)

    def _scan(
        self, others: Sequence[EvictionPolicy], malformed: list[str]
    ) -> Iterator[NameColumns]:
        """Index entries of the block files here, a shard at a time; collects the paths to
        delete. A shard's listing goes through :func:`~clientlib.blockfile.parse_names`; a
        shard with anything unusual in it goes through the careful per-name path."""
        for shard, shard_path in zip(_SHARDS, self.shard_paths, strict=True):
            names = os.listdir(os.fsencode(shard_path))  # bytes: cheaper than decoding
            if not names:
                continue
            parsed = parse_names(shard.encode(), names)
            if (
                parsed is None
                or len(set(parsed[0])) != len(names)
                or any(any(map(o.__contains__, parsed[0])) for o in others)
            ):
                parsed = self._scan_carefully(shard_path, shard, names, others, malformed)
            yield parsed

    def _scan_carefully(
        self,
        shard_path: str,
        shard: str,
        names: list[bytes],
        others: Sequence[EvictionPolicy],
        malformed: list[str],
    ) -> NameColumns:
        keys: list[int] = []
        nbytes: list[int] = []
        checksums: list[int] = []
        seen: set[int] = set()
        for raw_name in names:
            path = f"{shard_path}/{os.fsdecode(raw_name)}"
            parsed = parse_name(raw_name)
            if parsed is None or not parsed[0].startswith(shard):
                if os.path.isdir(path) and not os.path.islink(path):
                    log.warning("cache dir %s: foreign dir %s left alone", self.root, path)
                else:
                    malformed.append(path)
                continue
            key = int(parsed[0], 16)
            if key in seen or any(key in o for o in others):
                # The same block twice (in another dir, or with another length or checksum):
                # keep the first one found; there is no telling which one is better.
                malformed.append(path)
                continue
            seen.add(key)
            keys.append(key)
            nbytes.append(parsed[1])
            checksums.append(parsed[2])
        return keys, nbytes, checksums
