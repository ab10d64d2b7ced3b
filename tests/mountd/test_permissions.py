"""Modes and owners on the mount: enforced by the kernel, stored as s3fs stores them."""

from __future__ import annotations

import os
import stat
import time

from tests.mountd.conftest import as_nobody


def test_mode_0600_set_through_the_mount_keeps_other_users_out_and_0644_lets_them_read(
    make_cluster, open_mount, s3, bucket
):
    cluster = make_cluster(1)
    m = open_mount(cluster, f"s3://{bucket}")
    (m.path / "secret.txt").write_text("mine")
    (m.path / "public.txt").write_text("ours")
    os.chmod(m.path / "secret.txt", 0o600)
    os.chmod(m.path / "public.txt", 0o644)
    os.mkdir(m.path / "private")
    (m.path / "private" / "f").write_text("inside")
    os.chmod(m.path / "private", 0o700)
    assert stat.S_IMODE(os.stat(m.path / "secret.txt").st_mode) == 0o600

    denied = as_nobody("cat", str(m.path / "secret.txt"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    allowed = as_nobody("cat", str(m.path / "public.txt"))
    assert allowed.returncode == 0 and allowed.stdout == "ours"
    assert as_nobody("ls", str(m.path / "private")).returncode != 0
    assert as_nobody("cat", str(m.path / "private" / "f")).returncode != 0
    assert as_nobody("touch", str(m.path / "new.txt")).returncode != 0  # root's 0755 dir

    # A fresh mount that knows the files only from a listing (no user metadata in it)
    # still keeps nobody out: the stored mode is checked at open.
    fresh = open_mount(cluster, f"s3://{bucket}")
    assert sorted(os.listdir(fresh.path)) == ["private", "public.txt", "secret.txt"]
    denied = as_nobody("cat", str(fresh.path / "secret.txt"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert as_nobody("cat", str(fresh.path / "public.txt")).stdout == "ours"
    assert as_nobody("ls", str(fresh.path / "private")).returncode != 0
    assert as_nobody("cat", str(fresh.path / "private" / "f")).returncode != 0


def test_chown_chmod_utime_are_s3fs_metadata_and_survive_a_fresh_mount(
    make_cluster, mount, s3, bucket
):
    cluster = make_cluster(1)
    m = mount(cluster, f"s3://{bucket}")
    small, big = b"small file", os.urandom(20 * 1024 * 1024)  # big: a multipart upload
    (m.path / "small.txt").write_bytes(small)
    (m.path / "big.bin").write_bytes(big)
    os.mkdir(m.path / "d")
    etag = s3.head_object(Bucket=bucket, Key="big.bin")["ETag"]
    for name in ("small.txt", "big.bin"):
        os.chown(m.path / name, 1234, 5678)
        os.chmod(m.path / name, 0o640)
        os.utime(m.path / name, (1_600_000_000.5, 1_600_000_000.5))
    os.chmod(m.path / "d", 0o750)
    # s3fs's keys and formats: decimal st_mode with the type bits, uid, gid, mtime.
    meta = s3.head_object(Bucket=bucket, Key="small.txt")["Metadata"]
    assert meta["mode"] == str(stat.S_IFREG | 0o640)
    assert (meta["uid"], meta["gid"]) == ("1234", "5678")
    assert float(meta["mtime"]) == 1_600_000_000.5
    assert s3.head_object(Bucket=bucket, Key="d/")["Metadata"]["mode"] == str(stat.S_IFDIR | 0o750)
    # The metadata copy gave the multipart object a new ETag: the mount copes.
    assert s3.head_object(Bucket=bucket, Key="big.bin")["ETag"] != etag
    assert (m.path / "big.bin").read_bytes() == big
    # Rewriting a file keeps its mode and owner.
    (m.path / "small.txt").write_bytes(b"rewritten")
    meta = s3.head_object(Bucket=bucket, Key="small.txt")["Metadata"]
    assert meta["mode"] == str(stat.S_IFREG | 0o640) and meta["uid"] == "1234"
    m.unmount()

    # Written by s3fs (or anyone using its convention): shown by the mount too.
    s3.put_object(
        Bucket=bucket,
        Key="from-s3fs.txt",
        Body=b"x",
        Metadata={
            "mode": str(stat.S_IFREG | 0o604),
            "uid": "42",
            "gid": "43",
            "mtime": "1500000000",
        },
    )
    fresh = mount(cluster, f"s3://{bucket}")
    for name in ("small.txt", "big.bin"):
        st = os.stat(fresh.path / name)
        assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (1234, 5678)
    assert os.stat(fresh.path / "big.bin").st_mtime == 1_600_000_000.5
    assert stat.S_IMODE(os.stat(fresh.path / "d").st_mode) == 0o750
    st = os.stat(fresh.path / "from-s3fs.txt")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o604, 42, 43)
    assert st.st_mtime == 1_500_000_000
    assert (fresh.path / "big.bin").read_bytes() == big
    assert (fresh.path / "small.txt").read_bytes() == b"rewritten"


def test_new_files_store_their_mode_and_owner_and_defaults_follow_the_flags(
    make_cluster, mount, s3, bucket
):
    s3.put_object(Bucket=bucket, Key="plain.txt", Body=b"no metadata")
    m = mount(make_cluster(1), f"s3://{bucket}", "--uid", "1000", "--gid", "2000", "--umask", "027")
    st = os.stat(m.path / "plain.txt")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1000, 2000)
    assert stat.S_IMODE(os.stat(m.path).st_mode) == 0o750
    fd = os.open(m.path / "new.txt", os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"new")
    os.close(fd)
    meta = s3.head_object(Bucket=bucket, Key="new.txt")["Metadata"]
    assert meta["mode"] == str(stat.S_IFREG | 0o600)
    assert (meta["uid"], meta["gid"]) == (str(os.getuid()), str(os.getgid()))
    assert abs(float(meta["mtime"]) - time.time()) < 60


def test_file_source_keeps_modes_owners_and_times_on_the_files(make_cluster, mount, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    cluster = make_cluster(1)
    m = mount(cluster, f"file://{src}")
    os.chmod(m.path / "f", 0o600)
    os.chown(m.path / "f", 1234, 5678)
    os.utime(m.path / "f", (1_600_000_000, 1_600_000_000))
    st = os.stat(src / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    assert st.st_mtime == 1_600_000_000
    assert (m.path / "f").read_bytes() == b"data"  # a new mtime is a new version
    m.unmount()
    fresh = mount(cluster, f"file://{src}")
    st = os.stat(fresh.path / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (
        0o600,
        1234,
        5678,
        1_600_000_000,
    )
