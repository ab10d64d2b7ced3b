"""Settings declared once: each command's table gives its flags, TOML keys and variables."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cachenode.config import SETTINGS as NODE_SETTINGS
from cachenode.config import load_config as load_node_config
from clientlib.cli.main import SETTINGS as CACHECTL_SETTINGS
from clientlib.cli.main import build_parser as cachectl_parser
from clientlib.config import SettingsTable
from clientlib.errors import ConfigError
from mountd.config import SETTINGS as MOUNT_SETTINGS
from mountd.config import load_config as load_mount_config
from mountd.mount import _client as mount_client

TABLES = [NODE_SETTINGS, MOUNT_SETTINGS, CACHECTL_SETTINGS]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("RINGCACHE_"):
            monkeypatch.delenv(var)


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.prog)
def test_every_declared_flag_and_variable_is_in_help(table: SettingsTable) -> None:
    parser = cachectl_parser() if table is CACHECTL_SETTINGS else table.parser()
    text = parser.format_help()
    for s in table.settings:
        if s.flag and not s.positional:
            assert re.search(rf"{re.escape(s.option)}\b", text), s.option
    assert "RINGCACHE_<NAME>" in text
    assert ("--config" in text) is bool(table.toml_keys)


def node_args(tmp_path: Path) -> list[str]:
    return ["--listen", "127.0.0.1:1", "--etcd", "http://127.0.0.1:1", "--cache-dir", str(tmp_path)]


def test_flag_wins_over_variable_which_wins_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text("serve_slots = 10\nlease_ttl = 20\nshutdown_timeout = 5.0\n")
    monkeypatch.setenv("RINGCACHE_LEASE_TTL", "30")
    monkeypatch.setenv("RINGCACHE_SHUTDOWN_TIMEOUT", "7")
    config = load_node_config(
        [*node_args(tmp_path), "--config", str(toml), "--shutdown-timeout", "9"]
    )
    assert (config.serve_slots, config.lease_ttl, config.shutdown_timeout) == (10, 30, 9.0)


def test_defaults_come_from_the_table(tmp_path: Path) -> None:
    config = load_node_config(node_args(tmp_path))
    assert config.memory_cache == 128 * 1024 * 1024
    assert config.eviction == "s3fifo"
    assert config.cache_dirs[0].size == 100 * 1024**3
    mount = load_mount_config(["s3://bucket", str(tmp_path), "--etcd", "http://127.0.0.1:1"])
    assert (mount.uid, mount.gid, mount.umask) == (os.getuid(), os.getgid(), 0o022)
    assert mount.read_only is False and mount.download_limit == 0


def test_the_mounts_hedge_delay_reaches_its_client(tmp_path: Path) -> None:
    """``--hedge-delay``: how long a block's owner may take before the next one (then the
    origin) is asked too; tests that count hits exactly set it high."""
    args = ["s3://bucket", str(tmp_path), "--etcd", "http://127.0.0.1:1"]
    assert mount_client(load_mount_config(args))._hedge_delay == 1.0
    assert mount_client(load_mount_config([*args, "--hedge-delay", "60"]))._hedge_delay == 60.0
    with pytest.raises(ConfigError, match=re.escape("--hedge-delay: 0.0 is outside")):
        load_mount_config([*args, "--hedge-delay", "0"])


def test_list_and_switch_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("RINGCACHE_CACHE_DIR", f"{tmp_path}/a:2GiB,{tmp_path}/b")
    config = load_node_config(["--listen", "127.0.0.1:1", "--etcd", "http://127.0.0.1:1"])
    assert [d.size for d in config.cache_dirs] == [2 * 1024**3, 100 * 1024**3]
    monkeypatch.setenv("RINGCACHE_READ_ONLY", "yes")
    mount = load_mount_config(["s3://bucket", str(tmp_path), "--etcd", "http://127.0.0.1:1"])
    assert mount.read_only is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--serve-slots", "0"], "--serve-slots: 0 is outside [1, 65536]"),
        (["--eviction", "fifo"], None),  # argparse's choices: a usage error
        (["--log-level", "LOUD"], "--log-level: 'LOUD' is not DEBUG, INFO, WARNING or ERROR"),
        (["--cache-dir", "/x:10"], "size must be at least 1MiB"),
    ],
)
def test_bounds_are_checked_once_with_the_setting_named(
    tmp_path: Path, args: list[str], message: str | None
) -> None:
    if message is None:
        with pytest.raises(SystemExit):
            load_node_config([*node_args(tmp_path), *args])
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_node_config([*node_args(tmp_path), *args])


def test_cachectl_takes_its_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RINGCACHE_CLUSTER", "research")
    monkeypatch.setenv("RINGCACHE_TOKEN_FILE", "/t")
    args = cachectl_parser().parse_args(["--ca", "/ca.pem", "status"])
    values = CACHECTL_SETTINGS.resolve(args)
    assert values["cluster"] == "research"
    assert values["token_file"] == "/t" and values["ca"] == "/ca.pem"
    assert values["etcd"] == "http://127.0.0.1:2379"
    monkeypatch.setenv("RINGCACHE_CLUSTER", "../x")
    with pytest.raises(ConfigError, match="bad cluster name"):
        CACHECTL_SETTINGS.resolve(args)
