"""Names and modes on the mount: every name the kernel accepts is written, a name that is
not UTF-8 is refused with EILSEQ, and the mode bits a file shows are the ones stored."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.mountd.conftest import NOBODY, as_nobody

LONG = "n" * 251 + ".csv"  # 255 bytes, the most a name may have
LONG_UTF8 = "é" * 127 + "x"  # 255 bytes in UTF-8, 128 characters
LONG_DIR = "d" * 255


def source_of(origin: str, bucket: str, src: Path) -> str:
    return f"s3://{bucket}" if origin == "s3" else f"file://{src}"


def touch(path: bytes, mode: str) -> None:
    """Open ``path`` (creating it with ``"wb"``) and close it again."""
    with open(path, mode):
        pass


@pytest.mark.parametrize("origin", ["s3", "file"])
def test_255_byte_names_are_written_and_read_back_by_a_fresh_mount(
    origin, make_cluster, mount, s3, bucket, tmp_path
):
    src = tmp_path / "src"
    src.mkdir()
    cluster = make_cluster(1)
    m = mount(cluster, source_of(origin, bucket, src))
    for name in (LONG, LONG_UTF8):
        assert len(name.encode()) == 255
        (m.path / name).write_bytes(name.encode())  # close() uploads: must not fail
    os.mkdir(m.path / LONG_DIR)
    (m.path / LONG_DIR / LONG).write_bytes(b"inside")
    with open(m.path / LONG, "r+b") as fh:  # a rewrite of an existing object
        fh.write(b"N")
    with pytest.raises(OSError) as err:
        (m.path / ("n" * 256)).write_bytes(b"one byte too long")
    assert err.value.errno == errno.ENAMETOOLONG

    if origin == "s3":
        assert s3.get_object(Bucket=bucket, Key=f"{LONG_DIR}/{LONG}")["Body"].read() == b"inside"
    else:
        # Nothing but the files themselves: no temporary copy left behind.
        assert sorted(os.listdir(src)) == sorted([LONG, LONG_UTF8, LONG_DIR])
    fresh = mount(cluster, source_of(origin, bucket, src))
    assert sorted(os.listdir(fresh.path)) == sorted([LONG, LONG_UTF8, LONG_DIR])
    assert (fresh.path / LONG).read_bytes() == b"N" + LONG.encode()[1:]
    assert (fresh.path / LONG_UTF8).read_bytes() == LONG_UTF8.encode()
    assert (fresh.path / LONG_DIR / LONG).read_bytes() == b"inside"


def test_file_origin_names_not_in_utf8_are_left_out_and_refused_with_eilseq(
    make_cluster, mount, tmp_path
):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_bytes(b"good")
    raw = os.fsencode(src)
    with open(raw + b"/bad-\xff\xfe.txt", "wb") as fh:
        fh.write(b"latin-1 name")
    os.mkdir(raw + b"/dir-\xe9")
    (src / "sub").mkdir()
    with open(raw + b"/sub/caf\xe9.csv", "wb") as fh:
        fh.write(b"x")
    (src / "sub" / "café.csv").write_bytes(b"utf-8 name")
    m = mount(make_cluster(1), f"file://{src}")
    mnt = os.fsencode(m.path)

    # The directory lists, with every other entry; the odd names are not in it.
    assert sorted(os.listdir(mnt)) == [b"good.txt", b"sub"]
    assert os.listdir(mnt + b"/sub") == ["café.csv".encode()]
    assert subprocess.run(["ls", "-l", m.path / "sub"], capture_output=True).returncode == 0
    assert (m.path / "good.txt").read_bytes() == b"good"
    assert (m.path / "sub" / "café.csv").read_bytes() == b"utf-8 name"

    # Asked for by name, such a name is EILSEQ, not EIO, and nothing changes.
    for call in (
        lambda: os.stat(mnt + b"/bad-\xff\xfe.txt"),
        lambda: touch(mnt + b"/bad-\xff\xfe.txt", "rb"),
        lambda: os.listdir(mnt + b"/dir-\xe9"),
        lambda: touch(mnt + b"/new-\xff", "wb"),
        lambda: os.mkdir(mnt + b"/newdir-\xff"),
        lambda: os.rename(mnt + b"/good.txt", mnt + b"/good-\xff.txt"),
        lambda: os.unlink(mnt + b"/bad-\xff\xfe.txt"),
    ):
        with pytest.raises(OSError) as err:
            call()
        assert err.value.errno == errno.EILSEQ
    assert sorted(os.listdir(raw)) == sorted(
        [b"bad-\xff\xfe.txt", b"dir-\xe9", b"good.txt", b"sub"]
    )
    # A directory holding only such a name lists empty, but is not.
    os.remove(m.path / "sub" / "café.csv")
    assert os.listdir(m.path / "sub") == []
    with pytest.raises(OSError) as err:
        os.rmdir(m.path / "sub")
    assert err.value.errno == errno.ENOTEMPTY
    assert os.listdir(raw + b"/sub") == [b"caf\xe9.csv"]


def test_s3_mount_refuses_a_name_not_in_utf8_with_eilseq_and_writes_nothing(
    make_cluster, mount, s3, bucket
):
    s3.put_object(Bucket=bucket, Key="good.txt", Body=b"good")
    m = mount(make_cluster(1), f"s3://{bucket}")
    mnt = os.fsencode(m.path)
    for call in (
        lambda: touch(mnt + b"/caf\xe9.csv", "wb"),
        lambda: os.mkdir(mnt + b"/caf\xe9"),
        lambda: os.rename(mnt + b"/good.txt", mnt + b"/caf\xe9.csv"),
    ):
        with pytest.raises(OSError) as err:
            call()
        assert err.value.errno == errno.EILSEQ
    objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [o["Key"] for o in objects] == ["good.txt"]
    assert os.listdir(m.path) == ["good.txt"]


@pytest.mark.parametrize("origin", ["s3", "file"])
def test_setuid_setgid_and_sticky_bits_shown_are_the_ones_a_fresh_mount_shows(
    origin, make_cluster, mount, s3, bucket, tmp_path
):
    src = tmp_path / "src"
    src.mkdir()
    cluster = make_cluster(1)
    m = mount(cluster, source_of(origin, bucket, src))
    (m.path / "tool").write_bytes(b"#!/bin/sh\n")
    (m.path / "group-tool").write_bytes(b"#!/bin/sh\n")
    os.mkdir(m.path / "scratch")
    os.mkdir(m.path / "shared")
    os.chmod(m.path / "tool", 0o4755)
    os.chmod(m.path / "group-tool", 0o6750)
    os.chmod(m.path / "scratch", 0o1777)
    os.chmod(m.path / "shared", 0o2775)
    # Created with the bits: stored by the upload at close.
    fd = os.open(m.path / "created", os.O_CREAT | os.O_WRONLY, 0o4711)
    os.write(fd, b"#!/bin/sh\n")
    os.close(fd)
    # Rewritten by its owner (root keeps the bits): the upload stores them again.
    with open(m.path / "tool", "ab") as fh:
        fh.write(b"true\n")
    # Given away: chown clears setuid and setgid (POSIX), and what is stored says so.
    (m.path / "given").write_bytes(b"#!/bin/sh\n")
    os.chmod(m.path / "given", 0o6755)
    os.chown(m.path / "given", 1234, 1234)
    want = {
        "tool": 0o4755,
        "group-tool": 0o6750,
        "scratch": 0o1777,
        "shared": 0o2775,
        "created": 0o4711,
        "given": 0o755,
    }
    shown = {name: stat.S_IMODE(os.stat(m.path / name).st_mode) for name in want}
    assert shown == want
    if origin == "file":
        assert {n: stat.S_IMODE(os.stat(src / n).st_mode) for n in want} == want
    else:
        meta = s3.head_object(Bucket=bucket, Key="tool")["Metadata"]
        assert int(meta["mode"]) == stat.S_IFREG | 0o4755
    fresh = mount(cluster, source_of(origin, bucket, src))
    assert {n: stat.S_IMODE(os.stat(fresh.path / n).st_mode) for n in want} == want


def test_a_stored_setuid_bit_gives_no_privileges_the_mount_is_nosuid_and_nodev(
    make_cluster, open_mount, s3, bucket
):
    # Anyone who may write to the bucket can store a setuid-root mode (s3fs's metadata).
    with open(shutil.which("id") or "/usr/bin/id", "rb") as fh:
        s3.put_object(
            Bucket=bucket,
            Key="id",
            Body=fh.read(),
            Metadata={"mode": str(stat.S_IFREG | 0o4755), "uid": "0", "gid": "0"},
        )
    m = open_mount(make_cluster(1), f"s3://{bucket}")
    assert stat.S_IMODE(os.stat(m.path / "id").st_mode) == 0o4755  # shown as stored
    run = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         str(m.path / "id"), "-u"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(NOBODY)  # not root: the bit is not honoured
    options = next(
        line.split()[3].split(",")
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1] == str(m.path)
    )
    assert "nosuid" in options and "nodev" in options


def test_a_write_by_another_user_clears_setuid_in_the_mount_and_in_s3(
    make_cluster, open_mount, s3, bucket
):
    cluster = make_cluster(1)
    m = open_mount(cluster, f"s3://{bucket}", "--umask", "000")
    (m.path / "known").write_bytes(b"x")
    os.chmod(m.path / "known", 0o6777)
    # Stored by another machine: this mount's kernel knows it from a listing only.
    s3.put_object(
        Bucket=bucket,
        Key="listed",
        Body=b"x",
        Metadata={"mode": str(stat.S_IFREG | 0o4777), "uid": "0", "gid": "0"},
    )
    time.sleep(1.1)  # past --attr-ttl: the next listing is the bucket's
    assert sorted(os.listdir(m.path)) == ["known", "listed"]
    for name in ("known", "listed"):
        run = as_nobody("sh", "-c", f"echo more >> {m.path / name}")
        assert run.returncode == 0, run.stderr  # not EIO, not EPERM
    for name in ("known", "listed"):
        mode = int(s3.head_object(Bucket=bucket, Key=name)["Metadata"]["mode"])
        assert stat.S_IMODE(mode) == 0o777, name
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == b"xmore\n"
    fresh = open_mount(cluster, f"s3://{bucket}", "--umask", "000")
    for mnt in (m, fresh):
        time.sleep(1.1)  # past --attr-ttl: the kernel asks again
        assert {n: stat.S_IMODE(os.stat(mnt.path / n).st_mode) for n in ("known", "listed")} == {
            "known": 0o777,
            "listed": 0o777,
        }
