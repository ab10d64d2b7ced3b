"""The S3 gateway with boto3: reads through the cache, S3's semantics, its security.

One cluster (two nodes, with a secret) and one ``s3gate`` per module; the origin is moto
whose reads the nodes and the gateway count, so "served by the cache" is "no origin GET".
"""

from __future__ import annotations

import concurrent.futures
import datetime
import io
import os
import stat
import urllib.error
import urllib.request

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from s3gate.uploads import MAX_UPLOADS_PER_KEY
from tests.s3gate.conftest import LOCAL, Setup, s3_client

MiB = 1024 * 1024


def origin():  # type: ignore[no-untyped-def]
    """boto3 straight to moto (not through the counting proxy)."""
    return boto3.client("s3")


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def put_origin(setup: Setup, key: str, size: int, **extra: str) -> bytes:
    data = os.urandom(size)
    origin().put_object(Bucket=setup.bucket, Key=key, Body=data, **extra)
    return data


def test_get_streams_the_origin_bytes_and_a_second_get_is_served_by_the_cache(setup: Setup):
    data = put_origin(setup, "bars/a.csv", 9 * MiB + 123, ContentType="text/csv")
    head = origin().head_object(Bucket=setup.bucket, Key="bars/a.csv")
    gate = setup.client()
    before = setup.origin_gets()
    got = gate.get_object(Bucket=setup.bucket, Key="bars/a.csv")
    assert got["Body"].read() == data
    assert setup.origin_gets() > before  # cold: the nodes read it from the origin
    assert got["ContentLength"] == len(data)
    assert got["ETag"] == head["ETag"]
    assert got["LastModified"] == head["LastModified"]
    assert got["ContentType"] == "text/csv"
    before = setup.origin_gets()
    assert gate.get_object(Bucket=setup.bucket, Key="bars/a.csv")["Body"].read() == data
    assert setup.origin_gets() == before
    assert setup.metric("ringcache_gateway_requests_total", 'op="GetObject",code="200"') >= 2
    assert setup.metric("ringcache_gateway_bytes_total", 'direction="out"') >= 2 * len(data)


def test_head_object_has_the_origin_size_etag_and_type(setup: Setup):
    put_origin(setup, "h/x.json", 1000, ContentType="application/json")
    head = setup.client().head_object(Bucket=setup.bucket, Key="h/x.json")
    want = origin().head_object(Bucket=setup.bucket, Key="h/x.json")
    assert (head["ContentLength"], head["ETag"]) == (1000, want["ETag"])
    assert head["ContentType"] == "application/json"
    with pytest.raises(ClientError) as exc:
        setup.client().head_object(Bucket=setup.bucket, Key="h/missing")
    assert error_of(exc)[1] == 404
    with pytest.raises(ClientError) as exc:
        setup.client().get_object(Bucket=setup.bucket, Key="h/missing")
    assert error_of(exc) == ("NoSuchKey", 404)


def test_ranges_are_served_and_a_bad_range_is_416(setup: Setup):
    data = put_origin(setup, "r/obj", 5 * MiB)
    gate = setup.client()
    part = gate.get_object(Bucket=setup.bucket, Key="r/obj", Range="bytes=4194000-4194999")
    assert part["Body"].read() == data[4194000:4195000]
    assert part["ContentRange"] == f"bytes 4194000-4194999/{len(data)}"
    tail = gate.get_object(Bucket=setup.bucket, Key="r/obj", Range="bytes=-10")
    assert tail["Body"].read() == data[-10:]
    opened = gate.get_object(Bucket=setup.bucket, Key="r/obj", Range=f"bytes={len(data) - 5}-")
    assert opened["Body"].read() == data[-5:]
    with pytest.raises(ClientError) as exc:
        gate.get_object(Bucket=setup.bucket, Key="r/obj", Range=f"bytes={len(data)}-")
    assert error_of(exc) == ("InvalidRange", 416)


