"""The review page's HTTP API (no browser): the page and its files, clips, the allow-list of
annotation stores (nothing else is readable: `../`, absolute paths, unlisted `s3://`), review
saves as revisions with a 409 for a stale one, exports. The app runs under uvicorn on
127.0.0.1 with the shipped demo checkpoint; the browser tests are in test_ui_browser.py."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _local_http import free_port

from surgray.io.storage import LOCAL

httpx = pytest.importorskip("httpx")

TOKEN = "ui-api-token-0123456789"
VIDEO = "case-1"
FRAMES, SIZE = 6, 32


def _store(root: Path, source_uri: str | None, video: str = VIDEO, low: float = 0.3) -> None:
    """A small store written by the annotate job's own writers."""
    from surgray.annotate.outputs import OutputLayout, SegmentWriter, finalize_video
    from surgray.annotate.provenance import Provenance
    from surgray.annotate.status import SegmentResult, combine_segments
    from surgray.io.records import MaskRecord

    layout = OutputLayout(str(root), storage=LOCAL)
    writer = SegmentWriter(layout, video, 0, rows_per_part=4).start()
    for frame in range(FRAMES):
        masks = np.zeros((2, SIZE, SIZE), dtype=bool)
        masks[0, 4:12, frame : frame + 8] = True
        masks[1, 20:28, 10:20] = True
        writer.add(
            MaskRecord.from_masks(video, frame, [1, 2], ["grasper", "tissue"], [0.9, low], masks)
        )
    result = SegmentResult(video, 0, 1, frames=FRAMES, object_ids=(1, 2), parts=writer.close())
    provenance = Provenance("0.1", "c" * 64, "k" * 64, "p" * 64, "{}")
    finalize_video(layout, combine_segments(video, [result], provenance, source_uri=source_uri))


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    from surgray.data.synthetic import SyntheticClipConfig, generate_clip
    from surgray.data.synthetic_writers import write_clip_video

    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    config = SyntheticClipConfig(num_frames=FRAMES, height=SIZE, width=SIZE, leave_and_return=False, occlusion=False, smoke=False, motion_blur=False)  # fmt: skip
    write_clip_video(generate_clip(config, seed=3), str(path))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, clip_file):
    import uvicorn

    from surgray.serving.auth import build_token_checker
    from surgray.serving.config import ServeConfig
    from surgray.serving.http_app import build_app
    from surgray.serving.service import SegmentationService
    from surgray.serving.tracker_backend import TrackerBackend

    root = tmp_path_factory.mktemp("stores")
    batch, live = root / "batch", root / "live"
    _store(batch, str(clip_file))
    _store(batch, str(clip_file), video="a-confident-case", low=0.8)
    _store(root / "hashed", None)  # ids hashed for privacy: the store does not name the video
    config = ServeConfig.from_args(
        {
            "model": {"variant": "micro", "checkpoint": "demo:referring", "image_size": 128},
            "review": {
                "sources": [
                    {"name": "batch", "uri": str(batch), "description": "a job's output"},
                    {"name": "live", "uri": str(live)},
                    {"name": "hashed", "uri": str(root / "hashed"), "writable": False},
                ],
                "live_source": "live",
            },
        }
    )
    service = SegmentationService(TrackerBackend.from_config(config), config)
    checker = build_token_checker(config.auth, {"SURGRAY_API_TOKENS": TOKEN})
    app = build_app(service, checker)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)  # fmt: skip
    try:
        yield client, batch, live
    finally:
        client.close()
        uv.should_exit = True
        thread.join(timeout=10)
        service.shutdown()
        service.backend.close()


def _digests(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "revisions" not in p.parts
    }


def test_the_page_is_served_and_its_api_needs_the_token(server):
    client, _, _ = server
    for path in ("/", "/ui"):
        page = httpx.get(str(client.base_url) + path)
        assert page.status_code == 200 and "Review batch results" in page.text
    assert httpx.get(str(client.base_url) + "/ui/static/app.js").status_code == 200
    assert httpx.get(str(client.base_url) + "/ui/static/../config.py").status_code == 404
    denied = httpx.get(str(client.base_url) + "/ui/api/whoami")
    assert denied.status_code == 401
    me = client.get("/ui/api/whoami").json()
    assert me["reviewer"].startswith("token-") and TOKEN not in json.dumps(me)
    assert [s["name"] for s in me["sources"]] == ["batch", "live", "hashed"] and me["text_prompts"]
    assert "uri" not in json.dumps(me["sources"])  # the page never sees a path


