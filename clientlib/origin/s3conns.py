"""Kept-alive HTTP connections for a node's lean S3 GETs (:mod:`clientlib.origin.s3lean`).

A lean GET sent through the client's own HTTP session passes botocore's request
conversion and urllib3's pool on the way: about half a millisecond of CPU per 4 MiB GET
more than the same signed request on an ``http.client`` connection kept alive here
(``loadtest/results/warmup.md``). So the lean GETs have a pool of their own, with the
transport the client's session has by default:

- TLS verified, host name included, against the same CA bundle: the session's
  ``ca_bundle`` (``AWS_CA_BUNDLE``, the profile's), else ``REQUESTS_CA_BUNDLE``, else
  botocore's own bundle, as botocore picks it for a client made without ``verify``;
- the client's connect and read timeouts, and at most its ``max_pool_connections`` idle
  connections per endpoint.

Endpoints this cannot reach as the client would are not served here (:meth:`usable` is
False and the caller asks ``get_object``): a client with a client certificate or
proxies in its config, and an endpoint the environment sends through a proxy.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import ssl
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import botocore.httpsession
import botocore.utils

__all__ = ["Body", "Connection", "Connections"]

#: Bytes of an error answer's body read to keep its connection; a longer one closes it.
_ERROR_BODY_MAX = 64 * 1024

Connection = http.client.HTTPConnection


class Connections:
    """Idle connections by endpoint; safe to use from many threads."""

    def __init__(self, config: Any, ca_bundle: str | None) -> None:
        self._connect_timeout = config.connect_timeout
        self._read_timeout = config.read_timeout
        self._keep = config.max_pool_connections
        self._configured = config.client_cert is None and not config.proxies
        verify = ca_bundle if ca_bundle is not None else os.environ.get("REQUESTS_CA_BUNDLE", True)
        self._cafile = botocore.httpsession.get_cert_path(verify)
        self._tls: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str], list[Connection]] = {}
        self._proxied: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()

    def usable(self, url: str) -> bool:
        """Whether a GET of ``url`` may be sent here (see the module doc)."""
        if not self._configured:
            return False
        split = urlsplit(url)
        where = (split.scheme, split.netloc)
        proxied = self._proxied.get(where)
        if proxied is None:
            proxied = self._proxied[where] = split.scheme not in ("http", "https") or bool(
                botocore.utils.get_environ_proxies(url)
            )
        return not proxied

    def get(
        self, url: str, headers: Mapping[str, str]
    ) -> tuple[Connection, http.client.HTTPResponse]:
        """Send a GET of ``url`` (which :meth:`usable` allowed) on a kept-alive connection,
        or a new one when none is idle or the kept one turns out closed by the server;
        the connection and its answer, body unread. Raises ``OSError`` or
        ``http.client.HTTPException`` when a new connection fails."""
        split = urlsplit(url)
        where = (split.scheme, split.netloc)
        target = split.path + (f"?{split.query}" if split.query else "")
        with self._lock:
            idle = self._idle.get(where)
            conn = idle.pop() if idle else None
        if conn is not None:
            with contextlib.suppress(OSError, http.client.HTTPException):
                return conn, _ask(conn, target, headers)
            # closed by the server while idle: once more on a new one
        conn = self._connect(split.scheme, split.hostname or "", split.port)
        return conn, _ask(conn, target, headers)

    def _connect(self, scheme: str, host: str, port: int | None) -> Connection:
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context(cafile=self._cafile)
            conn: Connection = http.client.HTTPSConnection(
                host, port, timeout=self._connect_timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        return conn

    def give_back(self, url: str, conn: Connection) -> None:
        """Keep ``conn`` for the next GET to ``url``'s endpoint, its answer read to the end
        (one the server closed, ``Connection: close``, is dropped)."""
        if conn.sock is None:
            return
        split = urlsplit(url)
        where = (split.scheme, split.netloc)
        with self._lock:
            idle = self._idle.setdefault(where, [])
            if len(idle) < self._keep:
                idle.append(conn)
                return
        conn.close()

    def finish_error(self, url: str, conn: Connection, resp: http.client.HTTPResponse) -> None:
        """Read a short error answer to its end and keep its connection; close a long one."""
        try:
            resp.read(_ERROR_BODY_MAX)
        except (OSError, http.client.HTTPException):
            conn.close()
            return
        if resp.isclosed() and not resp.will_close:
            self.give_back(url, conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


class Body:
    """A lean answer's body as ``get_object``'s is used: read it, or close it (and its
    connection, which is then not kept)."""

    def __init__(self, conn: Connection, resp: http.client.HTTPResponse) -> None:
        self._conn, self._resp = conn, resp

    def read(self) -> bytes:
        return self._resp.read()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ask(conn: Connection, target: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
    """Send a GET of ``target`` on ``conn`` and read its answer's head; ``conn`` is closed
    if that fails."""
    try:
        conn.request("GET", target, headers=headers)
        return conn.getresponse()
    except BaseException:
        conn.close()
        raise
