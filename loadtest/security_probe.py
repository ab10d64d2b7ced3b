#!/usr/bin/env python3
"""Security probe: every attack class of shared/DESIGN.md "Security" against a live cluster.

What it starts, all on 127.0.0.1: moto_server (the S3 origin), one etcd and three
``cachenode`` processes with ``--token-file SECRET`` and ``--file-root ROOT``, plus, for
the etcd-trust attack, an aiohttp server of its own that a forged node record points at;
and for the TLS phase, a second cluster (same etcd, another cluster name) of two
``cachenode`` processes with ``--tls-cert/--tls-key/--ca`` (a throwaway CA and node
certificates) and two more rogue servers, one plain HTTP and one TLS with a self-signed
certificate of its own. Tokens come from the real CLI (``cachectl --token-file SECRET
token create``).

While the attacks run, a legitimate ``CacheClient`` (its own read token, no memory tier,
a background task in this process) keeps reading one S3 object, whole and in random
ranges, and compares every byte with what was put into the origin; its reads, failures
and wrong bytes are reported per attack phase.

The attacks (each row: what the product promises, what was observed, pass or fail):

1. fills: a read-only token's PUT (403), a body that is not the signed digest (400/401),
   a made-up version (409), a captured PUT replayed with another body (refused), and
   afterwards the blocks are the origin's; 20 PUTs that send all but one byte of their
   body (at most 16 held, the rest 503 at once, node RSS grows < 200 MiB);
2. scopes: path-segment scopes, bucket-name prefixes, ``..`` in file and S3 URLs, and a
   symlink inside the file root flipped between a file inside and one outside it;
3. geometry: a miss asked for with ``size=1``, and a block size that is not the cluster's
   (400, no origin bytes);
4. etcd trust: a forged node record pointing at a server that answers junk; real nodes
   must never serve the junk, and the signed requests it collects must not replay. The
   legitimate reader (plain HTTP, no CA) does read the junk while the record is there:
   that is the documented limitation of a cluster without TLS (docs/security.md, "Someone
   who can write the cluster's etcd prefix"), reported in a row of its own with the
   status "limitation", and left out of the reader's total;
5. HTTP edges: 600 partial request heads, garbage and bare-LF heads, non-ASCII digits,
   ``Range: bytes=-0``, a directory as a ``file://`` source, a presence query by id with a
   scoped token, and ``/metrics`` without, with the wrong and with the right token;
6. TLS: the same forgery against the TLS cluster (a plain-HTTP record and an HTTPS record
   whose certificate does not chain to the cluster CA, weight 1000 each) while a client
   given ``ca_file=`` the CA reads an object and checks every byte: no wrong byte, and no
   request reaches either rogue server.

    .venv/bin/python -m loadtest.security_probe          # ~1 minute

Results: ``loadtest/results/security.md`` and ``security.json``; the exit status is 1 if
any row failed (a "limitation" row does not fail it). Everything it starts is stopped on
exit, error or Ctrl-C, and the temp dir is removed (``--keep`` leaves it, with the nodes'
logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import boto3
import msgpack
import numpy as np
from aiohttp import web
from yarl import URL

from cachenode.fasthits import HEAD_TIMEOUT
from clientlib import CacheClient
from clientlib.auth import DIGEST_HEADER, Credentials, body_digest
from clientlib.blocks import DEFAULT_BLOCK_SIZE as BS
from clientlib.blocks import BlockRef
from clientlib.cluster import node_key
from clientlib.etcd import connect
from clientlib.launcher import (
    Node,
    Process,
    free_port,
    http_ok,
    start_etcd,
    start_node,
    wait_until,
)
from clientlib.tls import client_context, server_context
from loadtest import harness
from testkit import issue_cert, make_ca, metric_sum

CLUSTER = "secprobe"
#: The second cluster, with TLS on its nodes and the CA given to its client.
TLS_CLUSTER = "secprobe-tls"
TLS_NODES = 2
#: Seconds the TLS client reads while the forged records are in etcd.
TLS_READ_SECONDS = 8.0
#: The legitimate reader's phase while the forged plain-HTTP record is in etcd.
FORGED_PHASE = "4 etcd trust, forged http record in etcd"
LIMITATION_EXPECTED = (
    "reads the forged node's bytes: plain HTTP trusts etcd; deploy TLS + etcd auth "
    "(docs/security.md)"
)
BUCKET = "secb"
MiB = 1024 * 1024
#: Bodies a node holds at once (cachenode.bodies.MAX_BODIES, as the brief states it).
MAX_HELD_BODIES = 16
SLOW_PUTS = 20
PARTIAL_HEADS = 600
RSS_GROWTH_LIMIT_MIB = 200


# ----------------------------------------------------------------------------- plumbing


@dataclass
class Answer:
    """One HTTP exchange as the attacker saw it."""

    status: int | None  # None: the connection ended before a status line
    body: bytes = b""
    error: str = ""  # e.g. "aborted after headers"
    headers: dict[str, str] = field(default_factory=dict)

    def show(self) -> str:
        text = "no answer" if self.status is None else str(self.status)
        if self.error:
            text += f" ({self.error})"
        return text


#: Row statuses: "limitation" is a documented limitation of the deployment the row
#: names (docs/security.md), observed as documented; it does not fail the exit status.
PASS, FAIL, LIMITATION = "pass", "fail", "limitation"


@dataclass
class Row:
    group: str
    attack: str
    expected: str
    observed: str
    status: str


def rss_mib(pid: int) -> float:
    """A process's resident memory (``VmRSS`` in ``/proc/<pid>/status``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def self_signed_cert(where: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: chains to no CA but itself."""
    where.mkdir(parents=True, exist_ok=True)
    key, pem = where / "key.pem", where / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=ringcache-rogue", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(pem)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return pem, key


def host_port(node: Node) -> tuple[str, int]:
    host, port = node.addr.rsplit(":", 1)
    return host, int(port)