@pytest.mark.parametrize(
    "source",
    [
        "../batch",
        "/etc",
        "/tmp",
        "s3://other-bucket/out",
        "s3://other-bucket/../batch",
        "batch/..",
        "file:///etc",
    ],
)
def test_only_allow_listed_stores_are_readable(server, source):
    client, _, _ = server
    for path in ("/ui/api/review/videos", "/ui/api/review/video", "/ui/api/review/frames"):
        response = client.get(path, params={"source": source, "video_id": VIDEO})
        assert response.status_code == 403, (path, source, response.text)
        assert response.json()["error"] == "not_on_allow_list"


@pytest.mark.parametrize("video_id", ["../case-1", "..", "/etc/passwd", "a/b", "%2e%2e"])
def test_video_ids_cannot_name_paths(server, video_id):
    client, _, _ = server
    response = client.get("/ui/api/review/video", params={"source": "batch", "video_id": video_id})
    assert response.status_code == 403, response.text


def test_clips_from_an_upload_and_the_demo(server, clip_file):
    client, _, _ = server
    clip = client.post("/ui/api/clips?name=x.mp4", content=clip_file.read_bytes(), headers={"Content-Type": "video/mp4"}).json()  # fmt: skip
    assert clip["num_frames"] == FRAMES and (clip["width"], clip["height"]) == (SIZE, SIZE)
    assert base64.b64decode(clip["frames"][0])[:2] == b"\xff\xd8"  # JPEG
    bad = client.post(
        "/ui/api/clips", content=b"\x00not a video" * 50, headers={"Content-Type": "video/mp4"}
    )
    assert bad.status_code == 422 and "cannot decode" in bad.json()["message"]
    demo = client.get("/ui/api/demo-clips/0").json()
    assert demo["num_frames"] == 48 and demo["expressions"]
    assert client.get("/ui/api/demo-clips/9").status_code == 404


def test_review_save_is_a_revision_and_a_stale_save_gets_409(server):
    client, batch, _ = server
    before = _digests(batch)
    listing = client.get("/ui/api/review/videos", params={"source": "batch"}).json()["videos"]
    assert [(v["video_id"], v["status"], v["frames"], v["objects"]) for v in listing] == [
        (VIDEO, "done", FRAMES, 2),  # worst first, though its id sorts after the other's
        ("a-confident-case", "done", FRAMES, 2),
    ]
    assert listing[0]["worst_object_score"] == pytest.approx(0.3)
    detail = client.get(
        "/ui/api/review/video", params={"source": "batch", "video_id": VIDEO}
    ).json()
    assert detail["revision"] == 0 and detail["has_frames"] and len(detail["masks"]) == FRAMES
    frames = client.get(
        "/ui/api/review/frames", params={"source": "batch", "video_id": VIDEO, "count": 4}
    ).json()
    assert len(frames["frames"]) == 4

    new_mask = detail["masks"]["0"][0]["rle"]  # object 1's frame-0 mask, put on frames 3..5
    body = {
        "source": "batch", "video_id": VIDEO, "parent": 0,
        "corrections": [{"obj_id": 2, "label": "liver", "from_frame": 3, "prompts": [{"frame": 3, "point": [5, 5], "label": 1}],
                         "masks": [{"frame_idx": f, "obj_id": 2, "score": 1.0, "rle": new_mask} for f in range(3, FRAMES)]}],
    }  # fmt: skip
    saved = client.post("/ui/api/review/save", json=body)
    assert saved.status_code == 201, saved.text
    record = saved.json()
    assert (record["revision"], record["parent"], record["objects_changed"]) == (1, 0, [2])
    assert record["frames_changed"] == [3, 4, 5] and record["author"].startswith("token-")
    assert TOKEN not in saved.text
    stale = client.post("/ui/api/review/save", json=body)  # a second reviewer, from revision 0
    assert stale.status_code == 409 and stale.json()["error"] == "revision_conflict"
    assert "revision 1 is the latest" in stale.json()["message"]
    assert _digests(batch) == before  # the job's parts, status and marker: byte-identical

    latest = client.get(
        "/ui/api/review/video", params={"source": "batch", "video_id": VIDEO}
    ).json()
    assert latest["revision"] == 1 and latest["masks"]["4"][1]["rle"] == new_mask
    assert {o["obj_id"]: o["label"] for o in latest["objects"]}[2] == "liver"
    old = client.get(
        "/ui/api/review/video", params={"source": "batch", "video_id": VIDEO, "revision": 0}
    ).json()
    assert old["masks"]["4"][1]["rle"] != new_mask
    assert (
        client.get(
            "/ui/api/review/video", params={"source": "batch", "video_id": VIDEO, "revision": 5}
        ).status_code
        == 404
    )

    davis = client.get(
        "/ui/api/review/export", params={"source": "batch", "video_id": VIDEO, "format": "davis"}
    )
    assert (
        davis.status_code == 200 and f"{VIDEO}-r1-davis.zip" in davis.headers["content-disposition"]
    )
    assert len(zipfile.ZipFile(io.BytesIO(davis.content)).namelist()) == FRAMES
    sav = client.get(
        "/ui/api/review/export", params={"source": "batch", "video_id": VIDEO, "format": "sav_json"}
    ).json()
    assert sav["video_frame_count"] == FRAMES and sav["masklet_label"] == ["grasper", "liver"]
    coco = client.get(
        "/ui/api/review/export",
        params={"source": "batch", "video_id": VIDEO, "format": "coco_video", "revision": 0},
    ).json()
    assert {c["name"] for c in coco["categories"]} >= {"tissue"}
    bad = client.get(
        "/ui/api/review/export", params={"source": "batch", "video_id": VIDEO, "format": "zip"}
    )
    assert bad.status_code == 422


