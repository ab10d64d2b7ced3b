"""POSIX conformance of the mount over the S3 servers people run: SeaweedFS and moto.

One mount per S3 server for the whole module (a SeaweedFS ``weed mini`` and the
session's moto_server, each with its cluster of one cache node). The pjdfstest dirs the
mount passes run over SeaweedFS, built by ``scripts/install.sh`` into ``.build``; the
classes of failure issue 19 found are tested over both servers, each against what S3
holds afterwards, in s3fs's format, so s3fs sees the same tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clientlib.launcher import Mount, start_mount
from loadtest.posix_conformance import s3_client, s3_env, tap_tally
from testkit.seaweed import start_seaweed
from tests.conftest import Cluster
from tests.mountd.conftest import NOBODY, as_nobody

PJDFSTEST = Path(__file__).resolve().parents[2] / ".build" / "pjdfstest"
#: pjdfstest files the mount passes whole over SeaweedFS (loadtest/results/posix.md has
#: the rest, docs/mount.md why they fail).
PASSING = [
    "chmod/00.t", "chmod/11.t", "chown/07.t", "ftruncate/00.t", "mkdir/00.t", "mkfifo/00.t",
    "mknod/00.t", "mknod/11.t", "open/00.t", "rename/12.t", "rmdir/00.t", "rmdir/11.t",
    "symlink/00.t", "utimensat/07.t",
]  # fmt: skip
BUCKET = "posix"


@dataclass
class Served:
    """A mount over one S3 server, with a boto3 client of that server."""

    name: str
    mount: Mount
    s3: object

    @property
    def path(self) -> Path:
        return self.mount.path

    def head(self, key: str) -> dict[str, str]:
        return self.s3.head_object(Bucket=BUCKET, Key=key)["Metadata"]  # type: ignore[attr-defined,no-any-return]

    def body(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(scope="module")
def mounts(
    etcd, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Served]]:  # type: ignore[no-untyped-def]
    """``{"seaweed": ..., "moto": ...}``: a mount other users can reach (pjdfstest acts
    as them) over a bucket of each server."""
    work = tmp_path_factory.mktemp("posix")
    top = Path(tempfile.mkdtemp(prefix="ringcache-posix-", dir="/tmp"))
    top.chmod(0o755)
    weed = start_seaweed(work / "seaweed")
    clusters: list[Cluster] = []
    served: dict[str, Served] = {}
    try:
        for name, endpoint in (("seaweed", weed.endpoint), ("moto", s3_endpoint)):
            s3 = s3_client(endpoint)
            s3.create_bucket(Bucket=BUCKET)
            env = s3_env(endpoint)
            cluster = Cluster(etcd, f"posix-{os.getpid()}-{name}", work / name)
            clusters.append(cluster)
            cluster.add(env=env)
            mount = start_mount(
                f"s3://{BUCKET}", top / name, etcd.url, cluster.name, "--allow-other",
                "--attr-ttl", "1", "--log-level", "DEBUG", env=env,
                log_path=work / f"mountd-{name}.log",
            )  # fmt: skip
            served[name] = Served(name, mount, s3)
        yield served
    finally:
        for s in served.values():
            s.mount.stop(timeout=20)
        for cluster in clusters:
            cluster.stop()
        weed.stop()
        # The empty mount points; rmdir, not rmtree, which would go into a mount that
        # failed to stop and delete what it holds.
        with contextlib.suppress(OSError):
            for point in top.iterdir():
                point.rmdir()
            top.rmdir()


@pytest.fixture(params=["seaweed", "moto"])
def fs(request, mounts: dict[str, Served]) -> Served:  # type: ignore[no-untyped-def]
    return mounts[request.param]


def test_pjdfstest_files_the_mount_passes_still_pass_over_seaweedfs(mounts):  # type: ignore[no-untyped-def]
    assert (PJDFSTEST / "pjdfstest").exists(), (
        f"pjdfstest is not built in {PJDFSTEST}: run scripts/install.sh"
    )
    work = mounts["seaweed"].path / "pjdfstest"
    work.mkdir()
    failed = {}
    for name in PASSING:
        out = subprocess.run(
            ["/bin/sh", str(PJDFSTEST / "tests" / name)],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        tally = tap_tally(out)
        if tally.run == 0 or tally.passed != tally.run:
            failed[name] = [line for line in out.splitlines() if line.startswith("not ok")][:5]
    assert not failed


def test_directory_mode_and_owner_are_kept_and_a_tree_moves(fs):  # type: ignore[no-untyped-def]
    """Stored in the marker where the server keeps a marker's metadata (moto, AWS);
    SeaweedFS drops it, and the mount keeps what was set through it (docs/mount.md)."""
    stored = fs.name == "moto"
    d = fs.path / "modes"
    os.mkdir(d, 0o750)
    os.chmod(d, 0o1777)  # was ENOENT on SeaweedFS: a marker cannot be copied onto itself
    os.chown(d, 1234, 5678)
    (d / "sub").mkdir(mode=0o700)
    (d / "sub" / "f").write_bytes(b"moved with its tree")
    os.rename(d, fs.path / "moved")  # was EIO on SeaweedFS
    time.sleep(1.5)  # past --attr-ttl: what the mount shows now is what it learns again
    Path("/proc/sys/vm/drop_caches").write_text("2")  # the kernel forgets the inodes too
    st = os.stat(fs.path / "moved")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o1777, 1234, 5678)
    assert stat.S_IMODE(os.stat(fs.path / "moved" / "sub").st_mode) == 0o700
    assert fs.body("moved/sub/f") == b"moved with its tree"
    assert (fs.path / "moved" / "sub" / "f").read_bytes() == b"moved with its tree"
    assert not d.exists()
    if stored:
        meta = fs.head("moved/")
        assert int(meta["mode"]) == stat.S_IFDIR | 0o1777
        assert (int(meta["uid"]), int(meta["gid"])) == (1234, 5678)
        assert int(fs.head("moved/sub/")["mode"]) == stat.S_IFDIR | 0o700


def test_symlinks_and_special_files_are_stored_as_s3fs_stores_them(fs):  # type: ignore[no-untyped-def]
    d = fs.path / "links"
    d.mkdir()
    os.symlink("../some/target", d / "link")
    assert os.readlink(d / "link") == "../some/target"
    assert stat.S_ISLNK(os.lstat(d / "link").st_mode)
    assert fs.body("links/link") == b"../some/target"
    assert int(fs.head("links/link")["mode"]) == stat.S_IFLNK | 0o777
    (d / "real").write_bytes(b"through the link")
    os.symlink("real", d / "rel")
    assert (d / "rel").read_bytes() == b"through the link"
    os.mkfifo(d / "fifo", 0o640)
    assert stat.S_ISFIFO(os.lstat(d / "fifo").st_mode)
    assert int(fs.head("links/fifo")["mode"]) == stat.S_IFIFO | 0o640
    # What s3fs writes for a link is one to the mount too.
    fs.s3.put_object(  # type: ignore[attr-defined]
        Bucket=BUCKET,
        Key="s3fs/link",
        Body=b"../links/real",
        Metadata={"mode": str(stat.S_IFLNK | 0o777)},
    )
    time.sleep(1.5)  # past --attr-ttl: the mount's listing of its root was from before
    assert os.readlink(fs.path / "s3fs" / "link") == "../links/real"
    assert (fs.path / "s3fs" / "link").read_bytes() == b"through the link"
    os.rename(d / "rel", d / "rel2")
    assert os.readlink(d / "rel2") == "real"
    os.unlink(d / "rel2")
    assert not os.path.lexists(d / "rel2")
    with pytest.raises(OSError) as exc:
        os.link(d / "real", d / "hard")  # an object has one name
    assert exc.value.errno == errno.EPERM


def test_a_link_or_fifo_first_seen_in_a_listing_is_never_read_as_a_file(fs):  # type: ignore[no-untyped-def]
    """A listing tells no object's type: what it shows the kernel (readdirplus) must not
    make an open read a link's target, or a FIFO's body, as a regular file's bytes."""
    d = fs.path / "listed"
    d.mkdir()  # listed first now, not from the root's listing of up to --attr-ttl ago
    for key, body, mode in (
        ("listed/real", b"the real bytes", stat.S_IFREG | 0o644),
        ("listed/link", b"real", stat.S_IFLNK | 0o777),
        ("listed/fifo", b"stray bytes", stat.S_IFIFO | 0o644),
    ):
        fs.s3.put_object(Bucket=BUCKET, Key=key, Body=body, Metadata={"mode": str(mode)})  # type: ignore[attr-defined]
    entries = {e.name: e for e in os.scandir(d)}
    assert set(entries) == {"real", "link", "fifo"}
    assert (d / "link").read_bytes() == b"the real bytes"
    fd = os.open(d / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
        assert os.read(fd, 100) == b""  # a pipe without a writer, not the object's body
    finally:
        os.close(fd)
    assert stat.S_ISLNK(os.lstat(d / "link").st_mode)
    assert stat.S_ISFIFO(os.lstat(d / "fifo").st_mode)


def test_a_link_longer_than_path_max_is_refused_unread(fs):  # type: ignore[no-untyped-def]
    """No link target is PATH_MAX bytes or more: an object marked as a link with a
    larger body (any writer of the bucket may store one) is refused before it is read,
    not kept whole (up to a block) with its inode for every readlink."""
    d = fs.path / "longlink"
    d.mkdir()
    body = b"x/" * 4096
    fs.s3.put_object(  # type: ignore[attr-defined]
        Bucket=BUCKET, Key="longlink/link", Body=body, Metadata={"mode": str(stat.S_IFLNK | 0o777)}
    )
    with pytest.raises(OSError) as exc:
        os.readlink(d / "link")
    assert exc.value.errno == errno.ENAMETOOLONG
    assert fs.body("longlink/link") == body


def test_directory_times_follow_its_entries_ftruncate_changes_ctime_and_atime_is_kept(fs):  # type: ignore[no-untyped-def]
    d = fs.path / "times"
    d.mkdir()
    os.utime(d, ns=(10**9, 10**9))
    assert os.stat(d).st_mtime_ns == 10**9
    for change in (
        lambda: (d / "f").write_bytes(b"x"),
        lambda: os.rename(d / "f", d / "g"),
        lambda: os.unlink(d / "g"),
        lambda: os.mkdir(d / "sub"),
        lambda: os.rmdir(d / "sub"),
    ):
        before = os.stat(d)
        change()
        after = os.stat(d)
        assert after.st_mtime_ns > before.st_mtime_ns
        assert after.st_ctime_ns > before.st_ctime_ns
    f = fs.path / "times-file"
    f.write_bytes(b"0123456789")
    os.utime(f, ns=(10**9, 10**9))
    before = os.stat(f)
    with open(f, "r+b") as fh:
        os.ftruncate(fh.fileno(), 4)
        after = os.fstat(fh.fileno())
    assert after.st_ctime_ns > before.st_ctime_ns
    assert after.st_mtime_ns > before.st_mtime_ns
    assert fs.body("times-file") == b"0123"
    os.utime(f, ns=(7 * 10**9, 8 * 10**9))  # an atime of its own, stored as s3fs does
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (7 * 10**9, 8 * 10**9)
    assert (fs.head("times-file")["atime"], fs.head("times-file")["mtime"]) == ("7", "8")


def test_owner_may_chown_minus_one_a_setuid_file_it_cannot_write(fs):  # type: ignore[no-untyped-def]
    """``chown -1 -1`` makes the kernel clear setuid/setgid: the owner needs no write
    access for that (pjdfstest chown/00.t)."""
    f = fs.path / "setid"
    f.write_bytes(b"")
    os.chown(f, NOBODY, NOBODY)
    os.chmod(f, 0o6555)
    done = as_nobody(sys.executable, "-c", "import os, sys; os.chown(sys.argv[1], -1, -1)", str(f))
    assert done.returncode == 0, done.stderr
    st = os.stat(f)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o555, NOBODY)
    assert int(fs.head("setid")["mode"]) == stat.S_IFREG | 0o555


