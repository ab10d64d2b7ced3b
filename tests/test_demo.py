"""The README's first command: the demo runs to completion and prints a hit rate."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_the_main_job_and_prints_the_hit_rate(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from clientlib.demo import demo_main; demo_main()",
         "--workdir", str(tmp_path), "--days", "5"],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "warmup      8 blocks fetched" in out
    assert "backtest    read 8 CSVs" in out, out  # through a real FUSE mount
    match = re.search(r"hit rate    ([0-9.]+)%: (\d+) misses .*?, (\d+) hits", out)
    assert match, out
    assert float(match[1]) == 50.0 and match[2] == match[3] == "8"
    assert "/dashboard" in out