def test_live_saves_need_frames_first_and_then_conflict_when_stale(server, clip_file):
    client, _, live = server
    clip = client.post(
        "/ui/api/clips", content=clip_file.read_bytes(), headers={"Content-Type": "video/mp4"}
    ).json()
    mask = {"size": [SIZE, SIZE], "counts": [SIZE * SIZE]}
    body = {"video_id": "x-clip-1", "parent": 0, "frames": FRAMES, "objects": [{"obj_id": 1, "label": "grasper"}],
            "masks": [{"frame_idx": f, "obj_id": 1, "score": 0.5, "rle": mask} for f in range(FRAMES)]}  # fmt: skip
    assert client.post("/ui/api/live/save", json=body).status_code == 422  # no frames yet
    first = client.post("/ui/api/live/save", json={**body, "frames_jpeg": clip["frames"]})
    assert first.status_code == 201 and first.json()["revision"] == 1
    assert (
        client.post("/ui/api/live/save", json={**body, "frames_jpeg": clip["frames"]}).status_code
        == 409
    )
    again = client.post("/ui/api/live/save", json={**body, "parent": 1})
    assert again.status_code == 201 and again.json()["revision"] == 2
    frames = client.get(
        "/ui/api/review/frames", params={"source": "live", "video_id": "x-clip-1"}
    ).json()
    assert frames["frames"] == clip["frames"]
    bad_id = client.post(
        "/ui/api/live/save", json={**body, "video_id": "../x", "frames_jpeg": clip["frames"]}
    )
    assert bad_id.status_code == 403
    assert not any(p.name == "x" for p in live.parent.rglob("x"))


def test_review_config_refuses_relative_and_dotdot_uris():
    from surgray.serving.config import ServeConfig, ServeConfigError

    model = {"checkpoint": "demo:referring"}
    for uri in ("relative/path", "/data/../etc", "s3://bucket/a/../b"):
        with pytest.raises(ServeConfigError, match="review"):
            ServeConfig.from_args(
                {"model": model, "review": {"sources": [{"name": "a", "uri": uri}]}}
            )
    with pytest.raises(ServeConfigError, match="live_source"):
        ServeConfig.from_args({"model": model, "review": {"sources": [], "live_source": "nope"}})


def test_review_dir_on_the_command_line_is_the_pages_store(tmp_path, monkeypatch):
    from _local_http import import_serve_app

    import_serve_app()
    from serve.app import resolve_args

    monkeypatch.chdir(tmp_path)
    config, _ = resolve_args({"insecure": "true", "review_dir": "out/review"})
    assert [(s.name, s.uri) for s in config.review.sources] == [
        ("local", str(tmp_path / "out/review"))
    ]
    assert config.review.live_source == "local"
    plain, _ = resolve_args({"insecure": "true"})
    assert plain.review.sources == [] and plain.review.live_source is None


def test_a_store_without_source_videos_shows_masks_only_and_read_only_refuses_saves(server):
    client, _, _ = server
    params = {"source": "hashed", "video_id": VIDEO}
    detail = client.get("/ui/api/review/video", params=params).json()
    assert detail["has_frames"] is False and len(detail["masks"]) == FRAMES
    frames = client.get("/ui/api/review/frames", params=params)
    assert frames.status_code == 404 and frames.json()["error"] == "no_frames"
    rle = detail["masks"]["0"][0]["rle"]
    body = {"source": "hashed", "video_id": VIDEO, "parent": 0, "corrections": [
        {"obj_id": 1, "from_frame": 0, "masks": [{"frame_idx": 0, "obj_id": 1, "rle": rle}]}]}  # fmt: skip
    refused = client.post("/ui/api/review/save", json=body)
    assert refused.status_code == 403 and "read-only" in refused.json()["message"]
