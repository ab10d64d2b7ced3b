"""Where the local disk tier lives when nobody said (``--local-cache auto``, the default).

Each mount gets a private directory of its own under the root
(``--local-cache-root``: ``/var/cache/ringcache/mounts`` for root,
``$XDG_CACHE_HOME/ringcache/mounts`` otherwise), named by the mount's *identity*: a hash
of what decides which blocks it may read and how they are cut (uid, etcd URL, cluster,
source, and the token's scopes, tenant and rights). So a mount never serves a block that
a mount with another token or of another source fetched; mounts of the same identity
share blocks over time, which is safe because a block file is named by its id, which
includes the object's version (never stale) and is checked when read.

A directory is held with an exclusive ``flock`` on its ``.lock`` file for the life of the
mount: a second mount of the same identity takes the next slot (``ID.2``, ``ID.3``, ...)
and, when all :data:`SLOTS` are taken, runs without a disk tier. A directory no mount
has taken for :data:`STALE_SECONDS` is removed by the next mount that starts. Every
level this module creates is mode 0700, and a directory owned by another user, reached
through a link or open to others is not used.

The size is a share of the filesystem's free space at start (:func:`default_size`),
keeping :data:`RESERVE` of the filesystem free (the tier's writes keep that floor too,
:class:`mountd.localtier.LocalTier`). The tier is off, with one log line, when that
leaves less than :data:`LEAST`, or when the root is not on a local disk
(:data:`NOT_ON`: in memory, a container's writable layer, a network or FUSE file system).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from clientlib.auth import Credentials

__all__ = [
    "CAP",
    "LEAST",
    "NOT_ON",
    "RESERVE",
    "SHARE",
    "SLOTS",
    "STALE_SECONDS",
    "Claimed",
    "claim",
    "default_root",
    "default_size",
    "filesystem_type",
    "identity",
]

log = logging.getLogger(__name__)

#: Share of the free space (above the reserve) a default tier takes at start.
SHARE = 0.5
#: Largest default tier.
CAP = 64 * 1024**3
#: Smallest default tier worth having (a few blocks are not); below it the tier is off.
LEAST = 256 * 1024**2
#: Share of the filesystem's size the tier leaves free, as cachenode's
#: ``--free-space-ratio`` default does.
RESERVE = 0.1
#: Directories one identity may use at once (mounts of the same source on one machine).
SLOTS = 4
#: A directory no mount has taken for this long (an old token's scope, a source no
#: longer mounted) is removed by the next mount that starts under the same root.
STALE_SECONDS = 30 * 86400
#: File systems a default tier is not put on: in memory (tmpfs, ramfs: a disk tier there
#: only doubles the page cache's copy), a container's writable layer (overlay: counted
#: against the container's ephemeral storage, and gone with it), or over the network (a
#: home directory on NFS: not this machine's disk, maybe shared with other machines).
#: FUSE file systems (``fuse``, ``fuse.*``) too: possibly networked, possibly a mount of
#: ringcache itself.
NOT_ON = frozenset(
    {"tmpfs", "ramfs", "overlay", "zram"}
    | {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "lustre", "gpfs", "glusterfs", "9p"}
)
LOCK_NAME = ".lock"


def default_root() -> Path:
    """``/var/cache/ringcache/mounts`` for root, else under ``$XDG_CACHE_HOME`` (or
    ``~/.cache``)."""
    if os.geteuid() == 0:
        return Path("/var/cache/ringcache/mounts")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "ringcache" / "mounts"


def identity(etcd_url: str, cluster: str, source: str, token_file: Path | None) -> str:
    """The name of a mount's directory: a hash of the uid, the cluster (etcd URL and
    name: the block size and ring are the cluster's), the source, and the token's
    scopes, tenant and rights (not its expiry, so a renewed token keeps its blocks)."""
    token = None
    if token_file is not None:
        claims = Credentials.from_file(token_file).claims
        token = [sorted(claims.scope), claims.tenant, sorted(claims.rights)]
    what = {
        "uid": os.geteuid(),
        "etcd": etcd_url,
        "cluster": cluster,
        "source": source,
        "token": token,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def filesystem_type(path: Path) -> str:
    """The type of the file system ``path`` is on (``ext4``, ``tmpfs``...), from the
    longest mount point in ``/proc/self/mounts`` that holds it; '' if unknown."""
    real = os.path.realpath(path)
    best, kind = "", ""
    with contextlib.suppress(OSError), open("/proc/self/mounts") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) < 3:
                continue
            point = fields[1].replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


def default_size(path: Path, used: int) -> int:
    """Bytes a default tier in ``path`` may hold: :data:`SHARE` of the free space above
    :data:`RESERVE` of the filesystem (counting the ``used`` bytes the directory holds
    already as free), at most :data:`CAP`."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize + used
    room = free - RESERVE * st.f_blocks * st.f_frsize
    return int(max(0.0, min(CAP, SHARE * room)))


