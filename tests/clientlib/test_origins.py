"""The origin registry (S3 built once, off the event loop) and the file origin's
containment in its roots on a node (units, on real files)."""

from __future__ import annotations

import asyncio
import errno
import functools
import http.client
import mmap
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.config
import pytest

from clientlib.errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    NotFound,
    OriginError,
    VersionMismatch,
)
from clientlib.launcher import free_port
from clientlib.origin import Origins, beneath
from clientlib.origin.base import PosixAttrs
from clientlib.origin.local import FileOrigin
from clientlib.origin.s3 import S3Origin
from clientlib.origin.s3conns import Connections
from testkit import S3Proxy, Seaweed, start_seaweed


async def test_s3_backend_is_built_once_on_a_thread(monkeypatch):
    origins = Origins()
    built: list[str] = []
    backend = object()

    def slow_build():  # boto3's import and client take this long on a busy machine
        built.append(threading.current_thread().name)
        time.sleep(0.3)
        return backend

    monkeypatch.setattr(origins, "_make_s3", slow_build)
    readers = [asyncio.create_task(origins.get(f"s3://bucket/k{i}")) for i in range(3)]
    ticks = 0
    while not all(r.done() for r in readers):
        await asyncio.sleep(0.01)  # the loop keeps running while the client is built
        ticks += 1
    assert [await r for r in readers] == [backend] * 3
    assert len(built) == 1 and built[0] != threading.main_thread().name
    assert ticks >= 5
    assert origins.for_url("s3://bucket/other") is backend


def test_check_refuses_without_building_s3(monkeypatch):
    origins = Origins(file_roots=[Path("/srv/data")])
    monkeypatch.setattr(origins, "_make_s3", lambda: pytest.fail("S3 built by check()"))
    origins.check("s3://bucket/key")
    with pytest.raises(BadRequest):
        origins.check("gs://bucket/key")
    with pytest.raises(Forbidden, match="outside"):
        origins.check("file:///etc/passwd")


# The file origin on a node (``allowed_roots`` set) opens only what it checked: beneath
# its root, never through a symlink, never a directory, FIFO or device as an object.


@pytest.fixture(params=["openat2", "walk"])
def beneath_mode(request, monkeypatch):  # type: ignore[no-untyped-def]
    """Run a test with openat2 and again with the component walk older kernels get."""
    if request.param == "walk":
        monkeypatch.setattr(beneath, "_have_openat2", False)
    else:
        assert beneath._openat2_works(), "openat2 is missing here: only the walk is tested"
    return request.param