def make_token(secret: Path, path: Path, *create: str) -> Path:
    """A token file made by the real ``cachectl token create``."""
    token = subprocess.run(
        [harness.CACHECTL, "--token-file", str(secret), "token", "create", *create],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout.decode()
    path.write_text(token.strip() + "\n")
    return path


def source_query(ref: BlockRef, **override: object) -> str:
    """The source parameters of ``ref`` as a client sends them, some replaced."""
    params: dict[str, object] = {
        "src": ref.url,
        "ver": ref.version,
        "size": ref.size,
        "bs": ref.block_size,
        "i": ref.index,
    }
    params.update(override)
    return urlencode(params)


def s3_ref(key: str, version: str, size: int, index: int, bucket: str = BUCKET) -> BlockRef:
    return BlockRef(f"s3://{bucket}/{key}", f"s3://{bucket}", key, version, size, BS, index)


def file_ref(path: str, version: str, size: int, index: int = 0) -> BlockRef:
    return BlockRef(f"file://{path}", "file://", path, version, size, BS, index)


class Http:
    """Signed requests of an attacker (or of a well-behaved caller) to one node."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(
        self,
        node: Node,
        method: str,
        path_qs: str,
        creds: Credentials | None = None,
        *,
        body: bytes | None = None,
        digest: str | None = None,
        headers: dict[str, str] | None = None,
        signed_digest: str | None = None,
    ) -> Answer:
        """``method path_qs`` at ``node``, signed with ``creds`` (if any) for that node.

        ``digest``: the PUT's declared body digest (:data:`DIGEST_HEADER`); POST bodies
        are signed with their own digest; ``signed_digest`` overrides what is signed.
        """
        out = dict(headers or {})
        if digest is not None:
            out[DIGEST_HEADER] = digest
        if creds is not None:
            sign = signed_digest
            if sign is None:
                sign = digest if digest is not None else body_digest(body or b"")
            out.update(creds.headers(method, path_qs, sign, node=node.node_id))
        url = URL(node.url + path_qs, encoded=True)
        try:
            async with self.session.request(method, url, data=body, headers=out) as resp:
                status, got = resp.status, dict(resp.headers)
                try:
                    return Answer(status, await resp.read(), headers=got)
                except aiohttp.ClientPayloadError:
                    return Answer(status, b"", "aborted after headers", got)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            return Answer(None, error=type(exc).__name__)
        except TimeoutError:
            return Answer(None, error="timeout")


async def raw_exchange(node: Node, data: bytes, wait: float = 5.0) -> tuple[bytes, bool]:
    """Send raw bytes on a fresh connection; what came back and whether the node closed."""
    reader, writer = await asyncio.open_connection(*host_port(node))
    got, closed = b"", False
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                got += chunk
            closed = True
    except TimeoutError:
        pass
    except ConnectionError:
        closed = True
    finally:
        writer.close()
    return got, closed


# ----------------------------------------------------------------------------- the reader


@dataclass
class Tally:
    reads: int = 0
    failures: int = 0
    wrong_reads: int = 0
    wrong_bytes: int = 0
    #: Wrong bytes that are the rogue server's junk (``J``): where they came from.
    junk_bytes: int = 0


class LegitReader:
    """A well-behaved client that reads one object all along and checks every byte."""

    def __init__(self, client: CacheClient, url: str, expected: bytes) -> None:
        self.client = client
        self.url = url
        self.expected = expected
        self.phase = "start"
        self.tallies: dict[str, Tally] = {}
        self.errors: list[str] = []

    def tally(self) -> Tally:
        return self.tallies.setdefault(self.phase, Tally())

    async def run(self, stop: asyncio.Event) -> None:
        rng = random.Random(7)
        size = len(self.expected)
        while not stop.is_set():
            if rng.random() < 0.5:
                offset, length = 0, size
            else:
                offset = rng.randrange(size)
                length = rng.randint(1, min(3 * MiB, size - offset))
            tally = self.tally()
            try:
                data = await asyncio.wait_for(self.client.read(self.url, offset, length), 30)
            except Exception as exc:  # a failed read is a result here, whatever it was
                tally.failures += 1
                if len(self.errors) < 10:
                    self.errors.append(f"{self.phase}: {exc!r}"[:300])
            else:
                tally.reads += 1
                want = self.expected[offset : offset + length]
                if data != want:
                    tally.wrong_reads += 1
                    same = min(len(data), len(want))
                    a = np.frombuffer(bytes(data[:same]), np.uint8)
                    b = np.frombuffer(want[:same], np.uint8)
                    tally.wrong_bytes += int((a != b).sum()) + abs(len(data) - len(want))
                    tally.junk_bytes += int(((a != b) & (a == ord("J"))).sum())
            await asyncio.sleep(0.01)

    def total(self, skip: str | None = None) -> Tally:
        """The tallies of every phase but ``skip``, summed."""
        out = Tally()
        for phase, t in self.tallies.items():
            if phase == skip:
                continue
            out.reads += t.reads
            out.failures += t.failures
            out.wrong_reads += t.wrong_reads
            out.wrong_bytes += t.wrong_bytes
            out.junk_bytes += t.junk_bytes
        return out


class BlockFailures(logging.Handler):
    """Counts the client's "node X failed block" warnings by node and kind of error."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[tuple[str, str]] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith("node %s failed block") or not record.args:
            return
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        node, exc = str(args[0]), args[-1]
        reason = re.search(r"\[SSL: ([A-Z_]+)\]", repr(exc))
        kind = type(exc).__name__ + (f" {reason.group(1)}" if reason else "")
        self.counts[(node, kind)] += 1


# ----------------------------------------------------------------------------- the rogue


class Rogue:
    """A server a forged etcd record points at: junk for every block, and it keeps the
    signed requests it is sent (to replay them at real nodes).

    ``ssl_context``: serve HTTPS (the record says ``"scheme": "https"``). ``count_connections``:
    a TCP front on :attr:`port` counts the connections made to it (a refused TLS handshake
    is a connection but no request) and forwards them to the server behind it.
    """

    def __init__(
        self,
        node_id: str = "rogue",
        ssl_context: ssl.SSLContext | None = None,
        count_connections: bool = False,
    ) -> None:
        self.node_id = node_id
        self.ssl_context = ssl_context
        self.seen: list[tuple[str, str, str]] = []  # (method, path?query, Authorization)
        self.requests = 0  # every HTTP request, signed or not
        self.connections = 0  # TCP connections (with count_connections only)
        self.port = free_port()
        self._inner = free_port() if count_connections else self.port
        self._front: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._runner: web.AppRunner | None = None

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._inner)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.requests += 1
            auth = request.headers.get("Authorization")
            if auth:
                self.seen.append((request.method, request.raw_path, auth))
            if not request.path.startswith("/v1/blocks/"):
                return web.json_response({"id": self.node_id, "status": "ok", "state": "active"})
            query = request.query
            length = BS
            with contextlib.suppress(KeyError, ValueError):
                size, bs, index = int(query["size"]), int(query["bs"]), int(query["i"])
                length = max(0, min(bs, size - index * bs))
            return web.Response(
                body=b"J" * length,
                content_type="application/octet-stream",
                headers={"X-Ringcache-Result": "hit"},
            )

        app = web.Application(client_max_size=64 * MiB)
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(
            self._runner, "127.0.0.1", self._inner, ssl_context=self.ssl_context
        ).start()
        if self._inner != self.port:
            self._front = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._front is not None:
            self._front.close()
        for writer in self._writers:
            with contextlib.suppress(Exception):
                writer.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def record(self) -> bytes:
        doc = {
            "id": self.node_id,
            "addr": f"127.0.0.1:{self.port}",
            "weight": 1000,
            "capacity_bytes": 1099511627776,
            "state": "active",
            "started_at": 0,
            "scheme": "https" if self.ssl_context is not None else "http",
        }
        return json.dumps(doc).encode()


# ----------------------------------------------------------------------------- the probe


