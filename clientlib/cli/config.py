"""``cachectl config get`` / ``config set KEY VALUE``: the cluster settings in etcd."""

from __future__ import annotations

import argparse
import json

import humanfriendly

from clientlib.settings import SIZED, get_settings, set_setting


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("config", help="show or change the cluster settings")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    get = actions.add_parser("get", help="print the settings")
    get.add_argument("--json", action="store_true", help="as JSON")
    get.set_defaults(run=run_get)
    put = actions.add_parser(
        "set",
        help="change one setting (block_size, replicas, origin_rate_limit, "
        "origin_max_inflight); sizes and rates take units: 2GiB, 500MiB",
    )
    put.add_argument("key")
    put.add_argument("value")
    put.set_defaults(run=run_set)


def _show(doc: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, sort_keys=True))
        return
    for key, value in sorted(doc.items()):
        shown = value
        if key in SIZED and isinstance(value, int) and value:
            shown = f"{value} ({humanfriendly.format_size(value, binary=True)}"
            shown += "/s)" if key.endswith("rate_limit") else ")"
        print(f"{key} = {shown}")


async def run_get(args: argparse.Namespace) -> int:
    _show((await get_settings(args.etcd, args.cluster)).to_dict(), args.json)
    return 0


async def run_set(args: argparse.Namespace) -> int:
    new = await set_setting(args.etcd, args.cluster, args.key, args.value)
    _show({args.key: new.to_dict()[args.key]}, False)
    return 0
