"""Connecting to etcd the same way everywhere: bounded calls, fast reconnects.

Every call times out (a dead etcd must never hang a node or a client), and gRPC's
reconnect backoff is capped at one second: its default grows to two minutes, which would
leave nodes and clients disconnected long after etcd is back.
"""

from __future__ import annotations

import asyncio

import aetcd

from clientlib.cluster import parse_etcd_url

__all__ = ["ETCD_ERRORS", "connect"]

#: What an etcd call raises when etcd is down, slow or restarting.
ETCD_ERRORS = (aetcd.ClientError, OSError, asyncio.TimeoutError)

_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.use_local_subchannel_pool": 1,
    "grpc.keepalive_time_ms": 10000,
    "grpc.keepalive_timeout_ms": 5000,
}


def connect(url: str, timeout: float = 3.0) -> aetcd.Client:
    """An (unconnected) aetcd client for ``http://HOST:PORT``; connects on first call."""
    host, port = parse_etcd_url(url)
    return aetcd.Client(host=host, port=port, timeout=timeout, options=dict(_CHANNEL_OPTIONS))