@dataclass
class Claimed:
    """A directory held for this mount: its path, size, and the lock held until
    :meth:`release` (or the process's end)."""

    path: Path
    capacity: int
    lock_fd: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def _private_dir(path: Path) -> str | None:
    """Create ``path`` (mode 0700) if missing; the reason it may not be used, else None:
    it must be a directory (not a link), ours, and closed to others (a directory of ours
    that is not is closed now)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != os.geteuid():
        return f"{path} belongs to uid {st.st_uid}"
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return None


def _lock(path: Path) -> int | None:
    """An exclusive flock on ``path/.lock``, or None when another process holds it."""
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return None
        raise
    if os.fstat(fd).st_nlink == 0:  # removed as stale while we waited for it
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # and its mtime says when it was taken
    return fd


def _remove_stale(root: Path, keep: str) -> None:
    """Remove the directories under ``root`` (but ``keep``'s) that no mount has taken
    for :data:`STALE_SECONDS` and none holds now; logged, one line each."""
    now = time.time()
    for entry in os.scandir(root):
        if entry.name.split(".")[0] == keep or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            if now - os.stat(path / LOCK_NAME).st_mtime < STALE_SECONDS:
                continue
            fd = _lock(path)
        except OSError:
            continue
        if fd is None:
            continue
        try:
            freed = _bytes_in(path)
            for sub in os.scandir(path):
                if sub.is_dir(follow_symlinks=False):
                    shutil.rmtree(sub.path, ignore_errors=True)
                elif sub.name != LOCK_NAME:  # the tier's own files (its streams file)
                    os.unlink(sub.path)
            os.unlink(path / LOCK_NAME)
            os.rmdir(path)
            log.info(
                "local tier: removed %s, unused for %d days (%d MiB)",
                path,
                STALE_SECONDS // 86400,
                freed >> 20,
            )
        except OSError as exc:
            log.warning("local tier: cannot remove unused %s: %s", path, exc)
        finally:
            os.close(fd)


def _bytes_in(path: Path) -> int:
    """Bytes on disk of the files in a tier directory (its two levels)."""
    total = 0
    for sub in os.scandir(path):
        if sub.is_dir(follow_symlinks=False):
            for entry in os.scandir(sub.path):
                with contextlib.suppress(OSError):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


def claim(root: Path, ident: str) -> Claimed | None:
    """A private directory for the mount ``ident`` under ``root``, locked, with its
    default size; None (and one log line saying why) when there is none to have."""
    try:
        kind = filesystem_type(root)
        if kind in NOT_ON or kind.partition(".")[0] == "fuse":
            log.info("local tier off: %s is on %s, not a local disk", root, kind)
            return None
        root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if reason := _private_dir(root):
            log.warning("local tier off: %s", reason)
            return None
        _remove_stale(root, ident)
        for slot in range(1, SLOTS + 1):
            path = root / (ident if slot == 1 else f"{ident}.{slot}")
            if reason := _private_dir(path):
                log.warning("local tier: %s not used: %s", path, reason)
                continue
            fd = _lock(path)
            if fd is None:
                continue
            size = default_size(path, _bytes_in(path))
            if size < LEAST:
                os.close(fd)
                log.warning(
                    "local tier off: %d MiB free for it in %s (keeping %d%% of the disk free)",
                    size >> 20,
                    path,
                    RESERVE * 100,
                )
                return None
            return Claimed(path, size, fd)
    except OSError as exc:
        log.warning("local tier off: cannot use %s: %s", root, exc)
        return None
    log.warning("local tier off: all %d directories of this mount in %s are in use", SLOTS, root)
    return None
