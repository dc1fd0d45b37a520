"""The Serve application's default model, the shipped referring demo checkpoint, over real HTTP.

`serve run serve.app:app insecure=true` serves `demo:referring` (issue 8's demo, with the
checkpoint of issue 6). One replica on the local Ray cluster takes a real H.264 clip on
`/v1/segment` and text expressions in a session; every mask is compared with a `Tracker` run
in this process on the same decoded frames, the same expressions and the same file.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from _local_http import encode, import_serve_app, serve_http

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
import_serve_app()

FRAMES, SIZE, SEED = 8, 128, 11


@pytest.fixture(scope="module")
def clip():
    from surgray.demo_inputs import write_clip

    folder = Path(tempfile.mkdtemp(prefix="srt-clip"))
    try:
        yield write_clip(folder, FRAMES, SIZE, SEED)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def base_url(ray_cluster):
    from ray import serve

    from serve.app import build_app_from_args

    with serve_http() as url:
        # The defaults a user gets from `serve run serve.app:app insecure=true`, on a small
        # slice of the test cluster.
        serve.run(
            build_app_from_args({"insecure": "true", "replicas": 1, "num_cpus": 0.5}),
            name="surgray-demo",
            route_prefix="/",
        )
        yield url


@pytest.fixture(scope="module")
def local_tracker():
    """The same checkpoint in this process, one torch thread as in the replica."""
    import torch

    from surgray.serving.config import ServedModel
    from surgray.serving.model_loading import load_served_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        served = ServedModel(variant="micro", checkpoint="demo:referring", image_size=SIZE)
        yield load_served_model(served, device="cpu").tracker
    finally:
        torch.set_num_threads(threads)


def decoded_frames(path: Path) -> list[np.ndarray]:
    from surgray.io.video import VideoReader

    with VideoReader(str(path)) as reader:
        return [frame.image for frame in reader]


def local_masks(tracker, frames: list[np.ndarray], expressions: list[str]) -> list[np.ndarray]:
    """[objects, H, W] bool per frame, objects numbered 1.. in the order of `expressions`."""
    video = tracker.start("local", frames[0].shape[:2])
    for obj_id, text in enumerate(expressions, start=1):
        tracker.add_text(video, obj_id, text)
    masks = []
    for image in frames:
        result = tracker.step(video, image)
        assert [obj.obj_id for obj in result.objects] == list(range(1, len(expressions) + 1))
        masks.append(np.stack([obj.mask for obj in result.objects]))
    tracker.close(video)
    return masks


def served_masks(objects: list[dict]) -> np.ndarray:
    from surgray.io.masks import decode_rle

    return decode_rle([obj["rle"] for obj in objects])


def test_models_announce_the_demo_checkpoint_with_text_prompts(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as http:
        [model] = http.get("/v1/models").json()["models"]
    assert (model["variant"], model["image_size"], model["text_prompts"]) == ("micro", 128, True)
    assert "shipped demo checkpoint" in model["description"]


def test_segment_streams_a_video_like_a_local_tracker(base_url, clip, local_tracker):
    from surgray.serving.schemas import parse_ndjson_line

    expressions = list(clip.expressions)[:2]
    with httpx.Client(base_url=base_url, timeout=120) as http:
        with http.stream(
            "POST",
            "/v1/segment",
            params=[("expression", text) for text in expressions],
            content=clip.video.read_bytes(),
            headers={"Content-Type": "video/mp4"},
        ) as response:
            assert response.status_code == 200, response.read()
            lines = [parse_ndjson_line(line) for line in response.iter_lines() if line]
    assert [line.type for line in lines] == ["frame"] * FRAMES + ["end"]
    assert lines[-1].frames == FRAMES
    want = local_masks(local_tracker, decoded_frames(clip.video), expressions)
    for index, line in enumerate(lines[:-1]):
        assert line.frame_index == index
        assert [obj.label for obj in line.objects] == expressions
        got = served_masks([obj.model_dump() for obj in line.objects])
        assert np.array_equal(got, want[index]), f"frame {index}"
    assert any(mask.any() for mask in want)  # the text head finds something


def test_a_text_session_matches_and_bad_videos_are_refused(base_url, clip, local_tracker):
    expressions = list(clip.expressions)[-1:]
    frames = decoded_frames(clip.video)
    with httpx.Client(base_url=base_url, timeout=60) as http:
        created = http.post("/v1/sessions", json={"expressions": expressions})
        assert created.status_code == 201, created.text
        session = created.json()
        assert (session["expressions"], session["obj_ids"]) == (expressions, [1])
        sid = session["session_id"]
        headers = {"X-Session-Id": sid, "Content-Type": "image/png"}
        results = []
        for image in frames:
            response = http.post(
                f"/v1/sessions/{sid}/frames", content=encode(image), headers=headers
            )
            assert response.status_code == 200, response.text
            results.append(response.json()["objects"])
        assert http.delete(f"/v1/sessions/{sid}", headers={"X-Session-Id": sid}).status_code == 204
        bad = http.post(
            "/v1/segment",
            params={"expression": expressions[0]},
            content=b"\x00\x00\x00\x18ftypmp42 but not a video",
            headers={"Content-Type": "video/mp4"},
        )
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_video", bad.text
        assert http.get("/healthz").status_code == 200  # the replica is still serving
    want = local_masks(local_tracker, frames, expressions)
    for index, objects in enumerate(results):
        assert [(obj["obj_id"], obj["label"]) for obj in objects] == [(1, expressions[0])]
        assert objects[0]["state"] in ("searching", "tracking", "lost")
        assert np.array_equal(served_masks(objects), want[index]), f"frame {index}"