class Probe:
    """The attacks, in order; each adds rows to :attr:`rows`."""

    def __init__(
        self,
        http: Http,
        nodes: list[Node],
        etcd_url: str,
        tokens: dict[str, Path],
        objects: dict[str, tuple[bytes, str]],
        root: Path,
        file_root: Path,
        operator: CacheClient,
        reader: LegitReader,
        tls_nodes: list[Node],
        ca_file: Path,
    ) -> None:
        self.http = http
        self.nodes = nodes
        self.tls_nodes = tls_nodes
        self.ca_file = ca_file
        self.etcd_url = etcd_url
        self.tokens = tokens
        self.creds = {name: Credentials.from_file(path) for name, path in tokens.items()}
        self.objects = objects
        self.root = root
        self.file_root = file_root
        self.operator = operator
        self.reader = reader
        self.rows: list[Row] = []
        self.facts: dict[str, Any] = {}

    def add(
        self,
        group: str,
        attack: str,
        expected: str,
        observed: str,
        passed: bool,
        *,
        status: str | None = None,
    ) -> None:
        """A row: pass or fail by ``passed``, unless ``status`` (a limitation) says."""
        status = status or (PASS if passed else FAIL)
        self.rows.append(Row(group, attack, expected, observed, status))
        print(f"[{status.upper()}] {group}: {attack}: {observed}", flush=True)

    async def guarded(self, group: str, attack: str, expected: str, step: Awaitable[None]) -> None:
        """Run one attack; a probe error is a failed row, not the end of the run."""
        self.reader.phase = group
        try:
            await asyncio.wait_for(step, 60)
        except Exception as exc:
            self.add(group, attack, expected, f"probe error: {exc!r}"[:300], False)

    def ref(self, name: str, index: int, **kw: Any) -> BlockRef:
        body, etag = self.objects[name]
        return s3_ref(name, kw.get("version", etag), kw.get("size", len(body)), index)

    def block_bytes(self, name: str, index: int) -> bytes:
        return self.objects[name][0][index * BS : (index + 1) * BS]

    async def get_block(
        self, node: Node, ref: BlockRef, creds: Credentials, **override: object
    ) -> Answer:
        path = f"/v1/blocks/{ref.id}?{source_query(ref, **override)}"
        return await self.http.call(node, "GET", path, creds)

    async def metric(self, node: Node, name: str, http: Http | None = None) -> float:
        bearer = self.tokens["metrics"].read_text().strip()
        answer = await (http or self.http).call(
            node, "GET", "/metrics", headers={"Authorization": f"Bearer {bearer}"}
        )
        if answer.status != 200:
            raise RuntimeError(f"/metrics with the metrics token: {answer.show()}")
        return metric_sum(answer.body.decode(), name)

    # --------------------------------------------------------------------- 1. fills

    async def fills(self) -> None:
        group, name = "1 fills", "fill/target.bin"
        node = self.nodes[0]
        ro, rw = self.creds["fill_ro"], self.creds["fill_rw"]
        junk_a, junk_b = b"A" * BS, b"B" * BS
        ref0 = self.ref(name, 0)

        async def put(
            ref: BlockRef, creds: Credentials, body: bytes, digest: str, target: Node = node
        ) -> Answer:
            path = f"/v1/blocks/{ref.id}?{source_query(ref)}"
            return await self.http.call(target, "PUT", path, creds, body=body, digest=digest)

        answer = await put(ref0, ro, junk_a, body_digest(junk_a))
        self.add(group, "read-only token PUTs its own bytes (real ETag)", "403",
                 answer.show(), answer.status == 403)  # fmt: skip
        answer = await put(ref0, rw, junk_b, body_digest(junk_a))
        self.add(group, "write token, body not the signed digest", "400 (or 401)",
                 answer.show(), answer.status in (400, 401))  # fmt: skip
        made_up = self.ref(name, 0, version="0123456789abcdef0123456789abcdef")
        answer = await put(made_up, rw, junk_a, body_digest(junk_a))
        self.add(group, "write token, made-up `ver`", "409", answer.show(), answer.status == 409)

        # A genuine fill of block 1 (the origin's bytes), captured and replayed.
        ref1 = self.ref(name, 1)
        real = self.block_bytes(name, 1)
        path1 = f"/v1/blocks/{ref1.id}?{source_query(ref1)}"
        captured = {DIGEST_HEADER: body_digest(real)}
        captured.update(rw.headers("PUT", path1, body_digest(real), node=node.node_id))
        genuine = await self.http.call(node, "PUT", path1, body=real, headers=captured)
        replay = await self.http.call(node, "PUT", path1, body=junk_a, headers=captured)
        redigested = {**captured, DIGEST_HEADER: body_digest(junk_a)}
        replay2 = await self.http.call(node, "PUT", path1, body=junk_a, headers=redigested)
        elsewhere = await self.http.call(self.nodes[1], "PUT", path1, body=real, headers=captured)
        self.add(
            group,
            "captured PUT replayed: other body / other body + its digest / at another node",
            "refused (400/401), refused (401), refused (401)",
            f"genuine {genuine.show()}; replays {replay.show()}, {replay2.show()}, "
            f"{elsewhere.show()}",
            replay.status in (400, 401) and replay2.status == 401 and elsewhere.status == 401,
        )

        reads = []
        for index in (0, 1):
            answer = await self.get_block(node, self.ref(name, index), ro)
            reads.append(answer.status == 200 and answer.body == self.block_bytes(name, index))
        self.add(group, "after those, a legit read of blocks 0 and 1", "the origin's bytes",
                 f"{sum(reads)}/2 blocks are the origin's", all(reads))  # fmt: skip

        await self.slow_bodies(group, node, ref0, rw)

    async def slow_bodies(self, group: str, node: Node, ref: BlockRef, creds: Credentials) -> None:
        """SLOW_PUTS PUTs with a write token on the real version, each sending all but
        the last byte of its body."""
        path = f"/v1/blocks/{ref.id}?{source_query(ref)}"
        body = self.block_bytes(ref.key, ref.index)
        digest = body_digest(body)
        host, port = host_port(node)
        rss_before = rss_mib(node.pid)
        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

        async def open_one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection(host, port)
            headers = creds.headers("PUT", path, digest, node=node.node_id)
            head = (
                f"PUT {path} HTTP/1.1\r\nHost: {node.addr}\r\n"
                f"Authorization: {headers['Authorization']}\r\n{DIGEST_HEADER}: {digest}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body[:-1])
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(writer.drain(), 5)
            return reader, writer

        async def answer_of(reader: asyncio.StreamReader) -> str | None:
            with contextlib.suppress(TimeoutError, ConnectionError):
                line = await asyncio.wait_for(reader.readline(), 3)
                return line.decode(errors="replace").strip() or "closed"
            return None

        try:
            conns = list(await asyncio.gather(*(open_one() for _ in range(SLOW_PUTS))))
            started = time.monotonic()
            answers_task = asyncio.gather(*(answer_of(r) for r, _ in conns))
            peak = rss_before
            while not answers_task.done():
                peak = max(peak, rss_mib(node.pid))
                await asyncio.sleep(0.1)
            answers = answers_task.result()
            waited = time.monotonic() - started
            peak = max(peak, rss_mib(node.pid))
        finally:
            for _, writer in conns:
                writer.close()
        held = sum(a is None for a in answers)
        refused = sum(a is not None and " 503 " in f"{a} " for a in answers)
        other = Counter(a for a in answers if a is not None and " 503 " not in f"{a} ")
        growth = peak - rss_before
        self.facts["slow_puts"] = {
            "held": held,
            "refused_503": refused,
            "other": dict(other),
            "rss_before_mib": round(rss_before, 1),
            "rss_peak_mib": round(peak, 1),
            "watched_s": round(waited, 1),
        }
        self.add(
            group,
            f"{SLOW_PUTS} PUTs (write token, real version) sending all but 1 byte of 4 MiB",
            f"<= {MAX_HELD_BODIES} held, the rest 503 at once; RSS growth "
            f"< {RSS_GROWTH_LIMIT_MIB} MiB",
            f"{held} held, {refused} got 503 within 3 s"
            + (f", other: {dict(other)}" if other else "")
            + f"; RSS {rss_before:.0f} -> peak {peak:.0f} MiB (+{growth:.0f})",
            held <= MAX_HELD_BODIES
            and held + refused == SLOW_PUTS
            and growth < RSS_GROWTH_LIMIT_MIB,
        )

    # --------------------------------------------------------------------- 2. scopes

    async def scopes(self) -> None:
        group = "2 scopes"
        node = self.nodes[1]
        team, bucket = self.creds["team"], self.creds["bucket"]
        inside = await self.get_block(node, self.ref("team/x", 0), team)
        outside = await self.get_block(node, self.ref("team-other/x", 0), team)
        self.add(group, f"token `s3://{BUCKET}/team` reads `s3://{BUCKET}/team-other/x`",
                 "403 (team/x itself: 200)", f"{outside.show()} (team/x: {inside.show()})",
                 outside.status == 403 and inside.status == 200)  # fmt: skip

        body, etag = self.objects["other-bucket:x"]
        other = s3_ref("x", etag, len(body), 0, bucket=f"{BUCKET}-other")
        own = await self.get_block(node, self.ref("team-other/x", 0), bucket)
        outside = await self.get_block(node, other, bucket)
        self.add(group, f"token `s3://{BUCKET}` reads `s3://{BUCKET}-other/x`",
                 f"403 ({BUCKET}/team-other/x: 200)",
                 f"{outside.show()} ({BUCKET}/team-other/x: {own.show()})",
                 outside.status == 403 and own.status == 200)  # fmt: skip

        pub = self.creds["pub"]
        secret_path = self.file_root / "private" / "k.txt"
        st = secret_path.stat()
        ref = file_ref(str(secret_path), f"{st.st_size}-{st.st_mtime_ns}", st.st_size)
        dotted = f"file://{self.file_root}/pub/../private/k.txt"
        answer = await self.get_block(node, ref, pub, src=dotted)
        ok_path = self.file_root / "pub" / "ok.txt"
        st = ok_path.stat()
        control = await self.get_block(
            node, file_ref(str(ok_path), f"{st.st_size}-{st.st_mtime_ns}", st.st_size), pub
        )
        self.add(group, "token `file://ROOT/pub/` reads `file://ROOT/pub/../private/k.txt`",
                 "403 (pub/ok.txt: 200)", f"{answer.show()} (pub/ok.txt: {control.show()})",
                 answer.status == 403 and control.status == 200)  # fmt: skip

        # The id is hashed from the dotted key itself, so only the '..' can be refused.
        body, etag = self.objects["team-other/x"]
        dotted_key = "team/../team-other/x"
        ref = s3_ref(dotted_key, etag, len(body), 0)
        answer = await self.get_block(node, ref, team)
        self.add(group, f"S3 key with a `..` segment (`s3://{BUCKET}/{dotted_key}`)", "400",
                 f"{answer.show()} {answer.body[:90]!r}", answer.status == 400)  # fmt: skip

        await self.symlink_flip(group, node)

    async def symlink_flip(self, group: str, node: Node) -> None:
        """A symlink in ROOT flipped between a file inside and one outside, read (and
        evicted, so each read is a miss) all the while."""
        inside = self.file_root / "pub" / "inside.bin"
        outside = self.root / "outside" / "secret.bin"
        link = self.file_root / "pub" / "link.bin"
        st = inside.stat()
        version = f"{st.st_size}-{st.st_mtime_ns}"
        inside_bytes, outside_bytes = inside.read_bytes(), outside.read_bytes()
        ref = file_ref(str(link), version, st.st_size)
        stop = threading.Event()
        flips = 0

        def flip() -> None:
            nonlocal flips
            spare = link.with_name("link.tmp")
            while not stop.is_set():
                for target in (inside, outside):
                    with contextlib.suppress(FileNotFoundError):
                        spare.unlink()
                    spare.symlink_to(target)
                    spare.replace(link)
                    flips += 1

        statuses: Counter[str] = Counter()
        leaked = served_inside = 0
        evict = msgpack.packb({"ids": [ref.id]})
        flipper = threading.Thread(target=flip, daemon=True)
        flipper.start()
        try:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                answer = await self.get_block(node, ref, self.creds["pub"])
                statuses[answer.show()] += 1
                if outside_bytes[:64] in answer.body:
                    leaked += 1
                elif answer.status == 200 and answer.body == inside_bytes:
                    served_inside += 1
                await self.http.call(
                    node, "POST", "/v1/blocks/evict", self.creds["operator"], body=evict,
                    headers={"Content-Type": "application/msgpack"},
                )  # fmt: skip
        finally:
            stop.set()
            flipper.join(5)
        bad = sum(n for s, n in statuses.items() if s.startswith(("5", "no answer")))
        self.add(
            group,
            "symlink in ROOT flipped inside/outside ROOT while read (each read a miss)",
            "never the outside file's bytes (4xx/404, or the inside bytes)",
            f"{sum(statuses.values())} reads over {flips} flips: {dict(statuses)}; "
            f"outside bytes {leaked}, inside bytes {served_inside}",
            leaked == 0 and bad == 0,
        )

    # --------------------------------------------------------------------- 3. geometry

    async def geometry(self) -> None:
        group, name = "3 geometry", "geo/obj.bin"
        node = self.nodes[2]
        geo = self.creds["geo"]
        ref0 = self.ref(name, 0)
        small = await self.get_block(node, ref0, geo, size=1)
        one_byte = small.status == 200 and len(small.body) == 1 and not small.error
        whole = await self.get_block(node, ref0, geo)
        intact = whole.status == 200 and whole.body == self.block_bytes(name, 0)
        self.add(group, "GET of an uncached block with `size=1`, then the real GET",
                 "not served as a 1-byte block; then the whole 4 MiB block",
                 f"size=1: {small.show()}, {len(small.body)} bytes; then {whole.show()}, "
                 f"{len(whole.body)} bytes, origin's: {intact}",
                 not one_byte and intact)  # fmt: skip

        big = 4 * BS
        ref1 = BlockRef(ref0.url, ref0.origin, ref0.key, ref0.version, ref0.size, big, 0)
        before = await self.metric(node, "ringcache_origin_bytes_total")
        answer = await self.get_block(node, ref1, geo)
        await asyncio.sleep(0.5)
        after = await self.metric(node, "ringcache_origin_bytes_total")
        self.add(group, f"`bs={big}` (not the cluster's block size)",
                 "400, node's origin bytes unchanged",
                 f"{answer.show()}; ringcache_origin_bytes_total {before:.0f} -> {after:.0f}",
                 answer.status == 400 and after == before)  # fmt: skip

    # --------------------------------------------------------------------- 4. etcd trust

    async def etcd_trust(self) -> None:
        group, name = "4 etcd trust", "rogue/obj.bin"
        rogue = Rogue()
        await rogue.start()
        key = node_key(CLUSTER, "rogue")
        try:
            async with connect(self.etcd_url, timeout=10) as etcd:
                # From the put until every ring has dropped the record again.
                self.reader.phase = FORGED_PHASE
                await etcd.put(key, rogue.record())
                try:
                    await self._with_rogue(group, name, rogue)
                finally:
                    await etcd.delete(key)
            deadline = time.monotonic() + 15
            while "rogue" in self.operator.ring.nodes and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # the nodes' own ring watchers too
        finally:
            self.reader.phase = group
            await rogue.stop()
        t = self.reader.tallies.get(FORGED_PHASE, Tally())
        self.add(
            group,
            "legitimate reader (plain HTTP client, no CA) while the forged plain-HTTP "
            "record is in etcd",
            LIMITATION_EXPECTED,
            f"{t.wrong_reads} of {t.reads} reads wrong, {t.wrong_bytes} wrong bytes "
            f"({t.junk_bytes} of them the rogue's junk), {t.failures} failures",
            False,
            status=LIMITATION,
        )

    async def _with_rogue(self, group: str, name: str, rogue: Rogue) -> None:
        deadline = time.monotonic() + 15
        while "rogue" not in self.operator.ring.nodes:
            if time.monotonic() > deadline:
                raise TimeoutError("the forged record never reached a client's ring")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # the nodes' handoff rings follow their own watchers
        blocks = len(self.objects[name][0]) // BS
        outcome: Counter[str] = Counter()
        for index in range(blocks):
            for node in self.nodes:
                answer = await self.get_block(node, self.ref(name, index), self.creds["rogue"])
                if answer.body and set(answer.body[:4096]) == {ord("J")}:
                    outcome["junk"] += 1
                elif answer.status == 200 and answer.body == self.block_bytes(name, index):
                    outcome["origin's bytes"] += 1
                else:
                    outcome[answer.show()] += 1
        lookups = [s for s in rogue.seen if "?" not in s[1]]
        self.facts["rogue"] = {
            "requests_seen": len(rogue.seen),
            "handoff_lookups_seen": len(lookups),
        }
        self.add(
            group,
            "forged node record (weight 1000) -> own server answering junk; "
            f"{blocks} uncached blocks GET from each real node",
            "never the junk (a lookup answer without a valid X-Ringcache-Proof is dropped)",
            f"{dict(outcome)}; the rogue got {len(lookups)} handoff lookups, "
            f"{len(rogue.seen) - len(lookups)} other signed requests",
            outcome["junk"] == 0 and outcome["origin's bytes"] == blocks * len(self.nodes),
        )

        # Replays: node lookups (signed with the cluster secret) and client GETs.
        picked = lookups[:10] + [s for s in rogue.seen if "?" in s[1]][:10]
        statuses: Counter[int | None] = Counter()
        for method, path, auth in picked:
            for node in self.nodes:
                answer = await self.http.call(node, method, path, headers={"Authorization": auth})
                statuses[answer.status] += 1
        self.add(
            group,
            "signed requests the rogue collected, replayed at the 3 real nodes",
            "401",
            f"{len(picked)} requests x 3 nodes: {dict(statuses)}",
            bool(picked) and set(statuses) == {401},
        )

    # --------------------------------------------------------------------- 5. HTTP edges

    async def partial_heads(self) -> None:
        group = "5 HTTP edges"
        node = self.nodes[1]
        host, port = host_port(node)
        ref = self.ref("legit/data.bin", 0)
        want = self.block_bytes("legit/data.bin", 0)
        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

        async def open_one() -> None:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /v1/blocks/")
            conns.append((reader, writer, time.monotonic()))

        async def closed_after(reader: asyncio.StreamReader, sent: float) -> tuple[float, bytes]:
            first = b""
            try:
                while chunk := await reader.read(4096):
                    first = first or chunk
            except ConnectionError:
                pass
            return time.monotonic() - sent, first

        real = Counter[str]()

        async def real_reads(stop: asyncio.Event) -> None:
            while not stop.is_set():
                answer = await self.get_block(node, ref, self.creds["legit"])
                real["ok" if answer.status == 200 and answer.body == want else answer.show()] += 1
                await asyncio.sleep(0.25)

        stop = asyncio.Event()
        reads = asyncio.create_task(real_reads(stop))
        try:
            for start in range(0, PARTIAL_HEADS, 100):
                await asyncio.gather(
                    *(open_one() for _ in range(start, min(PARTIAL_HEADS, start + 100)))
                )
            waits = [closed_after(r, t) for r, _, t in conns]
            try:
                results = await asyncio.wait_for(asyncio.gather(*waits), HEAD_TIMEOUT + 10)
            except TimeoutError:
                results = []
        finally:
            stop.set()
            await reads
            for _, writer, _ in conns:
                writer.close()
        if results:
            times = [t for t, _ in results]
            answered = Counter(f.split(b"\r\n", 1)[0].decode(errors="replace") for _, f in results)
            closed = f"all {len(results)} closed after {min(times):.1f}-{max(times):.1f} s"
            on_time = min(times) >= HEAD_TIMEOUT - 1 and max(times) <= HEAD_TIMEOUT + 5
        else:
            answered, closed, on_time = (
                Counter(),
                f"not all closed within {HEAD_TIMEOUT + 10} s",
                False,
            )
        self.add(
            group,
            f"{PARTIAL_HEADS} partial heads (`GET /v1/blocks/`, no CRLFCRLF) on one node",
            f"closed after the head deadline ({HEAD_TIMEOUT:g} s); real reads keep working",
            f"{len(conns)} opened; {closed}; answers {dict(answered)}; "
            f"real reads meanwhile {dict(real)}",
            on_time and set(real) == {"ok"} and len(conns) == PARTIAL_HEADS,
        )

    async def edges(self) -> None:
        group = "5 HTTP edges"
        node = self.nodes[0]
        for label, data in (
            ("garbage bytes, no head end", bytes(range(256)) * 4),
            ("garbage bytes ending in CRLFCRLF", b"\x16\x03\x01\x02\x00\xff\xfe junk \x00\r\n\r\n"),
            ("bare-LF request", b"GET /v1/stats HTTP/1.1\nHost: 127.0.0.1\n\n"),
        ):
            got, closed = await raw_exchange(node, data)
            line = got.split(b"\r\n", 1)[0].decode(errors="replace")
            self.add(group, label, "a 400 answer, then close",
                     f"{line or 'no answer'}; {'closed' if closed else 'left open'}",
                     re.fullmatch(r"HTTP/1\.[01] 400 .*", line) is not None and closed)  # fmt: skip

        ref = self.ref("legit/data.bin", 0)
        arabic = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
        results = []
        for param in ("size", "bs", "i"):
            real = str({"size": ref.size, "bs": ref.block_size, "i": ref.index}[param])
            for value in (real[:-1] + "²", real.translate(arabic)):
                answer = await self.get_block(node, ref, self.creds["legit"], **{param: value})
                results.append((f"{param}={value}", answer.status))
        self.add(group, "non-ASCII digits (`²`, Arabic-Indic `٣`...) in size/bs/i", "400 each",
                 ", ".join(f"{p}: {s}" for p, s in results),
                 all(s == 400 for _, s in results))  # fmt: skip

        path = f"/v1/blocks/{ref.id}?{source_query(ref)}"
        answer = await self.http.call(
            node, "GET", path, self.creds["legit"], headers={"Range": "bytes=-0"}
        )
        self.add(group, "`Range: bytes=-0` on a cached block", "416",
                 f"{answer.show()}, {len(answer.body)} bytes", answer.status == 416)  # fmt: skip

        folder = self.file_root / "pub" / "adir"
        st = folder.stat()
        dref = file_ref(str(folder), f"{st.st_size}-{st.st_mtime_ns}", st.st_size)
        answer = await self.get_block(node, dref, self.creds["pub"])
        alive = node.alive() and http_ok(node.url + "/healthz")
        self.add(group, "a directory as `file://` source", "4xx, node alive",
                 f"{answer.show()}; node alive: {alive}",
                 answer.status is not None and 400 <= answer.status < 500 and alive)  # fmt: skip

        doc = msgpack.packb({"ids": [ref.id]})
        answer = await self.http.call(
            node, "POST", "/v1/blocks/query", self.creds["legit"], body=doc,
            headers={"Content-Type": "application/msgpack"},
        )  # fmt: skip
        self.add(group, "`POST /v1/blocks/query` `{\"ids\": [...]}` with a scoped token", "403",
                 answer.show(), answer.status == 403)  # fmt: skip

        none = await self.http.call(node, "GET", "/metrics")
        read_bearer = self.tokens["legit"].read_text().strip()
        wrong = await self.http.call(
            node, "GET", "/metrics", headers={"Authorization": f"Bearer {read_bearer}"}
        )
        metrics_bearer = self.tokens["metrics"].read_text().strip()
        right = await self.http.call(
            node, "GET", "/metrics", headers={"Authorization": f"Bearer {metrics_bearer}"}
        )
        self.add(group, "`/metrics`: no auth / read token as bearer / `--metrics` token as bearer",
                 "401 / 403 / 200", f"{none.show()} / {wrong.show()} / {right.show()}",
                 (none.status, wrong.status, right.status) == (401, 403, 200))  # fmt: skip

    # --------------------------------------------------------------------- 6. TLS

    async def tls_trust(self) -> None:
        """Forged records in the TLS cluster's prefix while a client given the CA reads."""
        group, name = "6 TLS", "legit/data.bin"
        own_cert = await asyncio.to_thread(self_signed_cert, self.root / "rogue-tls")
        plain = Rogue("rogue-http", count_connections=True)
        tls = Rogue("rogue-https", server_context(*own_cert), count_connections=True)
        keys = [node_key(TLS_CLUSTER, r.node_id) for r in (plain, tls)]
        client: CacheClient | None = None
        session: aiohttp.ClientSession | None = None
        failures = BlockFailures()
        try:
            for rogue in (plain, tls):
                await rogue.start()
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_context(self.ca_file)),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=30),
            )
            https = Http(session)
            metric = "ringcache_served_bytes_total"
            served_before = [await self.metric(n, metric, https) for n in self.tls_nodes]
            async with connect(self.etcd_url, timeout=10) as etcd:
                for key, rogue in zip(keys, (plain, tls), strict=True):
                    await etcd.put(key, rogue.record())  # the http one first: watch order
                try:
                    client = CacheClient(
                        self.etcd_url,
                        TLS_CLUSTER,
                        memory_cache_bytes=0,
                        token_file=str(self.tokens["legit"]),
                        ca_file=str(self.ca_file),
                    )
                    await client.start()
                    deadline = time.monotonic() + 15
                    want = {n.node_id for n in self.tls_nodes} | {tls.node_id}
                    while not want <= set(client.ring.nodes):
                        if time.monotonic() > deadline:
                            raise TimeoutError(
                                f"the TLS client's ring never held {sorted(want)}: "
                                f"{sorted(client.ring.nodes)}"
                            )
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(0.5)
                    ring = sorted(client.ring.nodes)
                    body = self.objects[name][0]
                    reader = LegitReader(client, f"s3://{BUCKET}/{name}", body)
                    reader.phase = group
                    stop = asyncio.Event()
                    client_log = logging.getLogger("clientlib.client")
                    client_log.addHandler(failures)
                    try:
                        task = asyncio.create_task(reader.run(stop))
                        await asyncio.sleep(TLS_READ_SECONDS)
                        stop.set()
                        await task
                    finally:
                        client_log.removeHandler(failures)
                    ring_after = sorted(client.ring.nodes)
                finally:
                    for key in keys:
                        await etcd.delete(key)
            served_after = [await self.metric(n, metric, https) for n in self.tls_nodes]
        finally:
            if client is not None:
                await client.close()
            if session is not None:
                await session.close()
            for rogue in (plain, tls):
                await rogue.stop()
        t = reader.total()
        served = sum(served_after) - sum(served_before)
        real_ids = {n.node_id for n in self.tls_nodes}
        block_errors: Counter[str] = Counter()
        for (node_id, kind), count in failures.counts.items():
            who = "real TLS nodes" if node_id in real_ids else node_id
            block_errors[f"{who}: {kind}"] += count
        self.facts["tls"] = {
            "cluster": TLS_CLUSTER,
            "client_ring": ring,
            "client_ring_at_end": ring_after,
            "reader": vars(t),
            "reader_errors": reader.errors,
            "rogue_http": {"connections": plain.connections, "requests": plain.requests},
            "rogue_https": {"connections": tls.connections, "requests": tls.requests},
            "tls_nodes_served_bytes": served,
            "client_block_errors": dict(block_errors),
        }
        self.add(
            group,
            f"forged records (weight 1000 each) in the `{TLS_CLUSTER}` prefix: plain http -> "
            "rogue, https -> rogue with a self-signed certificate; a client with "
            f"`ca_file=` the cluster CA reads `s3://{BUCKET}/{name}` for "
            f"{TLS_READ_SECONDS:g} s, checking every byte",
            "0 wrong bytes; the rogue servers get no requests",
            f"{t.reads} reads, {t.failures} failures, {t.wrong_reads} wrong reads, "
            f"{t.wrong_bytes} wrong bytes; client ring {ring} (the http record left out); "
            f"rogue-http: {plain.requests} requests, {plain.connections} connections; "
            f"rogue-https: {tls.requests} requests, {tls.connections} TCP connections "
            f"(none carried a request); the TLS nodes served {served:.0f} bytes; the "
            f"client's failed block attempts (each retried elsewhere): "
            f"{dict(block_errors) or 'none'}",
            t.reads > 0
            and t.wrong_reads == 0
            and t.wrong_bytes == 0
            and plain.requests == 0
            and plain.connections == 0
            and tls.requests == 0
            and plain.node_id not in ring
            and tls.node_id in ring,
        )


