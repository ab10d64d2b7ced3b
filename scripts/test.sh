#!/usr/bin/env bash
# The test command of the README: the whole suite against real etcd, S3 (moto_server),
# cachenode processes and FUSE mounts. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q "$@"
