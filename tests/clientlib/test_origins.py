"""The origin registry builds its S3 backend once and off the event loop (a unit)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from clientlib.errors import BadRequest, Forbidden
from clientlib.origin import Origins


async def test_s3_backend_is_built_once_on_a_thread(monkeypatch):
    origins = Origins()
    built: list[str] = []
    backend = object()

    def slow_build():  # boto3's import and client take this long on a busy machine
        built.append(threading.current_thread().name)
        time.sleep(0.3)
        return backend

    monkeypatch.setattr(origins, "_make_s3", slow_build)
    readers = [asyncio.create_task(origins.get(f"s3://bucket/k{i}")) for i in range(3)]
    ticks = 0
    while not all(r.done() for r in readers):
        await asyncio.sleep(0.01)  # the loop keeps running while the client is built
        ticks += 1
    assert [await r for r in readers] == [backend] * 3
    assert len(built) == 1 and built[0] != threading.main_thread().name
    assert ticks >= 5
    assert origins.for_url("s3://bucket/other") is backend


def test_check_refuses_without_building_s3(monkeypatch):
    origins = Origins(file_roots=[Path("/srv/data")])
    monkeypatch.setattr(origins, "_make_s3", lambda: pytest.fail("S3 built by check()"))
    origins.check("s3://bucket/key")
    with pytest.raises(BadRequest):
        origins.check("gs://bucket/key")
    with pytest.raises(Forbidden, match="outside"):
        origins.check("file:///etc/passwd")
