#!/usr/bin/env bash
# Installs everything ringcache needs on a fresh Debian machine: the system packages
# (etcd for membership, FUSE for mounts, nginx/wrk for the benchmarks), a virtualenv in
# .venv and the project itself with its test extra. CI, the Dockerfile and the README's
# first command all run this one script, so they cannot drift apart.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        etcd-server fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv \
        nginx-light wrk rclone s3fs prometheus chromium >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[test,mount]"
