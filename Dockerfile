# syntax=docker/dockerfile:1
# One image for all four commands: cachenode, mountd, s3gate and cachectl.
#
#   docker build -t ringcache:0.1.0 .
#
#   # a cache node (runs as the image's non-root user "ringcache", uid 10001)
#   docker run -d --network host -v /nvme0/ringcache:/var/lib/ringcache/cache0 ringcache:0.1.0 \
#       cachenode --listen 0.0.0.0:7070 --advertise 10.0.0.21:7070 \
#                 --cache-dir /var/lib/ringcache/cache0:800GiB \
#                 --etcd http://etcd.internal:2379 --cluster research
#
#   # an S3 gateway (non-root as well; keys file and cluster secret mounted read-only)
#   docker run -d --network host -v /etc/ringcache:/etc/ringcache:ro ringcache:0.1.0 \
#       s3gate --listen 0.0.0.0:9000 --metrics-listen 0.0.0.0:9465 \
#              --etcd http://etcd.internal:2379 --cluster research \
#              --keys /etc/ringcache/s3gate-keys.toml --token-file /etc/ringcache/cluster.secret
#
#   # the CLI (non-root as well)
#   docker run --rm --network host ringcache:0.1.0 \
#       cachectl --etcd http://etcd.internal:2379 --cluster research status
#
#   # a mount: FUSE needs root (or CAP_SYS_ADMIN) and /dev/fuse, and the mount reaches the
#   # host only through a shared bind mount:
#   docker run -d --user root --device /dev/fuse --cap-add SYS_ADMIN \
#       --security-opt apparmor=unconfined \
#       --mount type=bind,source=/mnt/ringcache,target=/mnt/ringcache,bind-propagation=rshared \
#       ringcache:0.1.0 \
#       mountd s3://research-data /mnt/ringcache --foreground --allow-other \
#              --etcd http://etcd.internal:2379 --cluster research
#
# The image holds no secret: the cluster secret (--token-file) and S3 credentials
# (AWS_* variables, boto3's usual places) are given at run time. Kubernetes manifests
# live in config/k8s/.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/ringcache
COPY . /opt/ringcache

# The install is the very script CI runs (.ci/run -> scripts/install.sh): apt packages
# (fuse3 among them, and the compiler pyfuse3 is built with), .venv, pip install -e.
# The runtime profile only leaves out the benchmark tools (nginx, wrk, rclone, s3fs,
# prometheus, chromium).
RUN RINGCACHE_INSTALL_PROFILE=runtime bash scripts/install.sh \
    && rm -rf /var/lib/apt/lists/* /root/.cache \
    && command -v fusermount3 \
    && .venv/bin/cachenode --help >/dev/null \
    && .venv/bin/mountd --help >/dev/null \
    && .venv/bin/s3gate --help >/dev/null \
    && .venv/bin/cachectl --help >/dev/null \
    && .venv/bin/python -c "import pyfuse3"

# cachenode, s3gate and cachectl run as this user; mountd is started as root (see above).
RUN groupadd --system --gid 10001 ringcache \
    && useradd --system --uid 10001 --gid ringcache --home-dir /var/lib/ringcache \
       --shell /usr/sbin/nologin ringcache \
    && install -d -o ringcache -g ringcache -m 0750 /var/lib/ringcache

ENV PATH=/opt/ringcache/.venv/bin:$PATH
USER 10001:10001
WORKDIR /var/lib/ringcache
EXPOSE 7070 9000 9465

# No default daemon: say which command to run (cachenode, mountd, s3gate or cachectl).
CMD ["cachenode", "--help"]
