"""`Storage`: one object carries the object store's options from a config's `storage:` section
to every reader and writer, on the driver and (pickled) in Ray tasks and actors."""

from __future__ import annotations

import pickle

import pytest

from surgray.io.errors import VideoError
from surgray.io.storage import LOCAL, Storage
from surgray.io.storage_config import StorageConfig


def test_local_files_round_trip(tmp_path):
    uri = str(tmp_path / "a" / "b" / "payload.bin")
    assert not LOCAL.exists(uri)
    LOCAL.write_bytes(uri, b"surgical")  # parent folders are created
    assert LOCAL.exists(uri) and LOCAL.read_bytes(uri) == b"surgical"
    assert LOCAL.read_bytes(f"file://{uri}") == b"surgical"
    with LOCAL.open(str(tmp_path / "c" / "note.txt"), "wb") as handle:
        handle.write(b"note")
    with LOCAL.open_for_read(str(tmp_path / "c" / "note.txt")) as handle:
        assert handle.read() == b"note"
    with pytest.raises(VideoError, match="missing.bin: file not found"):
        with LOCAL.open_for_read(str(tmp_path / "missing.bin")):
            pass


def test_local_target_leaves_nothing_when_the_write_fails(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with LOCAL.local_target(str(target), suffix=".mp4") as path:
            path.write_bytes(b"half")
            raise RuntimeError("encoder crashed")
    assert list(tmp_path.iterdir()) == []
    with LOCAL.local_target(str(target), suffix=".mp4") as path:
        path.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"


def test_unknown_scheme_is_named():
    with pytest.raises(VideoError, match="nosuch://x/y: unknown URI scheme 'nosuch'"):
        LOCAL.filesystem("nosuch://x/y")


def test_config_section_builds_the_fsspec_options():
    storage = StorageConfig(
        endpoint_url="http://127.0.0.1:9000", region="eu-west-1", anon=True, options={"a": 1}
    ).build()
    assert storage == Storage(
        {
            "endpoint_url": "http://127.0.0.1:9000",
            "client_kwargs": {"region_name": "eu-west-1"},
            "anon": True,
            "a": 1,
        }
    )
    assert StorageConfig().build() == LOCAL
    assert hash(storage) == hash(Storage(dict(storage.options)))  # usable in frozen settings
    assert pickle.loads(pickle.dumps(storage)) == storage
    with pytest.raises(ValueError, match=r"credentials \['secret'\] do not belong in the config"):
        StorageConfig(options={"secret": "x"})


def test_object_store_round_trip(s3_server):
    bucket = s3_server.make_bucket("storage-object")
    storage = s3_server.storage
    uri = f"{bucket}/deep/payload.bin"
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"abc" * 1000)
    assert storage.exists(uri) and storage.read_bytes(uri) == b"abc" * 1000
    with storage.open_for_read(uri, block_size=1024) as handle:
        handle.seek(2997)
        assert handle.read() == b"abc"
    with storage.open(f"{bucket}/other.txt", "wb") as handle:
        handle.write(b"x")
    assert s3_server.filesystem().cat_file("storage-object/other.txt") == b"x"


@pytest.mark.ray
def test_a_storage_sent_to_a_ray_task_opens_the_bucket(ray_cluster, s3_server):
    """The driver's `Storage` is pickled into the task, options and all: the task reads the
    object the driver wrote, through the store the driver named (not the environment's)."""
    import ray

    bucket = s3_server.make_bucket("storage-ray")
    storage = StorageConfig(endpoint_url=s3_server.endpoint_url, region=s3_server.region).build()
    storage.write_bytes(f"{bucket}/hello.txt", b"from the driver")

    @ray.remote(num_cpus=0.25)
    def read_back(store: Storage, uri: str) -> tuple[bytes, dict]:
        return store.read_bytes(uri), dict(store.options)

    payload, options = ray.get(read_back.remote(storage, f"{bucket}/hello.txt"), timeout=120)
    assert payload == b"from the driver"
    assert options["endpoint_url"] == s3_server.endpoint_url


@pytest.mark.parametrize(
    ("kind", "data", "where"),
    [
        (
            "annotate",
            {
                "inputs": {"manifest": "m.csv"},
                "output": {"prefix": "/tmp/out"},
                "model": {"checkpoint": "demo:model"},
                "storage_options": {"endpoint_url": "http://x"},
            },
            "storage_options",
        ),
        (
            "train",
            {"checkpoint": {"storage_options": {"endpoint_url": "http://x"}}},
            "checkpoint.storage_options",
        ),
        (
            "serve",
            {
                "model": {"checkpoint": "random:0"},
                "review": {
                    "sources": [{"name": "a", "uri": "/data/a", "storage_options": {"anon": True}}]
                },
            },
            "review.sources[0].storage_options",
        ),
    ],
)
def test_the_old_storage_options_key_says_what_to_write_instead(kind, data, where):
    from surgray.annotate.config import AnnotateConfig
    from surgray.errors import UserError
    from surgray.serving.config import ServeConfig
    from surgray.train.config import parse_train_config

    parse = {
        "annotate": AnnotateConfig.from_dict,
        "train": parse_train_config,
        "serve": lambda d: ServeConfig.from_args(d),
    }[kind]
    with pytest.raises(UserError) as caught:
        parse(data)
    message = str(caught.value)
    assert f"{where}: no longer read; write object-store options as a `storage:` section" in message
    assert "unknown key" not in message