def test_conditional_gets_follow_s3(setup: Setup):
    put_origin(setup, "c/obj", 100)
    gate = setup.client()
    etag = gate.head_object(Bucket=setup.bucket, Key="c/obj")["ETag"]
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    past = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    assert gate.get_object(Bucket=setup.bucket, Key="c/obj", IfMatch=etag)["Body"].read()
    cases = [
        ({"IfNoneMatch": etag}, 304),
        ({"IfModifiedSince": future}, 304),
        ({"IfMatch": '"0123"'}, 412),
        ({"IfUnmodifiedSince": past}, 412),
    ]
    for kwargs, status in cases:
        with pytest.raises(ClientError) as exc:
            gate.get_object(Bucket=setup.bucket, Key="c/obj", **kwargs)
        assert error_of(exc)[1] == status, kwargs
    # If-Match that holds wins over If-Unmodified-Since that does not (S3's rule).
    got = gate.get_object(Bucket=setup.bucket, Key="c/obj", IfMatch=etag, IfUnmodifiedSince=past)
    assert len(got["Body"].read()) == 100


def test_listings_have_prefixes_delimiters_and_pages(setup: Setup):
    keys = ["l/a/1", "l/a/2", "l/b/1", "l/c", "l/d", "l/e/f/g"]
    for key in keys:
        put_origin(setup, key, 10)
    gate = setup.client()
    top = gate.list_objects_v2(Bucket=setup.bucket, Prefix="l/", Delimiter="/")
    assert [c["Prefix"] for c in top["CommonPrefixes"]] == ["l/a/", "l/b/", "l/e/"]
    assert [c["Key"] for c in top["Contents"]] == ["l/c", "l/d"]
    assert all(c["Size"] == 10 for c in top["Contents"])
    pages = gate.get_paginator("list_objects_v2").paginate(
        Bucket=setup.bucket, Prefix="l/", PaginationConfig={"PageSize": 2}
    )
    listed = [c["Key"] for page in pages for c in page.get("Contents", [])]
    assert listed == keys
    grouped = gate.get_paginator("list_objects_v2").paginate(
        Bucket=setup.bucket, Prefix="l/", Delimiter="/", PaginationConfig={"PageSize": 1}
    )
    seen = [(p.get("CommonPrefixes") or p.get("Contents"))[0] for p in grouped]
    assert [s.get("Prefix", s.get("Key")) for s in seen] == ["l/a/", "l/b/", "l/c", "l/d", "l/e/"]
    v1 = gate.get_paginator("list_objects").paginate(
        Bucket=setup.bucket, Prefix="l/", PaginationConfig={"PageSize": 4}
    )
    assert [c["Key"] for page in v1 for c in page.get("Contents", [])] == keys
    assert gate.get_bucket_location(Bucket=setup.bucket)["LocationConstraint"] is None
    assert [b["Name"] for b in gate.list_buckets()["Buckets"]] == sorted([setup.bucket, LOCAL])


def test_wrong_keys_are_refused(setup: Setup):
    put_origin(setup, "k/obj", 10)
    with pytest.raises(ClientError) as exc:
        setup.client("full", "not-the-secret-key").get_object(Bucket=setup.bucket, Key="k/obj")
    assert error_of(exc) == ("SignatureDoesNotMatch", 403)
    with pytest.raises(ClientError) as exc:
        setup.client("nobody").list_objects_v2(Bucket=setup.bucket)
    assert error_of(exc) == ("InvalidAccessKeyId", 403)
    unsigned = f"{setup.gateway.endpoint}/{setup.bucket}/k/obj"
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(unsigned, timeout=10)
    assert http.value.code == 403 and b"<Code>AccessDenied</Code>" in http.value.read()


def test_a_key_reads_only_its_scope(setup: Setup):
    public = put_origin(setup, "public/p.bin", 1000)
    put_origin(setup, "private/q.bin", 1000)
    reader = setup.client("reader")
    assert reader.get_object(Bucket=setup.bucket, Key="public/p.bin")["Body"].read() == public
    for key in ("private/q.bin", "publicity/x"):
        with pytest.raises(ClientError) as exc:
            reader.get_object(Bucket=setup.bucket, Key=key)
        assert error_of(exc) == ("AccessDenied", 403), key
    top = reader.list_objects_v2(Bucket=setup.bucket, Delimiter="/")
    assert [c["Prefix"] for c in top.get("CommonPrefixes", [])] == ["public/"]
    assert "Contents" not in top
    with pytest.raises(ClientError) as exc:
        reader.list_objects_v2(Bucket=setup.bucket, Prefix="private/")
    assert error_of(exc) == ("AccessDenied", 403)
    with pytest.raises(ClientError) as exc:
        reader.put_object(Bucket=setup.bucket, Key="public/new", Body=b"x")
    assert error_of(exc) == ("AccessDenied", 403)
    with pytest.raises(ClientError):
        origin().head_object(Bucket=setup.bucket, Key="public/new")


