"""The tree of a mount: listings, attributes, inode numbers, statfs, xattrs, file:// sources."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def test_listing_shows_prefixes_as_directories_and_objects_with_their_sizes(
    make_cluster, mount, s3, bucket
):
    for key, body in {
        "bars/2024/01.csv": b"a" * 10,
        "bars/2024/02.csv": b"b" * 2000,
        "bars/readme.txt": b"hi",
        "top.bin": b"x" * 5,
        "empty/": b"",  # a directory marker, as s3fs and rclone make them
    }.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    m = mount(make_cluster(1), f"s3://{bucket}")
    assert sorted(os.listdir(m.path)) == ["bars", "empty", "top.bin"]
    assert sorted(os.listdir(m.path / "bars")) == ["2024", "readme.txt"]
    assert sorted(os.listdir(m.path / "bars" / "2024")) == ["01.csv", "02.csv"]
    assert os.listdir(m.path / "empty") == []
    assert (m.path / "bars").is_dir() and (m.path / "top.bin").is_file()
    st = os.stat(m.path / "bars" / "2024" / "02.csv")
    assert st.st_size == 2000
    head = s3.head_object(Bucket=bucket, Key="bars/2024/02.csv")
    assert abs(st.st_mtime - head["LastModified"].timestamp()) < 1
    assert not (m.path / "missing").exists()


def test_inode_numbers_are_stable_across_lookups_and_mounts(make_cluster, mount, s3, bucket):
    s3.put_object(Bucket=bucket, Key="d/f.txt", Body=b"1")
    cluster = make_cluster(1)
    first, second = mount(cluster, f"s3://{bucket}"), mount(cluster, f"s3://{bucket}")
    ino = os.stat(first.path / "d" / "f.txt").st_ino
    time.sleep(1.2)  # past --attr-ttl: the entry is looked up again
    assert os.stat(first.path / "d" / "f.txt").st_ino == ino
    assert os.stat(second.path / "d" / "f.txt").st_ino == ino
    assert os.stat(first.path / "d").st_ino != ino


def assert_listed_once(m, path: Path, count: int) -> None:  # type: ignore[no-untyped-def]
    """``ls -l path`` shows ``count`` files ``f<i>`` of ``i % 7`` bytes, from one listing
    of the directory (the kernel asks for the names in many small batches, each served
    from the listing opendir took) and no stat per entry."""
    assert path.is_dir()
    before_stat = m.metric("ringcache_origin_requests_total", 'op="stat"')
    before_list = m.metric("ringcache_origin_requests_total", 'op="list"')
    entries = {e.name: e.stat().st_size for e in os.scandir(path)}  # ls -l
    assert len(entries) == count
    assert all(size == int(name[1:]) % 7 for name, size in entries.items())
    assert m.metric("ringcache_origin_requests_total", 'op="stat"') == before_stat
    assert m.metric("ringcache_origin_requests_total", 'op="list"') - before_list == 1


def test_large_directory_is_listed_once_without_a_request_per_entry(
    make_cluster, mount, s3, bucket
):
    count = 1500  # two S3 listing pages (10,000 entries: the file:// test below)
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda i: s3.put_object(Bucket=bucket, Key=f"big/f{i:05d}", Body=b"x" * (i % 7)),
                range(count),
            )
        )
    m = mount(make_cluster(1), f"s3://{bucket}", "--attr-ttl", "60")  # no expiry mid-test
    # Two ListObjectsV2 pages, one listing operation (what the counter counts).
    assert_listed_once(m, m.path / "big", count)


def test_directory_of_10k_entries_is_listed_once(make_cluster, mount, tmp_path):
    # file:// because moto takes ~80 s to create 10,000 objects; the mount's readdir path
    # is the same for both origins (S3 paging is covered above).
    src = tmp_path / "src"
    big = src / "big"
    big.mkdir(parents=True)
    count = 10_000
    for i in range(count):
        (big / f"f{i:05d}").write_bytes(b"x" * (i % 7))
    m = mount(make_cluster(1), f"file://{src}", "--attr-ttl", "60")
    assert_listed_once(m, m.path / "big", count)


def test_statfs_reports_free_space_and_name_length(make_cluster, mount, bucket):
    m = mount(make_cluster(1), f"s3://{bucket}")
    st = os.statvfs(m.path)
    assert st.f_bavail * st.f_frsize > 2**40
    assert st.f_namemax == 255


def test_xattr_gives_the_source_url_of_files_and_directories(make_cluster, mount, s3, bucket):
    s3.put_object(Bucket=bucket, Key="pre/data/x.parquet", Body=b"par1")
    m = mount(make_cluster(1), f"s3://{bucket}/pre")
    f = m.path / "data" / "x.parquet"
    assert os.getxattr(f, "user.ringcache.source") == f"s3://{bucket}/pre/data/x.parquet".encode()
    assert (
        os.getxattr(m.path / "data", "user.ringcache.source") == f"s3://{bucket}/pre/data/".encode()
    )
    assert os.getxattr(m.path, "user.ringcache.source") == f"s3://{bucket}/pre/".encode()
    assert "user.ringcache.source" in os.listxattr(f)


def test_file_source_lists_reads_and_writes_a_local_directory(make_cluster, mount, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    data = os.urandom(5 * 1024 * 1024 + 3)
    (src / "sub" / "blob").write_bytes(data)
    m = mount(make_cluster(1), f"file://{src}")
    assert os.listdir(m.path) == ["sub"]
    assert (m.path / "sub" / "blob").read_bytes() == data
    (m.path / "sub" / "out.txt").write_text("written")
    assert (src / "sub" / "out.txt").read_text() == "written"
    os.mkdir(m.path / "new")
    assert (src / "new").is_dir()
    assert (
        Path(os.getxattr(m.path / "sub" / "blob", "user.ringcache.source").decode()[7:])
        == src / "sub" / "blob"
    )
    os.rename(m.path / "sub", m.path / "moved")  # a real rename of the directory
    assert sorted(os.listdir(src)) == ["moved", "new"]
    assert sorted(os.listdir(m.path)) == ["moved", "new"]
    assert (m.path / "moved" / "blob").read_bytes() == data
