"""Who may do what on the mount, by the attributes stored with an object.

The kernel enforces modes and owners (``default_permissions``) with the attributes it was
given; for an S3 entry known only from a listing those are the mount's defaults, so the
file system checks the caller once more against the stored ones. These are those rules,
as plain functions of the caller and the stored ``(perm, uid, gid)``: POSIX's read,
write and search bits, and chmod/chown/utime's rules of who may change what.
"""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3

from clientlib.origin.base import PosixAttrs

__all__ = ["SETID", "R", "W", "X", "allowed", "caller_groups", "changed_attrs", "check_change"]

R, W, X = os.R_OK, os.W_OK, os.X_OK
#: The bits a write by anyone but root clears (setgid only with group execute).
SETID = stat.S_ISUID | stat.S_ISGID


def caller_groups(pid: int) -> set[int]:
    """The supplementary groups of the calling process (FUSE passes only uid and gid)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def allowed(ctx: pyfuse3.RequestContext, perm: int, uid: int, gid: int, want: int) -> bool:
    """Whether the caller has ``want`` (R|W|X) by ``perm``/``uid``/``gid``; root has all."""
    if ctx.uid == 0:
        return True
    if ctx.uid == uid:
        bits = perm >> 6
    elif ctx.gid == gid or gid in caller_groups(ctx.pid):
        bits = perm >> 3
    else:
        bits = perm
    return bits & want == want


def _drops_setid(perm: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields) -> bool:
    """Whether a setattr changes nothing but clear setuid/setgid bits of ``perm``."""
    new = stat.S_IMODE(attr.st_mode)
    return bool(
        fields.update_mode
        and not (
            fields.update_uid or fields.update_gid or fields.update_mtime or fields.update_atime
        )
        and new | SETID == perm | SETID
        and not new & ~perm
    )


def check_change(
    ctx: pyfuse3.RequestContext,
    perm: int,
    uid: int,
    gid: int,
    attr: pyfuse3.EntryAttributes,
    fields: pyfuse3.SetattrFields,
) -> int:
    """Check a chmod/chown/utime by the caller against the stored attributes: EPERM
    (raised) for what only the owner or root may do; returns the access (``W`` or 0) the
    caller must still have on the object for the rest.

    The kernel clearing setuid/setgid (a write, truncate or ``chown -1 -1`` by a user
    other than root) needs only write access, and the owner not even that; setting the
    times to now needs write access.
    """
    if ctx.uid == 0:
        return 0
    if _drops_setid(perm, attr, fields):
        return 0 if ctx.uid == uid else W  # the owner may change the mode anyway
    if (fields.update_uid and attr.st_uid != uid) or (
        (fields.update_mode or fields.update_gid) and ctx.uid != uid
    ):
        raise pyfuse3.FUSEError(errno.EPERM)
    if fields.update_gid and attr.st_gid not in {gid, ctx.gid} | caller_groups(ctx.pid):
        raise pyfuse3.FUSEError(errno.EPERM)
    return W if (fields.update_mtime or fields.update_atime) and ctx.uid != uid else 0


def changed_attrs(
    old: PosixAttrs,
    is_dir: bool,
    perm: int,
    uid: int,
    gid: int,
    attr: pyfuse3.EntryAttributes,
    fields: pyfuse3.SetattrFields,
    now: float,
) -> PosixAttrs:
    """The attributes to store after a setattr (its ctime is ``now``). Any change of
    mode or owner stores all three, so the intent ("only its owner") holds in a mount
    whose --uid/--umask defaults differ. A symbolic link or special file keeps its type."""
    kind = stat.S_IFMT(old.mode or 0) or (stat.S_IFDIR if is_dir else stat.S_IFREG)
    owned = fields.update_mode or fields.update_uid or fields.update_gid
    return PosixAttrs(
        kind | (stat.S_IMODE(attr.st_mode) if fields.update_mode else perm) if owned else old.mode,
        (attr.st_uid if fields.update_uid else uid) if owned else old.uid,
        (attr.st_gid if fields.update_gid else gid) if owned else old.gid,
        attr.st_mtime_ns / 1e9 if fields.update_mtime else old.mtime,
        old.extra,
        now,
        attr.st_atime_ns / 1e9 if fields.update_atime else old.atime,
    )