def test_presigned_urls_read_and_a_changed_one_is_refused(setup: Setup):
    data = put_origin(setup, "p/obj", 3000)
    url = setup.client().generate_presigned_url(
        "get_object", Params={"Bucket": setup.bucket, "Key": "p/obj"}, ExpiresIn=300
    )
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.read() == data
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(url.replace("p/obj", "p/obk"), timeout=10)
    assert http.value.code == 403 and b"SignatureDoesNotMatch" in http.value.read()
    v2 = s3_client(setup.gateway.endpoint, "full", signature_version="s3")
    legacy = v2.generate_presigned_url(
        "get_object", Params={"Bucket": setup.bucket, "Key": "p/obj"}, ExpiresIn=300
    )
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(legacy, timeout=10)
    assert http.value.code == 400 and b"AWS4-HMAC-SHA256" in http.value.read()


def test_a_put_reaches_the_origin_and_reads_back_from_the_cache(setup: Setup):
    data = os.urandom(6 * MiB + 7)
    gate = setup.client()
    put = gate.put_object(Bucket=setup.bucket, Key="w/put.bin", Body=data, Metadata={"run": "7"})
    stored = origin().get_object(Bucket=setup.bucket, Key="w/put.bin")
    assert stored["Body"].read() == data
    assert put["ETag"] == stored["ETag"]
    assert stored["Metadata"]["run"] == "7"
    before = setup.origin_gets()
    assert gate.get_object(Bucket=setup.bucket, Key="w/put.bin")["Body"].read() == data
    assert setup.origin_gets() == before


def test_a_multipart_upload_reaches_the_origin_and_reads_back_from_the_cache(setup: Setup):
    data = os.urandom(13 * MiB)
    gate = setup.client()
    chunks = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    gate.upload_fileobj(io.BytesIO(data), setup.bucket, "w/multi.bin", Config=chunks)
    assert origin().get_object(Bucket=setup.bucket, Key="w/multi.bin")["Body"].read() == data
    before = setup.origin_gets()
    assert gate.get_object(Bucket=setup.bucket, Key="w/multi.bin")["Body"].read() == data
    assert setup.origin_gets() == before
    upload = gate.create_multipart_upload(Bucket=setup.bucket, Key="w/aborted")["UploadId"]
    gate.upload_part(Bucket=setup.bucket, Key="w/aborted", UploadId=upload, PartNumber=1, Body=b"x")
    with pytest.raises(ClientError) as exc:
        setup.client("reader").upload_part(
            Bucket=setup.bucket, Key="w/aborted", UploadId=upload, PartNumber=2, Body=b"y"
        )
    assert error_of(exc) == ("NoSuchUpload", 404)
    gate.abort_multipart_upload(Bucket=setup.bucket, Key="w/aborted", UploadId=upload)
    with pytest.raises(ClientError) as exc:
        gate.complete_multipart_upload(
            Bucket=setup.bucket,
            Key="w/aborted",
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": "x"}]},
        )
    assert error_of(exc) == ("NoSuchUpload", 404)


