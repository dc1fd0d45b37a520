"""devtools.loopback's in-process moto (what bench_archive_scale seeds 100,000s of objects
with): an object written into the backend looks, to a client over HTTP, exactly as one PUT
over HTTP, and the paged ListObjectsV2 answers exactly as moto's own."""

from __future__ import annotations

import itertools

import pytest

from devtools.loopback import (
    InProcessMoto,
    paged_list_objects_v2,
    stock_list_objects_v2,
    use_stock_listing,
)

BUCKET = "seeded"


@pytest.fixture(scope="module")
def moto_here():
    server = InProcessMoto(paged_listing=True)
    try:
        yield server
    finally:
        server.stop()
        use_stock_listing()


def _client(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-west-2",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _listed(client, prefix: str) -> list[dict]:
    keep = ("ETag", "ChecksumAlgorithm", "Size", "StorageClass")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [{k: o.get(k) for k in keep} for page in pages for o in page.get("Contents", [])]


def test_a_seeded_object_lists_and_reads_as_one_put_over_http(moto_here):
    client = _client(moto_here.endpoint)
    client.create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "us-west-2"}
    )
    body = b'{"video": "case1", "parts": 3}\n' * 40
    client.put_object(Bucket=BUCKET, Key="http/one.json", Body=body)
    moto_here.put_objects({f"{BUCKET}/direct/one.json": body}, like=f"{BUCKET}/http/one.json")
    http, direct = _listed(client, "http/"), _listed(client, "direct/")
    assert http == direct and http[0]["ETag"] and http[0]["Size"] == len(body)
    heads = [client.head_object(Bucket=BUCKET, Key=k) for k in ("http/one.json", "direct/one.json")]
    keep = ("ETag", "ContentLength", "ContentType", "Metadata")
    assert [{k: h.get(k) for k in keep} for h in heads][0] == {k: heads[1].get(k) for k in keep}
    assert client.get_object(Bucket=BUCKET, Key="direct/one.json")["Body"].read() == body
    # another body gets its own tag, as a PUT would
    moto_here.put_objects({f"{BUCKET}/direct/two.json": b"other"}, like=f"{BUCKET}/http/one.json")
    client.put_object(Bucket=BUCKET, Key="http/two.json", Body=b"other")
    assert _listed(client, "http/") == _listed(client, "direct/")


def test_paged_listing_gives_moto_s_own_pages(moto_here):
    client = _client(moto_here.endpoint)
    names = [
        "out/_done/a.json", "out/_done/b.json", "out/masks/video_id=a/p0.parquet",
        "out/masks/video_id=a/p1.parquet", "out/masks/video_id=b/p0.parquet",
        "out/masks/video_id=b.parquet", "out/masks.txt", "out/status/video_id=a.json",
        "other/x", "out/masks/video_id=c/sub/p.parquet", "out/z",
    ]  # fmt: skip
    moto_here.put_objects(
        {f"{BUCKET}/{n}": n.encode() for n in names}, like=f"{BUCKET}/http/one.json"
    )
    backend = moto_here.backend()
    bucket = backend.get_bucket(BUCKET)

    def pages(lister, prefix, delimiter, max_keys, start_after):
        out, token = [], None
        for _ in range(100):
            page, truncated, token = lister(
                backend, bucket, prefix, delimiter, token, None if token else start_after, max_keys
            )
            out.append(([e if isinstance(e, str) else e.name for e in page], truncated))
            if not truncated:
                return out
        raise AssertionError("listing did not end")

    combos = itertools.product(
        ["", "out/", "out/masks/", "out/masks", "out/_done/", "none/"],
        [None, "/"],
        [1, 2, 3, 1000],
        [None, "out/masks/video_id=a/"],
    )
    for prefix, delimiter, max_keys, start_after in combos:
        stock = pages(stock_list_objects_v2, prefix, delimiter, max_keys, start_after)
        paged = pages(paged_list_objects_v2, prefix, delimiter, max_keys, start_after)
        assert paged == stock, (prefix, delimiter, max_keys, start_after)
    assert pages(paged_list_objects_v2, "out/", "/", 1000, None)[0][0] == [
        "out/_done/", "out/masks.txt", "out/masks/", "out/status/", "out/z",
    ]  # fmt: skip
    # and over HTTP, through the server's patched backend
    assert [o["Size"] for o in _listed(client, "out/masks/")] == [
        len(n) for n in sorted(names) if n.startswith("out/masks/")
    ]