@pytest.fixture
def tree(tmp_path):  # type: ignore[no-untyped-def]
    """``root/`` with a file, a subdirectory and symlinks in and out; ``outside/`` a secret."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "inside.bin").write_bytes(b"inside" * 100)
    (root / "sub" / "f.bin").write_bytes(b"f" * 10)
    (outside / "secret.bin").write_bytes(b"SECRET" * 100)
    (outside / "f.bin").write_bytes(b"SECRET" * 2)
    (root / "out.bin").symlink_to(outside / "secret.bin")
    (root / "in.bin").symlink_to("inside.bin")  # stays inside, still not followed
    (root / "outdir").symlink_to(outside)
    return root, outside


def _v(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


async def test_node_reads_files_beneath_its_root(tree, beneath_mode):
    root, _ = tree
    origin = FileOrigin([root])
    url = f"file://{root}/inside.bin"
    info = await origin.stat(url)
    origin.check(url)
    assert await origin.read(url, 6, 12, info.version, size=600) == b"inside" * 2
    assert (await origin.stat(f"file://{root}/sub/f.bin")).size == 10
    dirs, files = await origin.listdir(f"file://{root}/")
    assert sorted(dirs) == ["sub"]
    assert [f.key for f in files] == [f"{root}/inside.bin"]  # no symlinks listed
    listed = await origin.list(f"file://{root}/")
    assert [f.key for f in listed] == [f"{root}/inside.bin", f"{root}/sub/f.bin"]
    _, _, attrs = await origin.listdir_posix(f"file://{root}/")
    assert set(attrs) == {"", "sub", "inside.bin"}


@pytest.mark.parametrize("name", ["out.bin", "in.bin", "outdir/secret.bin", "outdir/f.bin"])
async def test_node_never_opens_through_a_symlink(tree, beneath_mode, name):
    root, outside = tree
    origin = FileOrigin([root])
    url = f"file://{root}/{name}"
    secret_version = _v(outside / "secret.bin")
    with pytest.raises(NotFound):
        origin.check(url)
    with pytest.raises(NotFound):
        await origin.stat(url)
    with pytest.raises(NotFound):
        await origin.stat_posix(url)
    with pytest.raises(NotFound):
        await origin.read(url, 0, 600, secret_version)
    assert await origin.list(url) == []
    with pytest.raises(NotFound):
        await origin.listdir(f"file://{root}/outdir/")
    with pytest.raises(NotFound):
        await origin.listdir_posix(f"file://{root}/outdir/")
    with pytest.raises(NotFound):
        await origin.dir_posix(f"file://{root}/outdir/")


async def test_node_changes_nothing_through_a_symlinked_directory(tree, beneath_mode, tmp_path):
    root, outside = tree
    origin = FileOrigin([root])
    before = sorted(p.name for p in outside.iterdir())
    src = tmp_path / "upload.bin"
    src.write_bytes(b"new")
    via = f"file://{root}/outdir"
    with pytest.raises(NotFound):
        await origin.write(f"{via}/f.bin", src)
    with pytest.raises(NotFound):
        await origin.delete(f"{via}/f.bin")
    with pytest.raises(NotFound):
        await origin.rename(f"{via}/f.bin", f"file://{root}/stolen.bin")
    with pytest.raises(NotFound):
        await origin.rename(f"file://{root}/inside.bin", f"{via}/f.bin")
    with pytest.raises(NotFound):
        await origin.mkdir(f"{via}/new/")
    with pytest.raises(NotADirectoryError):  # rmdir acts on the link itself, by name
        await origin.rmdir(f"{via}/")
    with pytest.raises(NotFound):
        await origin.set_posix(f"{via}/f.bin", PosixAttrs(mode=0o100600))
    with pytest.raises(NotFound):
        await origin.set_posix(f"file://{root}/out.bin", PosixAttrs(mode=0o100600))
    assert sorted(p.name for p in outside.iterdir()) == before
    assert (outside / "f.bin").read_bytes() == b"SECRET" * 2
    assert (outside / "secret.bin").stat().st_mode & 0o777 != 0o600
    assert (root / "inside.bin").exists() and (root / "outdir").is_symlink()


async def test_node_writes_and_renames_beneath_its_root(tree, beneath_mode, tmp_path):
    root, _ = tree
    origin = FileOrigin([root])
    src = tmp_path / "upload.bin"
    src.write_bytes(b"new bytes")
    info = await origin.write(f"file://{root}/sub/w.bin", src, posix=PosixAttrs(mode=0o100640))
    assert (root / "sub" / "w.bin").read_bytes() == b"new bytes" and info.size == 9
    assert (root / "sub" / "w.bin").stat().st_mode & 0o777 == 0o640
    await origin.rename(f"file://{root}/sub/w.bin", f"file://{root}/w.bin")
    await origin.set_posix(f"file://{root}/w.bin", PosixAttrs(mode=0o100600))
    assert (root / "w.bin").stat().st_mode & 0o777 == 0o600
    await origin.mkdir(f"file://{root}/d/", PosixAttrs(mode=0o40700))
    assert (root / "d").stat().st_mode & 0o777 == 0o700
    moved = await origin.rename_dir(
        f"file://{root}/sub/", f"file://{root}/d/sub/", max_objects=10, parallel=1
    )
    assert list(moved) == ["f.bin"]
    await origin.delete(f"file://{root}/w.bin")
    await origin.delete(f"file://{root}/d/sub/f.bin")
    await origin.rmdir(f"file://{root}/d/sub/")
    assert sorted(p.name for p in (root / "d").iterdir()) == []
    with pytest.raises(Forbidden):
        await origin.write(f"file://{root.parent}/outside/x.bin", src)


async def test_node_read_never_returns_a_file_a_symlink_flips_to(tree, beneath_mode):
    """Check-then-open: the link flips between a file inside the root and a secret
    outside it; a read asking for the secret's version gets it never."""
    root, outside = tree
    origin = FileOrigin([root])
    secret = outside / "secret.bin"
    link = root / "flip.bin"
    stop = threading.Event()

    def flip() -> None:
        targets = [str(root / "inside.bin"), str(secret)]
        i = 0
        while not stop.is_set():
            tmp = root / f".flip{i % 2}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(targets[i % 2])
            tmp.replace(link)
            i += 1

    flipper = threading.Thread(target=flip)
    flipper.start()
    url, version = f"file://{link}", _v(secret)
    leaked = refused = 0
    try:
        for _ in range(3000):
            try:
                data = await origin.read(url, 0, 600, version)
            except (NotFound, Forbidden, VersionMismatch):
                refused += 1
                continue
            leaked += b"SECRET" in data
    finally:
        stop.set()
        flipper.join()
    assert leaked == 0
    assert refused == 3000