def test_deletes_reach_the_origin_within_the_write_scope(setup: Setup):
    put_origin(setup, "d/obj", 10)
    gate = setup.client()
    assert gate.get_object(Bucket=setup.bucket, Key="d/obj")["Body"].read()
    gate.delete_object(Bucket=setup.bucket, Key="d/obj")
    with pytest.raises(ClientError):
        origin().head_object(Bucket=setup.bucket, Key="d/obj")
    with pytest.raises(ClientError) as exc:
        gate.get_object(Bucket=setup.bucket, Key="d/obj")
    assert error_of(exc) == ("NoSuchKey", 404)
    for key in ("d/1", "d/2", "public/d3"):
        put_origin(setup, key, 10)
    refused = setup.client("reader").delete_objects(
        Bucket=setup.bucket, Delete={"Objects": [{"Key": "public/d3"}]}
    )
    assert [e["Code"] for e in refused["Errors"]] == ["AccessDenied"]
    deleted = gate.delete_objects(
        Bucket=setup.bucket, Delete={"Objects": [{"Key": "d/1"}, {"Key": "d/2"}]}
    )
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["d/1", "d/2"]
    listed = origin().list_objects_v2(Bucket=setup.bucket, Prefix="d/")
    assert "Contents" not in listed
    assert origin().head_object(Bucket=setup.bucket, Key="public/d3")["ContentLength"] == 10


def test_anonymous_reads_only_with_allow_anonymous_and_its_token(setup: Setup):
    data = put_origin(setup, "public/anon.bin", 500)
    put_origin(setup, "private/anon.bin", 500)
    gateway = setup.start_gateway(
        "--allow-anonymous", "--token-file", str(setup.root / "anonymous.token")
    )
    try:
        with urllib.request.urlopen(
            f"{gateway.endpoint}/{setup.bucket}/public/anon.bin", timeout=10
        ) as answer:
            assert answer.read() == data
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(f"{gateway.endpoint}/{setup.bucket}/private/anon.bin")
        assert http.value.code == 403 and b"AccessDenied" in http.value.read()
        put = urllib.request.Request(
            f"{gateway.endpoint}/{setup.bucket}/public/anon-put", data=b"x", method="PUT"
        )
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(put, timeout=10)
        assert http.value.code == 403 and b"AccessDenied" in http.value.read()
    finally:
        gateway.stop()


def test_bad_requests_get_s3_errors(setup: Setup):
    gate = setup.client()
    with pytest.raises(ClientError) as exc:
        gate.get_bucket_acl(Bucket=setup.bucket)
    assert error_of(exc) == ("NotImplemented", 501)
    with pytest.raises(ClientError) as exc:
        gate.list_objects_v2(Bucket="Not_A_Bucket")
    assert error_of(exc)[1] == 400
    with pytest.raises(ClientError) as exc:  # outside the key's scope, existing or not
        gate.list_objects_v2(Bucket="no-such-bucket-here")
    assert error_of(exc) == ("AccessDenied", 403)


def test_a_directory_bucket_is_read_listed_and_written(setup: Setup):
    directory = setup.root / "local-bucket"
    (directory / "sub").mkdir()
    data = os.urandom(5 * MiB)
    (directory / "sub" / "f.bin").write_bytes(data)
    (directory / "top.txt").write_bytes(b"top")
    gate = setup.client()
    assert gate.get_object(Bucket=LOCAL, Key="sub/f.bin")["Body"].read() == data
    listing = gate.list_objects_v2(Bucket=LOCAL, Delimiter="/")
    assert [p["Prefix"] for p in listing["CommonPrefixes"]] == ["sub/"]
    assert [c["Key"] for c in listing["Contents"]] == ["top.txt"]
    before = setup.origin_gets()
    assert gate.get_object(Bucket=LOCAL, Key="sub/f.bin")["Body"].read() == data
    assert setup.origin_gets() == before
    gate.put_object(Bucket=LOCAL, Key="sub/new.txt", Body=b"written")
    assert (directory / "sub" / "new.txt").read_bytes() == b"written"
    with pytest.raises(ClientError) as exc:  # never out of the directory
        gate.get_object(Bucket=LOCAL, Key="sub/../../cluster.secret")
    assert error_of(exc) == ("InvalidArgument", 400)
    with pytest.raises(ClientError) as exc:
        setup.client("reader").get_object(Bucket=LOCAL, Key="top.txt")
    assert error_of(exc) == ("AccessDenied", 403)


def test_keys_with_spaces_plus_and_unicode_are_signed_read_and_listed(setup: Setup):
    key = "u/näme with space+plus=eq&amp;~.csv"
    data = put_origin(setup, key, 1234)
    gate = setup.client()
    assert gate.get_object(Bucket=setup.bucket, Key=key)["Body"].read() == data
    listed = gate.list_objects_v2(Bucket=setup.bucket, Prefix="u/n")  # encoding-type=url
    assert [c["Key"] for c in listed["Contents"]] == [key]
    assert [c["Key"] for c in gate.list_objects(Bucket=setup.bucket, Prefix="u/")["Contents"]] == [
        key
    ]
    url = gate.generate_presigned_url("get_object", Params={"Bucket": setup.bucket, "Key": key})
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.read() == data


