"""Receiving upload bodies (one function, no servers): a body that stalls is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from unittest.mock import Mock

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol
from aiohttp.test_utils import make_mocked_request

from s3gate import bodies
from s3gate.errors import S3Error


async def test_a_body_that_stalls_is_refused_and_its_spool_file_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(bodies, "BODY_IDLE", 0.2)
    loop = asyncio.get_running_loop()
    protocol = BaseProtocol(loop)
    protocol.connection_made(Mock(asyncio.Transport))  # an open connection that sends nothing
    stream = StreamReader(protocol, 2**16, loop=loop)
    stream.feed_data(b"abc")  # of the 10 bytes declared, then nothing, and no end
    request = make_mocked_request("PUT", "/b/k", headers={"Content-Length": "10"}, payload=stream)
    spool = tmp_path / "put-1"
    with pytest.raises(S3Error) as exc:
        # The outer wait only keeps a broken gateway from hanging the test run.
        await asyncio.wait_for(bodies.receive_body(request, None, spool), 10)
    assert exc.value.code == "RequestTimeout"
    assert not spool.exists()