async def test_directory_fifo_and_device_are_not_objects(tree, beneath_mode):
    root, _ = tree
    os.mkfifo(root / "fifo")
    node, client = FileOrigin([root]), FileOrigin()
    names = ["sub", "fifo"]
    if os.geteuid() == 0:
        os.mknod(root / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        names.append("null")
    for origin in (node, client):
        for name in names:
            url = f"file://{root}/{name}"
            with pytest.raises(NotFound):
                await origin.stat(url)
            with pytest.raises(NotFound):
                await origin.stat_posix(url)
            version = _v(root / name)
            with pytest.raises(NotFound):  # a FIFO's open would block without O_NONBLOCK
                await asyncio.wait_for(origin.read(url, 0, 10, version), 5)
            with pytest.raises(NotFound):
                node.check(url)
        files = ["inside.bin", "sub/f.bin"]
        if origin is client:  # a client follows the symlinks to files
            files = ["in.bin", "inside.bin", "out.bin", "sub/f.bin"]
        listed = await origin.list(f"file://{root}/")
        assert [f.key for f in listed] == [f"{root}/{name}" for name in files]


async def test_client_follows_symlinks_as_before(tree):
    root, _ = tree
    client = FileOrigin()
    url = f"file://{root}/outdir/secret.bin"
    info = await client.stat(url)
    assert await client.read(url, 0, 6, info.version) == b"SECRET"
    assert (await client.stat(f"file://{root}/in.bin")).size == 600
    _, files = await client.listdir(f"file://{root}/")
    assert sorted(f.key.rsplit("/", 1)[1] for f in files) == ["in.bin", "inside.bin", "out.bin"]


def test_node_matches_a_url_to_its_root_by_whole_components(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data-other").mkdir()
    (tmp_path / "data-other" / "x").write_bytes(b"x")
    origin = FileOrigin([tmp_path / "data"])
    with pytest.raises(Forbidden):
        origin.check(f"file://{tmp_path}/data-other/x")
    with pytest.raises(Forbidden):
        origin.check(f"file://{tmp_path}/data/../data-other/x")
    with pytest.raises(NotFound):
        origin.check(f"file://{tmp_path}/data/missing")


def test_open_beneath_refuses_dot_dot_and_absolute_symlinks(tree, beneath_mode):
    root, _ = tree
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(ValueError):
            beneath.open_beneath(fd, "../outside/secret.bin", os.O_RDONLY)
        for rel in ("out.bin", "in.bin", "outdir/f.bin"):
            with pytest.raises(OSError) as caught:
                beneath.open_beneath(fd, rel, os.O_RDONLY)
            assert caught.value.errno == errno.ELOOP
        with pytest.raises(OSError) as caught:
            beneath.open_beneath(fd, "out.bin", os.O_PATH)
        assert caught.value.errno == errno.ELOOP
        inner = beneath.open_beneath(fd, "sub/f.bin", os.O_RDONLY)
        assert os.read(inner, 10) == b"f" * 10
        os.close(inner)
    finally:
        os.close(fd)


# -- S3 reads into a caller's buffer (moto and SeaweedFS) -----------------------------------


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


@pytest.fixture(params=["moto", "seaweedfs"])
def s3_server(request, monkeypatch, s3_endpoint):  # type: ignore[no-untyped-def]
    """A boto3 client of moto or SeaweedFS, with the environment an S3Origin takes its
    endpoint and credentials from pointed at the same server, and a fresh bucket."""
    if request.param == "seaweedfs":
        server = request.getfixturevalue("seaweed")
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "seaweed")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "seaweed")
        client = server.client()
    else:
        client = boto3.client("s3")
    name = f"into-{os.getpid()}-{time.monotonic_ns()}"
    client.create_bucket(Bucket=name)
    return client, name


