"""The default local tier's directory as a unit, on real directories and locks: private,
one per mount identity, never shared by two running mounts, sized from free space."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from clientlib.auth import create_token
from mountd.cachedir import (
    CAP,
    LEAST,
    RESERVE,
    SHARE,
    SLOTS,
    STALE_SECONDS,
    claim,
    default_size,
    filesystem_type,
    identity,
)
from mountd.localtier import STREAMS_NAME

NOBODY = 65534


def test_a_claimed_directory_is_private_and_locked(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "mounts"
    claimed = claim(root, "abc")
    assert claimed is not None
    assert claimed.path == root / "abc"
    for path in (root, claimed.path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert (claimed.path / ".lock").read_text() == f"{os.getpid()}\n"
    assert claimed.capacity >= LEAST


def test_a_directory_open_to_others_is_closed_and_one_of_another_user_is_not_used(
    tmp_path: Path,
) -> None:
    root = tmp_path / "mounts"
    (root / "abc").mkdir(parents=True, mode=0o777)
    os.chmod(root / "abc", 0o777)
    claimed = claim(root, "abc")
    assert claimed is not None and stat.S_IMODE(claimed.path.stat().st_mode) == 0o700
    claimed.release()
    os.chown(root / "abc", NOBODY, NOBODY)
    other = claim(root, "abc")
    assert other is not None and other.path == root / "abc.2"  # the next slot, not theirs
    os.chown(root, NOBODY, NOBODY)
    assert claim(root, "def") is None  # a root of another user: no tier at all


def test_a_link_is_never_followed_to_a_directory(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    root = tmp_path / "mounts"
    root.mkdir(mode=0o700)
    (root / "abc").symlink_to(elsewhere)
    claimed = claim(root, "abc")
    assert claimed is not None and claimed.path == root / "abc.2"
    assert not (elsewhere / ".lock").exists()


def test_running_mounts_of_one_identity_never_share_a_directory(tmp_path: Path) -> None:
    """Each claim holds its directory's flock (two opens conflict even in one process):
    the next takes the next slot, and with every slot held there is no tier; a released
    directory is the first one taken again."""
    held = [claim(tmp_path, "abc") for _ in range(SLOTS)]
    assert [c.path.name for c in held if c] == ["abc", *(f"abc.{i}" for i in range(2, SLOTS + 1))]
    assert claim(tmp_path, "abc") is None
    assert held[0] is not None
    held[0].release()
    again = claim(tmp_path, "abc")
    assert again is not None and again.path == tmp_path / "abc"


def test_the_size_is_a_share_of_the_free_space_above_the_reserve(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    expected = min(CAP, SHARE * (free - RESERVE * total))
    # The free space moves a little while the machine works: within 64 MiB.
    assert abs(default_size(tmp_path, 0) - expected) < 64 * 1024**2
    assert default_size(tmp_path, 10 * 1024**5) == CAP  # never more than the cap
    assert default_size(tmp_path, -free) == 0  # no room: nothing (and off, in claim)


def test_no_default_tier_on_a_file_system_in_memory() -> None:
    shm = Path("/dev/shm")
    assert filesystem_type(shm) == "tmpfs"
    assert claim(shm / f"ringcache-test-{os.getpid()}", "abc") is None
    assert not (shm / f"ringcache-test-{os.getpid()}").exists()


def test_a_mount_with_another_token_gets_another_directory(tmp_path: Path) -> None:
    secret = os.urandom(32)

    def token(scope: str, ttl: float, *rights: str) -> Path:
        path = tmp_path / f"token-{scope.replace('/', '_')}-{ttl}-{len(rights)}"
        path.write_text(create_token(secret, [scope], "team", ttl, frozenset(rights or {"read"})))
        return path

    def ident(token_file: Path | None, source: str = "s3://bkt") -> str:
        return identity("http://127.0.0.1:2379", "c", source, token_file)

    team = token("s3://bkt/team", 3600)
    assert ident(team) == ident(token("s3://bkt/team", 7200))  # a renewed token: the same
    others = [
        ident(None),
        ident(token("s3://bkt/other", 3600)),
        ident(token("s3://bkt/team", 3600, "read", "write")),
        ident(team, "s3://bkt/team"),
        identity("http://127.0.0.1:2379", "c2", "s3://bkt", team),
        identity("http://10.0.0.1:2379", "c", "s3://bkt", team),
    ]
    assert len({ident(team), *others}) == 1 + len(others)


def test_directories_no_mount_took_for_a_month_are_removed_unless_held(tmp_path: Path) -> None:
    old, held, recent = (claim(tmp_path, name) for name in ("old", "held", "recent"))
    assert old and held and recent
    (old.path / "ab").mkdir()
    (old.path / "ab" / "block").write_bytes(b"x" * 4096)
    (old.path / STREAMS_NAME).write_text("0" * 32 + "\n")  # the tier's own file
    old.release()
    recent.release()
    month_ago = time.time() - STALE_SECONDS - 60
    for c in (old, held):
        os.utime(c.path / ".lock", (month_ago, month_ago))
    mine = claim(tmp_path, "mine")
    assert mine is not None
    assert not old.path.exists()  # unused for a month: gone
    assert held.path.exists()  # as old, but a mount holds it
    assert recent.path.exists()  # free, but taken lately