# ----------------------------------------------------------------------------- the run


def write_origin(s3: Any, file_root: Path, root: Path) -> dict[str, tuple[bytes, str]]:
    """The S3 objects (body and ETag, by key) and the files under and beside ROOT."""
    rng = random.Random(11)
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket=f"{BUCKET}-other")
    sizes = {
        "legit/data.bin": 2 * BS + 12345,
        "fill/target.bin": 2 * BS,
        "geo/obj.bin": BS + BS // 2,
        "rogue/obj.bin": 3 * BS,
        "team/x": 1000,
        "team-other/x": 1000,
    }
    objects = {}
    for key, size in sizes.items():
        body = rng.randbytes(size)
        etag = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')
        objects[key] = (body, etag)
    body = rng.randbytes(1000)
    etag = s3.put_object(Bucket=f"{BUCKET}-other", Key="x", Body=body)["ETag"].strip('"')
    objects["other-bucket:x"] = (body, etag)

    (file_root / "pub" / "adir").mkdir(parents=True)
    (file_root / "private").mkdir()
    (root / "outside").mkdir()
    (file_root / "pub" / "ok.txt").write_bytes(b"public\n")
    (file_root / "private" / "k.txt").write_bytes(b"the firm's key\n")
    inside = file_root / "pub" / "inside.bin"
    outside = root / "outside" / "secret.bin"
    inside.write_bytes(b"INSIDE--" * 8192)
    outside.write_bytes(b"OUTSIDE!" * 8192)
    # Same size and mtime: the version tag a reader names fits either file.
    mtime = inside.stat().st_mtime_ns
    os.utime(outside, ns=(mtime, mtime))
    return objects


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    procs: list[Process] = []
    stop_reader = asyncio.Event()
    reader_task: asyncio.Task[None] | None = None
    clients: list[CacheClient] = []
    session: aiohttp.ClientSession | None = None
    started = time.monotonic()
    try:
        port = free_port()
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
        procs.append(
            Process("moto", [moto or "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                    root / "moto.log").start()
        )  # fmt: skip
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(endpoint + "/moto-api/"), 30, "moto_server")
        os.environ.update(
            AWS_ACCESS_KEY_ID="probe",
            AWS_SECRET_ACCESS_KEY="probe",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=endpoint,
        )
        file_root = root / "ROOT"
        objects = write_origin(boto3.client("s3"), file_root, root)

        secret = root / "SECRET"
        secret.write_text(secrets.token_hex(32) + "\n")
        secret.chmod(0o600)
        scopes = {
            "legit": ["--scope", f"s3://{BUCKET}/legit", "--tenant", "legit"],
            "fill_ro": ["--scope", f"s3://{BUCKET}/fill", "--tenant", "attacker"],
            "fill_rw": ["--scope", f"s3://{BUCKET}/fill", "--tenant", "attacker", "--write"],
            "team": ["--scope", f"s3://{BUCKET}/team", "--tenant", "team"],
            "bucket": ["--scope", f"s3://{BUCKET}", "--tenant", "bucket"],
            "pub": ["--scope", f"file://{file_root}/pub/", "--tenant", "pub"],
            "geo": ["--scope", f"s3://{BUCKET}/geo", "--tenant", "geo"],
            "rogue": ["--scope", f"s3://{BUCKET}/rogue", "--tenant", "rogue"],
            "metrics": ["--metrics", "--tenant", "prometheus"],
        }
        tokens = {k: make_token(secret, root / f"{k}.token", *v) for k, v in scopes.items()}
        tokens["operator"] = secret

        etcd = start_etcd(root / "etcd")
        procs.append(etcd)
        nodes = []
        for i in range(3):
            extra = ["--token-file", str(secret), "--file-root", str(file_root)]
            nodes.append(start_node(etcd.url, CLUSTER, root / f"node{i}", size="2GiB", extra=extra))
            procs.append(nodes[-1])
        # The TLS cluster: a throwaway CA, one node certificate (127.0.0.1), the CA as --ca.
        ca = make_ca(root / "ca")
        cert, key = issue_cert(ca, root / "ca", "node")
        tls_nodes = []
        for i in range(TLS_NODES):
            extra = ["--token-file", str(secret), "--tls-cert", str(cert), "--tls-key", str(key),
                     "--ca", str(ca[0])]  # fmt: skip
            tls_nodes.append(
                start_node(etcd.url, TLS_CLUSTER, root / f"tls{i}", size="1GiB", extra=extra)
            )
            procs.append(tls_nodes[-1])

        operator = CacheClient(etcd.url, CLUSTER, memory_cache_bytes=0, token_file=str(secret))
        legit = CacheClient(
            etcd.url, CLUSTER, memory_cache_bytes=0, token_file=str(tokens["legit"])
        )
        for client in (operator, legit):
            clients.append(client)
            await client.start()
        await harness.wait_for_ring(clients, 3, "the clients never saw the 3 nodes")
        legit_url = f"s3://{BUCKET}/legit/data.bin"
        reader = LegitReader(legit, legit_url, objects["legit/data.bin"][0])
        assert await legit.read(legit_url) == reader.expected  # warm: the blocks are cached
        reader_task = asyncio.create_task(reader.run(stop_reader))

        session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30)
        )
        probe = Probe(Http(session), nodes, etcd.url, tokens, objects, root, file_root,
                      operator, reader, tls_nodes, ca[0])  # fmt: skip
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("1 fills", probe.fills),
            ("2 scopes", probe.scopes),
            ("3 geometry", probe.geometry),
            ("4 etcd trust", probe.etcd_trust),
            ("5 HTTP edges", probe.partial_heads),
            ("5 HTTP edges", probe.edges),
            ("6 TLS", probe.tls_trust),
        ]
        try:
            async with asyncio.timeout(args.budget):
                for group, step in steps:
                    await probe.guarded(group, step.__name__, "(the step's rows)", step())
                reader.phase = "after the attacks"
                await asyncio.sleep(2)
        except TimeoutError:
            probe.add("end", "the whole probe", f"done within {args.budget:g} s",
                      "time budget ran out", False)  # fmt: skip

        stop_reader.set()
        await reader_task
        total = reader.total(skip=FORGED_PHASE)
        forged = reader.tallies.get(FORGED_PHASE, Tally())
        wrong_phases = {
            p: t.wrong_reads
            for p, t in reader.tallies.items()
            if t.wrong_reads and p != FORGED_PHASE
        }
        every = nodes + tls_nodes
        alive = [n.node_id for n in every if n.alive() and http_ok(n.url + "/healthz")]
        probe.add("end", f"all {len(every)} nodes (3 plain, {TLS_NODES} TLS) still alive and "
                  "healthy", f"{len(every)}/{len(every)}", f"{len(alive)}/{len(every)}",
                  len(alive) == len(every))  # fmt: skip
        probe.add(
            "end",
            "legitimate reader (CacheClient, own token) during every attack, outside the "
            "forged-record phase",
            "0 wrong bytes",
            f"{total.reads} reads, {total.failures} failures, {total.wrong_reads} wrong "
            f"reads, {total.wrong_bytes} wrong bytes (by phase: {wrong_phases or 'none'}); "
            f"inside the forged-record phase (its own row): {forged.reads} reads, "
            f"{forged.wrong_reads} wrong reads, {forged.wrong_bytes} wrong bytes",
            total.wrong_bytes == 0 and total.wrong_reads == 0 and total.reads > 0,
        )
        return {
            "cluster": "3 cachenodes, --token-file, --file-root; 2 cachenodes with TLS "
            f"(cluster `{TLS_CLUSTER}`); moto_server S3; etcd",
            "head_timeout_s": HEAD_TIMEOUT,
            "rows": [vars(r) for r in probe.rows],
            "passed": sum(r.status == PASS for r in probe.rows),
            "failed": sum(r.status == FAIL for r in probe.rows),
            "limitations": sum(r.status == LIMITATION for r in probe.rows),
            "legit_reader": {
                "object": legit_url,
                "object_bytes": len(reader.expected),
                "forged_phase": FORGED_PHASE,
                "total_outside_forged_phase": vars(total),
                "forged_phase_tally": vars(forged),
                "total": vars(reader.total()),
                "by_phase": {phase: vars(t) for phase, t in reader.tallies.items()},
                "errors": reader.errors,
            },
            "facts": probe.facts,
            "seconds": round(time.monotonic() - started, 1),
            **harness.machine_info(),
        }
    finally:
        stop_reader.set()
        if reader_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader_task, 35)
        if session is not None:
            await session.close()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                proc.stop()


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report(doc: dict[str, Any]) -> str:
    shown = {PASS: "pass", FAIL: "**FAIL**", LIMITATION: "limitation (documented)"}
    lines = [
        "# Security probe: attacks against a live secured cluster",
        "",
        f"{doc['cluster']}, all on 127.0.0.1 (`loadtest/security_probe.py`, "
        f"{doc['seconds']} s). **{doc['passed']} rows pass, {doc['failed']} fail, "
        f"{doc['limitations']} show a documented limitation.** "
        'Expected is what shared/DESIGN.md "Security", docs/security.md and '
        "docs/http-api.md promise; observed is what the nodes and clients did in this run. "
        "A limitation row is what docs/security.md says a deployment without TLS allows; "
        "it does not fail the exit status.",
        "",
        "| # | group | attack | expected | observed | result |",
        "|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(doc["rows"], 1):
        lines.append(
            f"| {i} | {row['group']} | {cell(row['attack'])} | {cell(row['expected'])} | "
            f"{cell(row['observed'])} | {shown[row['status']]} |"
        )
    reader = doc["legit_reader"]
    total, forged = reader["total_outside_forged_phase"], reader["forged_phase_tally"]
    lines += [
        "",
        "## The legitimate reader",
        "",
        f"A `CacheClient` with its own read token (scope `s3://{BUCKET}/legit`, no memory "
        "tier, plain HTTP, no CA) read "
        f"`{reader['object']}` ({reader['object_bytes']} bytes, 3 blocks) whole "
        "or in random ranges, back to back, through every attack, and compared each byte "
        "with the origin's. Outside the forged-record phase: "
        f"**{total['reads']} reads, {total['failures']} failures, "
        f"{total['wrong_reads']} wrong reads, {total['wrong_bytes']} wrong bytes**. "
        f"While the forged plain-HTTP record was in etcd (`{reader['forged_phase']}`): "
        f"{forged['reads']} reads, {forged['wrong_reads']} wrong, "
        f"{forged['wrong_bytes']} wrong bytes ({forged['junk_bytes']} of them the rogue's "
        "junk).",
        "",
        "| phase | reads | failures | wrong reads | wrong bytes | of which the rogue's junk |",
        "|---|---|---|---|---|---|",
    ]
    for phase, t in reader["by_phase"].items():
        lines.append(
            f"| {phase} | {t['reads']} | {t['failures']} | {t['wrong_reads']} | "
            f"{t['wrong_bytes']} | {t['junk_bytes']} |"
        )
    lines += [
        "",
        "This client speaks plain HTTP without a CA, so its ring takes a forged etcd "
        "record like any other, sends block GETs to it, and reads what it answers (a "
        "client checks no proof on a block answer; nodes do, on handoff answers, which is "
        "why the real nodes never served the junk). That is the documented limitation of "
        'a cluster without TLS (docs/security.md, "A peer on the network" and "Someone who '
        "can write the cluster's etcd prefix\"), reported in its own row. The remedy the "
        "contract names is TLS on the nodes with the cluster CA given to clients, plus etcd "
        "authentication; the TLS group shows it holding:",
    ]
    tls = doc["facts"].get("tls")
    if tls:
        t = tls["reader"]
        lines += [
            "",
            f"- cluster `{tls['cluster']}`, 2 nodes with `--tls-cert/--tls-key/--ca`; a "
            "client with `ca_file=` the CA and the same read token; two forged records "
            "(weight 1000 each) in etcd all along: `rogue-http` (plain HTTP) and "
            "`rogue-https` (TLS, self-signed certificate for 127.0.0.1);",
            f"- the client's ring: {tls['client_ring']} (the plain-HTTP record left out; "
            "the HTTPS one in, so only its certificate keeps it from reads);",
            f"- {t['reads']} reads, {t['failures']} failures, {t['wrong_reads']} wrong "
            f"reads, {t['wrong_bytes']} wrong bytes; the TLS nodes served "
            f"{tls['tls_nodes_served_bytes']:.0f} bytes;",
            f"- rogue-http: {tls['rogue_http']['requests']} requests, "
            f"{tls['rogue_http']['connections']} connections; rogue-https: "
            f"{tls['rogue_https']['requests']} requests, "
            f"{tls['rogue_https']['connections']} TCP connections, none of which got as far "
            "as a request (the client verifies the certificate during the handshake);",
            "- the client's failed block attempts, by node and error (its own warnings; each "
            "attempt was retried at another owner or the origin): "
            f"{tls['client_block_errors'] or 'none'}.",
        ]
        if tls["reader_errors"]:
            lines += ["", "First TLS read errors:", ""]
            lines += [f"- `{cell(e)}`" for e in tls["reader_errors"]]
    if reader["errors"]:
        lines += ["", "First read errors:", ""]
        lines += [f"- `{cell(e)}`" for e in reader["errors"]]
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=150, help="seconds for the attacks")
    harness.add_output_options(parser)
    args = parser.parse_args()

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    root = Path(tempfile.mkdtemp(prefix="ringcache-security-"))
    try:
        doc = asyncio.run(run(args, root))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    (harness.RESULTS / "security.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = report(doc)
    (harness.RESULTS / "security.md").write_text(text)
    print(text)
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
