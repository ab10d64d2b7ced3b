"""Writes through the mount: durable on close(), cached for the next reader, POSIX errnos."""

from __future__ import annotations

import errno
import os
import signal
import subprocess

import pytest

from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS


def s3_bytes(s3, bucket: str, key: str) -> bytes:  # type: ignore[no-untyped-def]
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


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
    with pytest.raises(OSError) as exc:
        os.rename(m.path / "e", m.path / "e2")
    assert exc.value.errno == errno.EXDEV  # mv(1) falls back to copy and delete
    os.unlink(m.path / "g")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="g")
    os.rmdir(d)
    assert sorted(os.listdir(m.path)) == ["e"]
    with pytest.raises(FileNotFoundError):
        os.unlink(m.path / "g")
    with pytest.raises(FileNotFoundError):
        os.rmdir(m.path / "nope")
    with pytest.raises(OSError) as exc:
        os.symlink("e", m.path / "link")
    assert exc.value.errno == errno.EPERM
    os.chmod(m.path / "e", 0o700)  # stored in the marker object's metadata
    assert (m.path / "e").stat().st_mode & 0o777 == 0o700


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
