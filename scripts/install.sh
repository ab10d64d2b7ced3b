#!/usr/bin/env bash
# Installs everything ringcache needs on a fresh Debian machine: the system packages
# (etcd for membership, FUSE for mounts, nginx/wrk for the benchmarks), a virtualenv in
# .venv and the project itself with its test extra. CI, the Dockerfile and the README's
# first command all run this one script, so they cannot drift apart.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# RINGCACHE_INSTALL_PROFILE=runtime (the Dockerfile) leaves out the packages only the
# benchmarks and their reports use; the default, "full", is what CI and developers get.
APT_PACKAGES="etcd-server fuse3 libfuse3-dev pkg-config gcc make autoconf automake python3-dev python3-venv openssl iproute2"
BENCH_PACKAGES="nginx-light wrk rclone s3fs prometheus chromium fio"
case "${RINGCACHE_INSTALL_PROFILE:-full}" in
    full) APT_PACKAGES="$APT_PACKAGES $BENCH_PACKAGES"; EXTRAS="test,mount,bench" ;;
    runtime) EXTRAS="test,mount" ;;
    *) echo "install.sh: RINGCACHE_INSTALL_PROFILE must be full or runtime" >&2; exit 2 ;;
esac
if command -v apt-get >/dev/null; then
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        $APT_PACKAGES >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[$EXTRAS]"

# pjdfstest, the POSIX conformance suite tests/mountd/test_posix.py and
# loadtest/posix_conformance.py run in the mount: built from the tarball in ../shared/tools
# (RINGCACHE_TOOLS to look elsewhere) into .build/pjdfstest, outside git.
TOOLS="${RINGCACHE_TOOLS:-../shared/tools}"
PJD_TARBALL="$(ls "$TOOLS"/pjdfstest-*.tar.gz 2>/dev/null | head -n 1 || true)"
if [ -n "$PJD_TARBALL" ] && [ ! -x .build/pjdfstest/pjdfstest ]; then
    rm -rf .build/pjdfstest && mkdir -p .build
    tar xzf "$PJD_TARBALL" -C .build && mv .build/pjdsrc .build/pjdfstest
    (cd .build/pjdfstest && autoreconf -ifs >/dev/null 2>&1 && ./configure -q >/dev/null \
        && make -s pjdfstest >/dev/null)
fi
