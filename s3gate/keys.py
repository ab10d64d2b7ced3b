"""The keys file: which S3 access keys exist, their secrets and what each may do.

``--keys FILE`` is TOML with one ``[[keys]]`` table per key: ``access_key``,
``secret_key`` and ``token``, a ringcache token (``cachectl token create``) whose scope,
tenant and rights the key has, and which signs the key's requests to the cache nodes.
``token`` may be left out on a cluster that runs without tokens: the key then has the
gateway's own ``--token-file`` credentials (everything, without one). The file is read
once at start; a mistake in it is one line naming the key. No key may be called
``anonymous``: that is who unsigned requests are.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from clientlib.auth import Credentials
from clientlib.errors import ConfigError

__all__ = ["ANONYMOUS", "GatewayKey", "load_keys"]

#: The name unsigned requests run under; no access key may take it (it would share their
#: multipart uploads).
ANONYMOUS = "anonymous"

_FIELDS = {"access_key", "secret_key", "token"}


@dataclass(frozen=True)
class GatewayKey:
    """One S3 access key and the ringcache credentials its requests run with."""

    access_key: str
    secret_key: str
    credentials: Credentials


def load_keys(path: Path, default: Credentials) -> dict[str, GatewayKey]:
    """The keys of the file at ``path`` by access key; ``default`` for keys without a
    ``token``."""
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"keys file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ConfigError(f"keys file {path}: {exc}") from None
    entries = doc.get("keys", [])
    if set(doc) - {"keys"} or not isinstance(entries, list):
        raise ConfigError(f"keys file {path}: only [[keys]] tables are allowed")
    keys: dict[str, GatewayKey] = {}
    for number, entry in enumerate(entries, 1):
        where = f"keys file {path}, key {number}"
        if not isinstance(entry, dict) or set(entry) - _FIELDS:
            raise ConfigError(f"{where}: fields are {', '.join(sorted(_FIELDS))}")
        access, secret = entry.get("access_key"), entry.get("secret_key")
        if not isinstance(access, str) or not access.isascii() or not 3 <= len(access) <= 128:
            raise ConfigError(f"{where}: access_key must be 3 to 128 ASCII characters")
        if "/" in access or not access.isprintable() or " " in access:
            raise ConfigError(f"{where}: access_key may not hold '/', spaces or controls")
        if not isinstance(secret, str) or len(secret) < 8:
            raise ConfigError(f"{where} ({access}): secret_key must be at least 8 characters")
        if access == ANONYMOUS:
            raise ConfigError(f"{where}: access_key {ANONYMOUS} is the name of unsigned requests")
        if access in keys:
            raise ConfigError(f"{where}: access_key {access} is given twice")
        token = entry.get("token")
        if token is None:
            credentials = default
        elif isinstance(token, str):
            credentials = Credentials.from_token(token, what=f"{where} ({access})")
        else:
            raise ConfigError(f"{where} ({access}): token must be a string")
        keys[access] = GatewayKey(access, secret, credentials)
    if not keys:
        raise ConfigError(f"keys file {path} holds no [[keys]]")
    return keys