def test_paths_over_s3s_key_limit_are_enametoolong_where_they_would_be_made(fs):  # type: ignore[no-untyped-def]
    parts = ["k" * 200] * 4  # 804 bytes of key with their slashes
    deep = fs.path.joinpath(*parts)
    deep.mkdir(parents=True)
    room = 1024 - len("/".join(parts)) - 1
    (deep / ("f" * room)).write_bytes(b"at the limit")
    assert fs.body("/".join([*parts, "f" * room])) == b"at the limit"
    for make in (
        lambda p: p.write_bytes(b"x"),
        lambda p: p.mkdir(),
        lambda p: os.symlink("t", p),
        lambda p: os.mkfifo(p),
        lambda p: os.rename(deep / ("f" * room), p),
    ):
        with pytest.raises(OSError) as exc:
            make(deep / ("f" * (room + 1)))
        assert exc.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as exc:
        (deep / ("d" * room)).mkdir()  # its marker is one byte longer: "/"
    assert exc.value.errno == errno.ENAMETOOLONG


def test_writes_across_blocks_appends_truncates_and_renames_read_back_exact(fs):  # type: ignore[no-untyped-def]
    block = 4 * 1024 * 1024
    f = fs.path / "data.bin"
    expected = bytearray(os.urandom(block + 100))
    f.write_bytes(expected)
    with open(f, "r+b") as fh:
        fh.seek(block - 3)
        fh.write(b"ACROSS")  # over the block boundary
    expected[block - 3 : block + 3] = b"ACROSS"
    with open(f, "ab") as fh:
        fh.write(b"appended")
    expected += b"appended"
    assert fs.body("data.bin") == bytes(expected)
    os.truncate(f, block + 1)
    del expected[block + 1 :]
    assert f.read_bytes() == bytes(expected) == fs.body("data.bin")
    with open(f, "wb") as fh:  # O_TRUNC
        fh.write(b"rewritten")
    (fs.path / "other.bin").write_bytes(b"replaced")
    os.rename(f, fs.path / "other.bin")
    assert (fs.path / "other.bin").read_bytes() == b"rewritten" == fs.body("other.bin")


def test_links_and_special_files_are_eperm_over_a_file_source(make_cluster, mount, tmp_path):  # type: ignore[no-untyped-def]
    """A file:// origin writes regular files only: no link may turn into one."""
    src = tmp_path / "src"
    src.mkdir()
    m = mount(make_cluster(1), f"file://{src}")
    for make in (lambda p: os.symlink("target", p), lambda p: os.mkfifo(p)):
        with pytest.raises(OSError) as exc:
            make(m.path / "special")
        assert exc.value.errno == errno.EPERM
    assert list(src.iterdir()) == []
