"""TLS for the node port: the server context of a node, the client context of its peers.

Optional: a node started with ``--tls-cert``/``--tls-key`` serves HTTPS and publishes
``"scheme": "https"`` in its etcd record, so clients and other nodes connect with TLS;
they verify it against ``--ca`` (a private CA or the node certificate itself), or the
system's trust store without one.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from clientlib.errors import ConfigError

__all__ = ["client_context", "server_context"]


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: {exc}") from None
    return context


def client_context(ca: Path | str | None) -> ssl.SSLContext:
    """Verifying client context: the CA file if given, else the system's trust store."""
    try:
        return ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--ca {ca}: {exc}") from None
