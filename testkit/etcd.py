"""A local etcd as the security tests need it: TLS with certificates of a throwaway CA,
client-certificate authentication, and users with a role limited to ``/ringcache/``."""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aetcd import rpc

from clientlib import launcher
from clientlib.etcd import connect
from clientlib.launcher import Etcd, EtcdTLS
from testkit.certs import issue_cert, make_ca

__all__ = ["start_etcd"]


async def _enable_auth(etcd: Etcd) -> None:
    """Add ``root`` and ``ringcache`` (read-write on ``/ringcache/`` only), then turn
    authentication on: what an operator does once with ``etcdctl user/role/auth``."""
    prefix = b"/ringcache/"
    range_end = prefix[:-1] + bytes([prefix[-1] + 1])
    async with connect(etcd.target(cert=etcd.client_cert is not None), timeout=10) as client:
        stub = rpc.AuthStub(client.channel)
        for user in etcd.users:
            await stub.UserAdd(rpc.AuthUserAddRequest(name=user, password=etcd.users[user]))
        await stub.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
        await stub.RoleAdd(rpc.AuthRoleAddRequest(name="ringcache"))
        permission = rpc.Permission(permType=rpc.Permission.READWRITE, key=prefix,
                                    range_end=range_end)  # fmt: skip
        await stub.RoleGrantPermission(
            rpc.AuthRoleGrantPermissionRequest(name="ringcache", perm=permission)
        )
        await stub.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="ringcache", role="ringcache"))
        await stub.AuthEnable(rpc.AuthEnableRequest())


def start_etcd(
    workdir: Path,
    client: int | None = None,
    peer: int | None = None,
    *,
    tls: bool = False,
    client_cert_auth: bool = False,
    auth: bool = False,
) -> Etcd:
    """:func:`clientlib.launcher.start_etcd`, secured as asked.

    ``tls`` serves clients over TLS with a certificate of a CA made here (``Etcd.ca``);
    ``client_cert_auth`` also demands a client certificate of that CA (its common name,
    ``ringcache``, is the etcd user); ``auth`` creates the users ``root`` and
    ``ringcache`` (passwords in ``Etcd.users``) and turns authentication on.
    """
    tls_files = None
    if tls or client_cert_auth:
        where = workdir / "tls"
        authority = make_ca(where)
        server_cert, server_key = issue_cert(authority, where, "etcd-server")
        client_cert, client_key = issue_cert(authority, where, "ringcache")
        tls_files = EtcdTLS(
            authority[0], server_cert, server_key, client_cert, client_key, client_cert_auth
        )
    proc = launcher.start_etcd(workdir, client, peer, tls=tls_files)
    if auth:
        proc.users = {user: secrets.token_urlsafe(16) for user in ("root", "ringcache")}
        try:
            # In a thread of its own: callers may be inside an event loop already.
            with ThreadPoolExecutor(1) as pool:
                pool.submit(lambda: asyncio.run(_enable_auth(proc))).result()
        except BaseException:
            proc.stop()
            raise
    return proc