def test_a_put_to_a_directory_bucket_sets_no_special_bits_owner_or_group_write(setup: Setup):
    directory = setup.root / "local-bucket"
    (directory / "meta").mkdir()
    setuid_everyone_writes = stat.S_IFREG | stat.S_ISUID | stat.S_ISGID | 0o777
    setup.client().put_object(
        Bucket=LOCAL,
        Key="meta/tool",
        Body=b"#!/bin/sh\nid\n",
        Metadata={"mode": str(setuid_everyone_writes), "uid": "4242", "gid": "4242"},
    )
    st = (directory / "meta" / "tool").stat()
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o755  # the caller's rwx bits, less group/other write
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_one_key_cannot_hold_every_multipart_upload_slot(setup: Setup):
    gate = setup.client()
    uploads: dict[str, str] = {}

    def create(key: str) -> None:
        uploads[key] = gate.create_multipart_upload(Bucket=setup.bucket, Key=key)["UploadId"]

    try:
        with pytest.raises(ClientError) as exc:  # (an upload another test left counts too)
            for n in range(MAX_UPLOADS_PER_KEY + 1):
                create(f"m/{n}")
        assert error_of(exc) == ("InvalidRequest", 400)
        gate.abort_multipart_upload(Bucket=setup.bucket, Key="m/0", UploadId=uploads.pop("m/0"))
        create("m/after-an-abort")
    finally:
        for key, upload in uploads.items():
            gate.abort_multipart_upload(Bucket=setup.bucket, Key=key, UploadId=upload)


def test_directory_bucket_errors_are_s3_errors_that_do_not_name_its_directory(setup: Setup):
    directory = setup.root / "local-bucket"
    (directory / "in-the-way").mkdir()
    (directory / "in-the-way" / "file").write_bytes(b"x")
    gate = setup.client()
    for call in (
        lambda: gate.put_object(Bucket=LOCAL, Key="in-the-way", Body=b"y"),
        lambda: gate.put_object(Bucket=LOCAL, Key="in-the-way/file/under", Body=b"y"),
        lambda: gate.delete_object(Bucket=LOCAL, Key="in-the-way"),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == ("InvalidArgument", 400)
    assert (directory / "in-the-way" / "file").read_bytes() == b"x"
    for call in (
        lambda: setup.client("reader").get_object(Bucket=LOCAL, Key="in-the-way/file"),
        lambda: setup.client("reader").list_objects_v2(Bucket=LOCAL, Prefix="in-the-way/"),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == ("AccessDenied", 403)
        assert str(setup.root) not in exc.value.response["Error"]["Message"]


def test_a_second_completion_of_an_upload_in_progress_is_refused(setup: Setup):
    gate = setup.client()
    key = "w/twice"
    upload = gate.create_multipart_upload(Bucket=setup.bucket, Key=key)["UploadId"]
    parts, data = [], b""
    for number in (1, 2, 3):
        body = os.urandom(5 * MiB)
        sent = gate.upload_part(
            Bucket=setup.bucket, Key=key, UploadId=upload, PartNumber=number, Body=body
        )
        parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        data += body

    def complete(client) -> str:  # type: ignore[no-untyped-def]
        try:
            client.complete_multipart_upload(
                Bucket=setup.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except ClientError as exc:
            return exc.response["Error"]["Code"]
        return "done"

    # Two completions at once (a client's retry): they joined the same parts file.
    clients = [setup.client(), setup.client()]
    for client in clients:  # connected, and botocore's lazy loading done, before the race
        client.head_bucket(Bucket=setup.bucket)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(complete, clients))
    assert outcomes.count("done") == 1
    assert set(outcomes) - {"done"} <= {"NoSuchUpload", "OperationAborted"}
    assert origin().get_object(Bucket=setup.bucket, Key=key)["Body"].read() == data
