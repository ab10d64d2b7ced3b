"""Writes through the mount: durable on close(), cached for the next reader, POSIX errnos."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess

import pytest

from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.origin.base import TooManyObjects
from clientlib.origin.s3 import S3Origin


def s3_bytes(s3, bucket: str, key: str) -> bytes:  # type: ignore[no-untyped-def]
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def s3_keys(s3, bucket: str, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def test_written_file_is_in_s3_on_close_and_read_by_another_mount_without_origin_request(
    make_cluster, mount, s3, bucket
):
    cluster = make_cluster(2)
    writer = mount(cluster, f"s3://{bucket}")
    data = os.urandom(2 * BS + 777)
    os.mkdir(writer.path / "stage1")
    with open(writer.path / "stage1" / "out.bin", "wb") as fh:
        for start in range(0, len(data), 100_000):
            fh.write(data[start : start + 100_000])
    assert s3_bytes(s3, bucket, "stage1/out.bin") == data  # close() returned: it is there
    reader = mount(cluster, f"s3://{bucket}")
    assert (reader.path / "stage1" / "out.bin").read_bytes() == data
    assert cluster.metric("ringcache_origin_requests_total", 'op="get"') == 0
    assert reader.metric("ringcache_client_block_reads_total", 'source="origin"') == 0
    assert reader.metric("ringcache_client_block_reads_total", 'source="peer"') == 3


def test_large_file_is_uploaded_in_parts_and_fsync_makes_it_durable(
    make_cluster, mount, s3, bucket
):
    m = mount(make_cluster(1), f"s3://{bucket}")
    data = os.urandom(40 * 1024 * 1024)
    with open(m.path / "big.bin", "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
        head = s3.head_object(Bucket=bucket, Key="big.bin")
        assert head["ContentLength"] == len(data)
        assert "-" in head["ETag"]  # a multipart upload's ETag
    assert s3_bytes(s3, bucket, "big.bin") == data
    assert (m.path / "big.bin").stat().st_size == len(data)


def test_overwrite_append_and_truncate_change_the_object(make_cluster, mount, s3, bucket):
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"0123456789")
    m = mount(make_cluster(1), f"s3://{bucket}")
    path = m.path / "f.txt"
    path.write_bytes(b"abc")  # O_TRUNC
    assert s3_bytes(s3, bucket, "f.txt") == b"abc"
    with open(path, "ab") as fh:
        fh.write(b"def")
    assert s3_bytes(s3, bucket, "f.txt") == b"abcdef"
    os.truncate(path, 2)
    assert s3_bytes(s3, bucket, "f.txt") == b"ab"
    assert path.read_bytes() == b"ab" and path.stat().st_size == 2
    with open(path, "r+b") as fh:
        fh.seek(1)
        fh.write(b"Z")
    assert s3_bytes(s3, bucket, "f.txt") == b"aZ"


def test_rewriting_a_large_object_in_place_is_refused(make_cluster, mount, s3, bucket):
    s3.put_object(Bucket=bucket, Key="large.bin", Body=b"x" * (2 * 1024 * 1024))
    m = mount(make_cluster(1), f"s3://{bucket}", "--max-rewrite", "1MiB")
    with pytest.raises(OSError) as exc:
        os.open(m.path / "large.bin", os.O_RDWR)
    assert exc.value.errno == errno.EOPNOTSUPP
    (m.path / "large.bin").write_bytes(b"replaced")  # O_TRUNC is always fine
    assert s3_bytes(s3, bucket, "large.bin") == b"replaced"


def test_mkdir_rmdir_unlink_rename_behave_with_posix_errnos(make_cluster, mount, s3, bucket):
    m = mount(make_cluster(1), f"s3://{bucket}")
    d = m.path / "d"
    os.mkdir(d)
    assert s3.head_object(Bucket=bucket, Key="d/")["ContentLength"] == 0
    with pytest.raises(FileExistsError):
        os.mkdir(d)
    (d / "f").write_bytes(b"payload")
    with pytest.raises(OSError) as exc:
        os.rmdir(d)
    assert exc.value.errno == errno.ENOTEMPTY
    os.rename(d / "f", m.path / "g")
    assert s3_bytes(s3, bucket, "g") == b"payload"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="d/f")
    assert (m.path / "g").read_bytes() == b"payload"
    assert sorted(os.listdir(m.path)) == ["d", "g"]
    os.mkdir(m.path / "e")
    os.rename(m.path / "e", m.path / "e2")  # an empty directory: its marker moves
    assert s3_keys(s3, bucket, "e") == ["e2/"]
    os.unlink(m.path / "g")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="g")
    os.rmdir(d)
    assert sorted(os.listdir(m.path)) == ["e2"]
    with pytest.raises(FileNotFoundError):
        os.unlink(m.path / "g")
    with pytest.raises(FileNotFoundError):
        os.rmdir(m.path / "nope")
    (m.path / "h").write_bytes(b"one name")
    with pytest.raises(OSError) as exc:
        os.link(m.path / "h", m.path / "link")  # an object has one name: no hard links
    assert exc.value.errno == errno.EPERM
    os.chmod(m.path / "e2", 0o700)  # stored in the marker object's metadata
    assert (m.path / "e2").stat().st_mode & 0o777 == 0o700


def test_directory_rename_moves_every_object_and_the_mount_shows_only_the_new_tree(
    make_cluster, mount, s3, bucket
):
    big = os.urandom(2 * BS + 5)
    tree = {
        "src/a.txt": b"alpha",
        "src/sub/b.bin": big,
        "src/sub/deeper/c.txt": b"gamma",
        "src/sub/": b"",  # a subdirectory's marker moves too
    }
    for key, body in tree.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3.put_object(Bucket=bucket, Key="src/", Body=b"", Metadata={"mode": str(0o40750)})
    s3.put_object(Bucket=bucket, Key="srcfoo/x", Body=b"not under src/")
    m = mount(make_cluster(1), f"s3://{bucket}", "--attr-ttl", "60")  # stale caches would show
    src, dst = m.path / "src", m.path / "dst"
    (src / "written.txt").write_bytes(b"through the mount")
    # Fill the mount's caches: listings of both levels, inodes the kernel holds.
    assert sorted(os.listdir(src)) == ["a.txt", "sub", "written.txt"]
    assert sorted(os.listdir(src / "sub")) == ["b.bin", "deeper"]
    ino = os.stat(src / "sub" / "b.bin").st_ino
    assert (src / "sub" / "b.bin").read_bytes() == big

    os.rename(src, dst)
    moved = {**tree, "src/": b"", "src/written.txt": b"through the mount"}
    expected = {"dst/" + key[len("src/") :]: body for key, body in moved.items()}
    assert s3_keys(s3, bucket, "dst/") == sorted(expected)
    assert all(s3_bytes(s3, bucket, key) == body for key, body in expected.items())
    assert s3.head_object(Bucket=bucket, Key="dst/")["Metadata"] == {"mode": str(0o40750)}
    assert s3_keys(s3, bucket, "src/") == []
    assert s3_bytes(s3, bucket, "srcfoo/x") == b"not under src/"
    assert sorted(os.listdir(m.path)) == ["dst", "srcfoo"]
    assert not src.exists()
    assert sorted(os.listdir(dst)) == ["a.txt", "sub", "written.txt"]
    assert sorted(os.listdir(dst / "sub")) == ["b.bin", "deeper"]
    assert os.listdir(dst / "sub" / "deeper") == ["c.txt"]
    assert (dst / "sub" / "b.bin").read_bytes() == big
    assert os.stat(dst / "sub" / "b.bin").st_ino == ino  # the kernel's inode moved with it
    assert (dst / "sub" / "deeper" / "c.txt").read_bytes() == b"gamma"
    assert (dst / "written.txt").read_bytes() == b"through the mount"
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o750


def test_directory_rename_refuses_what_posix_refuses_and_open_writers(
    make_cluster, mount, s3, bucket
):
    for key in ("a/f", "a/sub/g", "full/h", "empty/", "file"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    m = mount(make_cluster(1), f"s3://{bucket}")
    for dst, code in (
        ("a/sub/inside", errno.EINVAL),  # into its own subtree
        ("full", errno.ENOTEMPTY),
        ("file", errno.ENOTDIR),
    ):
        with pytest.raises(OSError) as exc:
            os.rename(m.path / "a", m.path / dst)
        assert exc.value.errno == code, dst
    with open(m.path / "a" / "sub" / "open.txt", "wb") as fh:
        fh.write(b"being written")
        with pytest.raises(OSError) as exc:
            os.rename(m.path / "a", m.path / "b")
        assert exc.value.errno == errno.EBUSY  # its upload would land under the old name
    assert s3_keys(s3, bucket, "a/") == ["a/f", "a/sub/g", "a/sub/open.txt"]
    os.rename(m.path / "a", m.path / "empty")  # an empty directory is replaced
    assert s3_keys(s3, bucket, "a") == []
    assert s3_keys(s3, bucket, "empty") == ["empty/f", "empty/sub/g", "empty/sub/open.txt"]
    assert sorted(os.listdir(m.path)) == ["empty", "file", "full"]
    assert (m.path / "empty" / "sub" / "open.txt").read_bytes() == b"being written"


def test_directory_rename_whose_copy_fails_is_eio_and_leaves_the_old_tree_whole(
    make_cluster, mount, s3, bucket
):
    keys = [f"d/f{i:02d}" for i in range(40)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    # S3 refuses to copy an archived object: a failure among successful copies.
    s3.put_object(Bucket=bucket, Key="d/f20", Body=b"cold", StorageClass="GLACIER")
    m = mount(make_cluster(1), f"s3://{bucket}")
    assert len(os.listdir(m.path / "d")) == 40
    with pytest.raises(OSError) as exc:
        os.rename(m.path / "d", m.path / "moved")
    assert exc.value.errno == errno.EIO
    assert s3_keys(s3, bucket, "d/") == keys
    assert s3_bytes(s3, bucket, "d/f07") == b"d/f07"
    assert s3_keys(s3, bucket, "moved") == []  # the copies made were deleted again
    assert sorted(os.listdir(m.path)) == ["d"]
    assert len(os.listdir(m.path / "d")) == 40
    assert (m.path / "d" / "f07").read_bytes() == b"d/f07"


async def test_directory_rename_over_the_object_cap_is_exdev_and_copies_nothing(s3, bucket):
    # The mount's cap (MAX_RENAME_OBJECTS, 10,000) is too many objects to create for a
    # test; the origin's refusal is the same with a small cap, and its errno is the one
    # the mount returns.
    for key in ("t/1", "t/2", "t/3"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    origin = S3Origin()
    try:
        with pytest.raises(TooManyObjects) as exc:
            await origin.rename_dir(
                f"s3://{bucket}/t/", f"s3://{bucket}/u/", max_objects=2, parallel=4
            )
        assert exc.value.errno == errno.EXDEV
        moved = await origin.rename_dir(
            f"s3://{bucket}/t/", f"s3://{bucket}/u/", max_objects=3, parallel=4
        )
    finally:
        origin.close()
    assert sorted(moved) == ["1", "2", "3"]
    assert s3_keys(s3, bucket, "") == ["u/1", "u/2", "u/3"]


def test_read_only_mount_refuses_every_change_with_erofs(make_cluster, mount, s3, bucket):
    s3.put_object(Bucket=bucket, Key="f", Body=b"1")
    m = mount(make_cluster(1), f"s3://{bucket}", "--read-only")
    assert (m.path / "f").read_bytes() == b"1"
    for change in (
        lambda: (m.path / "new").write_bytes(b"x"),
        lambda: os.open(m.path / "f", os.O_WRONLY),
        lambda: os.mkdir(m.path / "d"),
        lambda: os.unlink(m.path / "f"),
        lambda: os.rename(m.path / "f", m.path / "g"),
        lambda: os.truncate(m.path / "f", 0),
    ):
        with pytest.raises(OSError) as exc:
            change()
        assert exc.value.errno == errno.EROFS
    assert s3_bytes(s3, bucket, "f") == b"1"


def test_failed_upload_is_an_error_for_the_writer(make_cluster, mount, s3, bucket):
    m = mount(make_cluster(1), f"s3://{bucket}")
    fh = open(m.path / "doomed.bin", "wb")  # noqa: SIM115 - closed below, on purpose
    fh.write(b"x" * 1000)
    s3.delete_bucket(Bucket=bucket)  # the upload on close() cannot succeed
    with pytest.raises(OSError) as exc:
        fh.close()
    assert exc.value.errno == errno.EIO


def test_unmounts_cleanly_on_sigterm_and_on_fusermount(make_cluster, mount, bucket):
    cluster = make_cluster(1)
    first = mount(cluster, f"s3://{bucket}")
    first.proc.signal(signal.SIGTERM)
    assert first.proc.popen.wait(15) == 0  # type: ignore[union-attr]
    assert not os.path.ismount(first.path)
    second = mount(cluster, f"s3://{bucket}")
    subprocess.run(["fusermount3", "-u", str(second.path)], check=True)
    assert second.proc.popen.wait(15) == 0  # type: ignore[union-attr]
    assert not os.path.ismount(second.path)
