"""Where mountd logs: stderr in the foreground, else ``--log-file`` or syslog."""

from __future__ import annotations

import logging
import logging.handlers
import os

from mountd.config import MountConfig

__all__ = ["setup_logging"]

#: Libraries whose DEBUG output is every header of every request: only their INFO and up.
NOISY = ("botocore", "boto3", "s3transfer", "urllib3", "aiohttp.access")


def setup_logging(config: MountConfig) -> None:
    """Send the root logger at ``config.log_level`` to the place the config names."""
    handler: logging.Handler
    if config.foreground and config.log_file is None:
        handler = logging.StreamHandler()
    elif config.log_file is not None:
        handler = logging.FileHandler(config.log_file)
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=config.log_level, handlers=[handler])
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
