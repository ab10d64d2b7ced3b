"""Reading and changing the cluster settings in etcd (``cachectl config``).

Changes are compare-and-swap on the config key's revision, so two operators setting
different keys at once cannot lose each other's change. Nodes watch the key and apply
a change without restarting.
"""

from __future__ import annotations

from typing import Any

from clientlib.cluster import SETTINGS, ClusterConfig, config_key
from clientlib.config import parse_size
from clientlib.errors import BadRequest, ConfigError, RingcacheError
from clientlib.etcd import ETCD_ERRORS, EtcdTarget, connect, etcd_error

__all__ = ["SIZED", "get_settings", "parse_setting", "set_setting"]

#: Settings whose values are sizes or rates and take units (``2GiB``, ``500MiB``).
SIZED = {"block_size", "origin_rate_limit"}


def parse_setting(key: str, value: str) -> int:
    """The integer value of ``key`` from what an operator typed; one clear error if bad."""
    if key not in SETTINGS:
        raise ConfigError(f"unknown setting {key!r}: known are {', '.join(sorted(SETTINGS))}")
    if key in SIZED:
        return parse_size(value.removesuffix("/s"), key)
    if not (value.isascii() and value.isdigit()):
        raise ConfigError(f"{key}: {value!r} is not a non-negative integer")
    return int(value)


async def get_settings(etcd_target: EtcdTarget | str, cluster: str) -> ClusterConfig:
    try:
        async with connect(etcd_target, timeout=5) as etcd:
            got = await etcd.get(config_key(cluster))
    except ETCD_ERRORS as exc:
        raise etcd_error(etcd_target, exc) from None
    return ClusterConfig.from_json(got.value) if got else ClusterConfig()


async def set_setting(
    etcd_target: EtcdTarget | str, cluster: str, key: str, value: str
) -> ClusterConfig:
    """Validate and store one setting; returns the new config."""
    number = parse_setting(key, value)
    try:
        async with connect(etcd_target, timeout=5) as etcd:
            for _ in range(10):
                got = await etcd.get(config_key(cluster))
                current: dict[str, Any] = (
                    ClusterConfig.from_json(got.value).to_dict()
                    if got
                    else ClusterConfig().to_dict()
                )
                try:
                    new = ClusterConfig.from_dict({**current, key: number})
                except BadRequest as exc:
                    raise ConfigError(str(exc)) from None
                tx = etcd.transactions
                compare = (
                    [tx.mod(config_key(cluster)) == got.mod_revision]
                    if got
                    else [tx.version(config_key(cluster)) == 0]
                )
                ok, _ = await etcd.transaction(
                    compare=compare,
                    success=[tx.put(config_key(cluster), new.to_json())],
                    failure=[],
                )
                if ok:
                    return new
    except ETCD_ERRORS as exc:
        raise etcd_error(etcd_target, exc) from None
    raise RingcacheError("the cluster config kept changing under us; try again")
