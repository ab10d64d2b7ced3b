"""``cachectl warmup``: fetch a prefix into the cluster before a burst, check it, evict it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from clientlib import warmup as warm
from clientlib.client import CacheClient
from clientlib.errors import BadRequest


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "warmup",
        help="fetch every block under a prefix into the cluster (once for the whole cluster)",
    )
    p.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE|MOUNTED_PATH",
        help="s3://bucket/prefix, file:///dir, or a path inside a ringcache mount",
    )
    p.add_argument("--file-list", metavar="FILE", help="more sources, one per line")
    p.add_argument("--threads", type=int, default=16, help="blocks in flight (default 16)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only report how much is cached")
    mode.add_argument("--evict", action="store_true", help="drop these blocks from the cache")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def _sources(args: argparse.Namespace) -> list[str]:
    sources = list(args.sources)
    if args.file_list:
        try:
            lines = Path(args.file_list).read_text().splitlines()
        except OSError as exc:
            raise BadRequest(f"--file-list {args.file_list}: {exc.strerror}") from None
        sources += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not sources:
        raise BadRequest("give at least one SOURCE or --file-list FILE")
    if not 1 <= args.threads <= 1024:
        raise BadRequest("--threads must be between 1 and 1024")
    return sources


async def run(args: argparse.Namespace) -> int:
    sources = _sources(args)
    async with CacheClient(
        args.etcd, args.cluster, token_file=args.token_file, ca_file=args.ca
    ) as client:
        if args.check:
            return _print_check(await warm.check(client, sources), args.json)
        if args.evict:
            evicted = await warm.evict(client, sources)
            print(
                json.dumps({"blocks_evicted": evicted})
                if args.json
                else f"evicted {evicted} blocks"
            )
            return 0
        report = await _warm_with_progress(client, sources, args)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(
            f"{report.blocks_total} blocks: {report.blocks_already_cached} already cached, "
            f"{report.blocks_fetched} fetched ({report.bytes_fetched / 2**20:.1f} MiB) "
            f"in {report.seconds:.1f}s, {report.errors} errors"
        )
    for message in report.error_messages[:10]:
        print(f"cachectl: warmup error: {message}", file=sys.stderr)
    return 1 if report.errors else 0


async def _warm_with_progress(
    client: CacheClient, sources: list[str], args: argparse.Namespace
) -> warm.WarmupReport:
    """Warm with a progress bar on a terminal (blocks, bytes, rate, ETA); quiet otherwise."""
    console = Console(stderr=True)
    if args.json or not console.is_terminal:
        return await warm.warmup(client, sources, threads=args.threads)
    columns = (
        TextColumn("warming"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("blocks"),
        TextColumn("{task.fields[mib]:.0f} MiB"),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("warmup", total=None, mib=0.0)
        fetched = 0

        def on_total(blocks: int, _bytes: int) -> None:
            bar.update(task, total=blocks)

        def on_progress(blocks: int, nbytes: int) -> None:
            nonlocal fetched
            fetched += nbytes
            bar.update(task, advance=blocks, mib=fetched / 2**20)

        return await warm.warmup(
            client, sources, threads=args.threads, progress=on_progress, on_total=on_total
        )


def _print_check(report: warm.CheckReport, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report.to_json()))
        return 0
    table = Table(
        title=f"cached: {report.blocks_cached}/{report.blocks_total} ({report.ratio:.1%})"
    )
    table.add_column("directory")
    table.add_column("blocks", justify="right")
    table.add_column("cached", justify="right")
    table.add_column("ratio", justify="right")
    for directory, (total, cached) in sorted(report.by_dir.items()):
        table.add_row(directory, str(total), str(cached), f"{cached / total:.1%}")
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0
