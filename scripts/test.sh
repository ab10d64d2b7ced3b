#!/usr/bin/env bash
# The test command of the README: the whole suite against real etcd, S3 (moto_server,
# SeaweedFS), cachenode processes and FUSE mounts. Extra arguments go to pytest.
# Tests spend much of their time waiting on processes, so two pytest-xdist workers (one
# per core of the 2-core machines CI runs on) roughly halve the wall time; each worker
# starts its own etcd and S3 servers, and a test module stays on one worker so its
# module-scoped clusters are started once. RINGCACHE_TEST_WORKERS=0 runs in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
workers="${RINGCACHE_TEST_WORKERS:-2}"
if [ "$workers" = "0" ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadfile "$@"