async def test_s3_read_into_receives_the_range_of_the_pinned_version(s3_server, monkeypatch):
    client, bucket = s3_server
    received = []  # the bodies are received straight into the buffer, not read and copied
    readinto = http.client.HTTPResponse.readinto

    def spy(self, b):  # type: ignore[no-untyped-def]
        received.append(len(b))
        return readinto(self, b)

    monkeypatch.setattr(http.client.HTTPResponse, "readinto", spy)
    body = os.urandom(3 * 1024 * 1024 + 77)
    client.put_object(Bucket=bucket, Key="k.bin", Body=body)
    origin = S3Origin(max_inflight=4)
    try:
        url = f"s3://{bucket}/k.bin"
        info = await origin.stat(url)
        buf = mmap.mmap(-1, 1024 * 1024, flags=mmap.MAP_PRIVATE)
        view = memoryview(buf)
        # Block after block through the same buffer (and the same pooled connections).
        for offset in range(0, len(body), len(buf)):
            part = view[: min(len(buf), len(body) - offset)]
            await origin.read_into(url, offset, part, info.version, size=len(body))
            assert bytes(part) == body[offset : offset + len(part)]
        assert sum(received) >= len(body)
        with pytest.raises(VersionMismatch):
            await origin.read_into(url, 0, view[:10], info.version, size=len(body) + 1)
        client.put_object(Bucket=bucket, Key="k.bin", Body=body[::-1])
        with pytest.raises(VersionMismatch):
            await origin.read_into(url, 0, view[:10], info.version, size=len(body))
        with pytest.raises(NotFound):
            await origin.read_into(f"s3://{bucket}/none.bin", 0, view[:10], info.version)
        # The connections are still good after the refusals.
        info = await origin.stat(url)
        await origin.read_into(url, 5, view[:100], info.version, size=len(body))
        assert bytes(view[:100]) == body[::-1][5:105]
        view.release()
    finally:
        origin.close()


def _count_get_object(origin: S3Origin) -> list[str]:
    """The URLs of the GetObject requests ``origin``'s boto3 client sends from now on
    (its own event: a presigned URL sends nothing)."""
    calls: list[str] = []
    origin._client.meta.events.register(
        "before-send.s3.GetObject", lambda request, **kw: calls.append(request.url)
    )
    return calls


async def test_s3_block_gets_skip_get_object_and_keep_its_checks(s3_server):
    """A warm fetch's GET is the lean one (no botocore call) against moto and SeaweedFS,
    with the checks ``get_object``'s had: the pinned version, the size, a missing key."""
    client, bucket = s3_server
    body = os.urandom(2 * 1024 * 1024 + 13)
    client.put_object(Bucket=bucket, Key="dir/a b+c.bin", Body=body)
    origin = S3Origin(max_inflight=4)
    calls = _count_get_object(origin)
    try:
        url = f"s3://{bucket}/dir/a b+c.bin"  # a key that must be percent-encoded
        info = await origin.stat(url)
        view = memoryview(bytearray(1024 * 1024))
        await origin.read_into(url, 7, view[:1000], info.version, size=len(body))
        assert bytes(view[:1000]) == body[7:1007]
        assert len(calls) == 1  # the bucket's first GET, whose URL the lean ones take
        await origin.read_into(url, len(body) - len(view), view, info.version)
        assert bytes(view) == body[-len(view) :]
        with pytest.raises(VersionMismatch):
            await origin.read_into(url, 0, view[:10], info.version, size=len(body) - 1)
        with pytest.raises(NotFound):
            await origin.read_into(f"s3://{bucket}/none.bin", 0, view[:10], info.version)
        client.put_object(Bucket=bucket, Key="dir/a b+c.bin", Body=body[::-1])
        with pytest.raises(VersionMismatch):  # If-Match: 412
            await origin.read_into(url, 0, view[:10], info.version)
        assert len(calls) == 1
        # A client's miss (bytes sent back) still goes through get_object.
        assert await origin.read(url, 0, 10, (await origin.stat(url)).version) == body[::-1][:10]
        assert len(calls) == 2
    finally:
        origin.close()


async def test_s3_block_get_refused_by_the_origin_is_retried_through_get_object(
    s3, bucket, s3_endpoint, monkeypatch
):
    """A 503 to the lean GET: the request is made again by ``get_object``, whose standard
    retries back off through the next 503 too; a lasting one is botocore's error."""
    body = os.urandom(100_000)
    s3.put_object(Bucket=bucket, Key="k", Body=body)
    etag = s3.head_object(Bucket=bucket, Key="k")["ETag"].strip('"')
    proxy = S3Proxy(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", await proxy.start())
    origin = S3Origin(max_inflight=2, retries=3)
    calls = _count_get_object(origin)
    url = f"s3://{bucket}/k"
    try:
        view = memoryview(bytearray(len(body)))
        await origin.read_into(url, 0, view[:10], etag)  # get_object's
        await origin.read_into(url, 10, view[10:20], etag)  # lean
        assert bytes(view[:20]) == body[:20]
        assert len(calls) == 1 and proxy.gets == 2
        proxy.fail_gets = proxy.failures + 2  # the lean GET's and get_object's first
        await origin.read_into(url, 0, view, etag, size=len(body))
        assert bytes(view) == body
        assert len(calls) == 3 and proxy.gets == 5
        proxy.fail_gets = -1
        with pytest.raises(OriginError, match="SlowDown"):
            await origin.read_into(url, 0, view[:10], etag)
        # The lean GET, then all of get_object's attempts (1 + max_attempts retries).
        assert len(calls) == 3 + 4 and proxy.gets == 5 + 1 + 4
    finally:
        origin.close()
        await proxy.stop()


@pytest.mark.parametrize(
    ("style", "host"),
    [("path", "localhost:{port}/bkt/"), ("virtual", "bkt.localhost:{port}/")],
)
async def test_s3_block_gets_go_where_the_client_sent_them(monkeypatch, style, host):
    """The lean GET's URL and signing region are the ones the client used for the
    bucket's first GET: its endpoint, addressing style and region."""
    port = free_port()  # nothing listens: the client's GET fails once it is signed
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://localhost:{port}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setattr(
        botocore.config,
        "Config",
        functools.partial(botocore.config.Config, s3={"addressing_style": style}),
    )
    origin = S3Origin(max_inflight=1, retries=0, connect_timeout=1)
    try:
        assert origin._lean.base("bkt") is None
        with pytest.raises(OriginError, match="unreachable"):
            await origin.read_into("s3://bkt/k", 0, memoryview(bytearray(10)), "v1")
        assert origin._lean.base("bkt") == (f"http://{host.format(port=port)}", "eu-west-3")
    finally:
        origin.close()


async def test_s3_origin_retries_as_the_users_aws_settings_say(
    s3_endpoint, s3, bucket, monkeypatch, tmp_path
):
    """``AWS_MAX_ATTEMPTS`` counts every attempt, as in every AWS tool; without it the
    origin makes 6. A bad setting is one clear error, not a traceback at the first call."""
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    default = S3Origin(max_inflight=1)
    assert default._client.meta.config.retries == {"mode": "standard", "total_max_attempts": 6}
    default.close()
    (tmp_path / "k").write_bytes(b"x")
    proxy = S3Proxy(s3_endpoint, fail_writes=-1)  # every PUT: 503 SlowDown
    monkeypatch.setenv("AWS_ENDPOINT_URL", await proxy.start())
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    origin = S3Origin(max_inflight=1)
    try:
        with pytest.raises(OriginError):
            await origin.write(f"s3://{bucket}/k", tmp_path / "k")
        assert proxy.write_failures == 2
    finally:
        origin.close()
        await proxy.stop()
    for name, value in (("AWS_MAX_ATTEMPTS", "many"), ("AWS_RETRY_MODE", "eager")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=name.removeprefix("AWS_").lower()):
            S3Origin()
        monkeypatch.delenv(name)


async def test_s3_read_into_then_writes_on_the_receiving_thread_only_after_a_good_read(
    s3_server,
):
    """``then`` runs once the buffer holds the range, on the thread that received it (no
    hop back to the loop), and never when the read is refused."""
    client, bucket = s3_server
    body = os.urandom(2 * 1024 * 1024 + 5)
    client.put_object(Bucket=bucket, Key="t.bin", Body=body)
    origin = S3Origin(max_inflight=4)
    try:
        url = f"s3://{bucket}/t.bin"
        info = await origin.stat(url)
        view = memoryview(mmap.mmap(-1, 1024 * 1024, flags=mmap.MAP_PRIVATE))
        calls: list[tuple[int, bytes]] = []

        def then() -> str:
            calls.append((threading.get_ident(), bytes(view)))
            return "written"

        got = await origin.read_into_then(url, 1000, view, info.version, then, size=len(body))
        assert got == "written"
        [(thread, seen)] = calls
        assert seen == body[1000 : 1000 + len(view)]
        assert thread != threading.get_ident()
        with pytest.raises(VersionMismatch):
            await origin.read_into_then(url, 0, view, info.version, then, size=len(body) + 1)
        with pytest.raises(NotFound):
            await origin.read_into_then(f"s3://{bucket}/no.bin", 0, view, info.version, then)
        assert len(calls) == 1
    finally:
        origin.close()


async def test_s3_lean_gets_keep_their_connection_and_replace_one_the_server_closed(
    seaweed, monkeypatch
):
    """Against SeaweedFS, which keeps connections alive (moto closes each one)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "seaweed")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "seaweed")
    client, bucket = seaweed.client(), f"keep-{os.getpid()}-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    body = os.urandom(300_000)
    client.put_object(Bucket=bucket, Key="c.bin", Body=body)
    made = []
    connect = Connections._connect

    def counted(self, *args):  # type: ignore[no-untyped-def]
        made.append(args)
        return connect(self, *args)

    monkeypatch.setattr(Connections, "_connect", counted)
    origin = S3Origin(max_inflight=4)
    try:
        url = f"s3://{bucket}/c.bin"
        info = await origin.stat(url)
        view = memoryview(bytearray(1000))
        for offset in range(0, 10_000, 1000):
            await origin.read_into(url, offset, view, info.version, size=len(body))
            assert bytes(view) == body[offset : offset + 1000]
        assert len(made) == 1  # the first GET is get_object's; the lean ones share one
        # The server drops the idle connection: the next GET makes a new one.
        [[idle]] = origin._lean._conns._idle.values()
        assert idle.sock is not None
        idle.sock.shutdown(socket.SHUT_RDWR)
        await origin.read_into(url, 5, view, info.version, size=len(body))
        assert bytes(view) == body[5:1005] and len(made) == 2
    finally:
        origin.close()


async def test_s3_lean_get_never_bypasses_a_proxy_the_environment_sets(s3_server, monkeypatch):
    """With HTTP(S)_PROXY set for the endpoint, every GET goes where botocore sends it:
    through the proxy (here one that does not answer), never straight to the server."""
    client, bucket = s3_server
    client.put_object(Bucket=bucket, Key="p.bin", Body=b"x" * 5000)
    origin = S3Origin(max_inflight=2, retries=0)
    try:
        url = f"s3://{bucket}/p.bin"
        info = await origin.stat(url)
        view = memoryview(bytearray(100))
        await origin.read_into(url, 0, view, info.version)  # learns the bucket's URL
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        proxied = S3Origin(max_inflight=2, retries=0)
        try:
            proxied._lean._bases.update(origin._lean._bases)
            with pytest.raises(OriginError):
                await proxied.read_into(url, 100, view, info.version)
        finally:
            proxied.close()
    finally:
        origin.close()
