"""Every size the server decodes is bounded before it is decoded, and a request that fails or is
cancelled leaves no session behind (issue 22).

In process: the service and its real FastAPI app over the micro model (random weights), for
the statuses and the cancel paths. Over real HTTP to Ray Serve (one replica, 8 session slots):
a ~100-byte body declaring a 65535 x 65535 mask is answered 413 within a second, the replica's
resident memory does not move, and all 8 slots are free afterwards. The measured figures are
printed (run with -s to see them).
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from _local_http import import_serve_app, serve_http

from surgray.io.masks import encode_rle
from surgray.serving.config import ServeConfig
from surgray.serving.request_scope import RequestCancelled, RequestScope
from surgray.serving.schemas import CreateSessionRequest, PromptsRequest
from surgray.serving.session_prompts import InvalidPrompt, MaskPromptTooLarge

TOKEN = "bounds-test-token-0123456789"
HUGE = {"size": [65535, 65535], "counts": "0" * 8}  # runs that do not cover it, too


def _huge_valid_counts() -> str:
    """Compressed counts of [65535*65535 - 1 background, 1 foreground] (pycocotools' format):
    runs that do cover the declared size, so only the size check can stop it."""
    from surgray.io.rle_check import compressed_runs

    def encode_value(x: int) -> str:
        out = ""
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if c & 0x10 else (x != 0)
            if more:
                c |= 0x20
            out += chr(c + 48)
        return out

    counts = encode_value(65535 * 65535 - 1) + encode_value(1)
    assert compressed_runs(counts).tolist() == [65535 * 65535 - 1, 1]
    return counts


def _mask_object(mask: dict) -> dict:
    return {"mask": mask}


@pytest.fixture(scope="module")
def service():
    from surgray.serving.service import SegmentationService
    from surgray.serving.tracker_backend import TrackerBackend

    config = ServeConfig.from_args(
        {
            "model": {"variant": "micro", "checkpoint": "random:2", "image_size": 64},
            "sessions": {"max_per_replica": 8},
            "limits": {"max_image_side": 256},
        }
    )
    backend = TrackerBackend.from_config(config)
    built = SegmentationService(backend, config)
    yield built
    built.shutdown()
    backend.close()


def _create(**body) -> CreateSessionRequest:
    return CreateSessionRequest.model_validate(body)


def test_huge_mask_prompts_are_refused_before_decoding(service):
    for mask in (HUGE, {"size": [65535, 65535], "counts": _huge_valid_counts()}):
        started = time.perf_counter()
        with pytest.raises(MaskPromptTooLarge) as caught:
            service.create_session(_create(objects=[_mask_object(mask)]))
        assert time.perf_counter() - started < 0.5
        assert caught.value.status == 413 and "65535x65535" in caught.value.message
    assert len(service.store) == 0


def test_mask_runs_that_do_not_cover_the_declared_size_are_422(service):
    for counts in ("0" * 8, "o" * 10, "\x01bad", "1" * 3):
        with pytest.raises(InvalidPrompt):
            service.create_session(
                _create(objects=[_mask_object({"size": [40, 40], "counts": counts})])
            )
    assert len(service.store) == 0


def test_a_mask_of_another_size_than_the_sessions_frames_is_refused_undecoded(service):
    mask = encode_rle(np.pad(np.ones((1, 8, 8), bool), ((0, 0), (4, 36), (4, 52))))[0]
    info = service.create_session(_create(objects=[_mask_object(mask)]))
    try:
        wrong = {"size": [200, 200], "counts": _all_background(200 * 200)}
        with pytest.raises(InvalidPrompt, match="the mask is 200x200"):
            service.add_prompts(
                info.session_id, PromptsRequest(objects=[{"obj_id": 9, "mask": wrong}])
            )
    finally:
        service.delete_session(info.session_id)


def _all_background(pixels: int) -> str:
    from surgray.io.masks import encode_rle as enc

    side = int(pixels**0.5)
    return enc(np.zeros((1, side, side), bool))[0]["counts"]


def test_a_cancelled_create_frees_its_session_whenever_the_cancel_comes(service):
    box = [{"box": [4, 4, 30, 30]}]
    early = RequestScope()
    early.cancel()
    with pytest.raises(RequestCancelled):
        service.create_session(_create(objects=box), early)
    assert len(service.store) == 0
    late = RequestScope()
    info = service.create_session(_create(objects=box), late)  # answered, then the client left
    assert service.store.session_ids() == [info.session_id]
    late.cancel()
    assert len(service.store) == 0
    expired = RequestScope(deadline=time.monotonic() - 1)
    with pytest.raises(RequestCancelled):
        service.create_session(_create(objects=box), expired)
    assert len(service.store) == 0


def test_the_real_app_answers_413_and_422(service):
    from fastapi.testclient import TestClient

    from surgray.serving.http_app import build_app

    app = build_app(service, _open_checker())
    with TestClient(app) as client:
        huge = client.post("/v1/sessions", json={"objects": [_mask_object(HUGE)]})
        assert huge.status_code == 413 and huge.json()["error"] == "mask_too_large", huge.text
        bad = client.post(
            "/v1/sessions", json={"objects": [_mask_object({"size": [9, 9], "counts": "zz"})]}
        )
        assert bad.status_code == 422, bad.text
    assert len(service.store) == 0


def _open_checker():
    from surgray.serving.auth import build_token_checker
    from surgray.serving.config import AuthConfig

    return build_token_checker(AuthConfig(insecure_no_auth=True))


# -- real HTTP to Ray Serve ------------------------------------------------------------------------
def _replica_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"ServeReplica:bounds:SegmentationServer" in cmdline:
            pids.append(int(entry.name))
    return pids


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.ray
def test_serve_huge_mask_is_413_in_a_second_and_frees_every_slot(ray_cluster):
    httpx = pytest.importorskip("httpx")
    from ray import serve

    import_serve_app()
    from serve.app import build_app_from_args

    env = {"SURGRAY_API_TOKENS": TOKEN, "SURGRAY_SESSION_KEY": "bounds-key"}
    temp = tempfile.mkdtemp(prefix="sgb", dir="/tmp")
    try:
        with serve_http() as url:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("SURGRAY_API_TOKENS", TOKEN)
                app = build_app_from_args(
                    {
                        "model": {"variant": "micro", "checkpoint": "random:2", "image_size": 64},
                        "replicas": 1,
                        "ray_actor_options": {"num_cpus": 0.4, "runtime_env": {"env_vars": env}},
                        "sessions": {"max_per_replica": 8, "idle_timeout_s": 600},
                        "limits": {"max_image_side": 1024},
                    }
                )
            serve.run(app, name="bounds", route_prefix="/")
            headers = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
                (pid,) = _replica_pids()
                http.get("/healthz").raise_for_status()
                before = _rss_mib(pid)
                body = (
                    b'{"objects": [{"mask": {"size": [65535, 65535], "counts": "'
                    + _huge_valid_counts().encode()
                    + b'"}}]}'
                )
                latencies = []
                for _ in range(5):
                    started = time.perf_counter()
                    response = http.post(
                        "/v1/sessions", content=body, headers={"Content-Type": "application/json"}
                    )
                    latencies.append(time.perf_counter() - started)
                    assert response.status_code == 413, response.text
                    assert response.json()["error"] == "mask_too_large"
                after = _rss_mib(pid)
                ids = []
                for _ in range(8):  # every slot is free: 8 creates succeed on the one replica
                    created = http.post("/v1/sessions", json={"objects": [{"box": [2, 2, 20, 20]}]})
                    assert created.status_code == 201, created.text
                    ids.append(created.json()["session_id"])
                ninth = http.post("/v1/sessions", json={"objects": [{"box": [2, 2, 20, 20]}]})
                assert ninth.status_code == 429, ninth.text
                for session_id in ids:
                    http.delete(f"/v1/sessions/{session_id}", headers={"X-Session-Id": session_id})
            print(
                f"\n65535x65535 mask prompt ({len(body)} B body): 5 x HTTP 413, latency "
                f"max {max(latencies) * 1000:.1f} ms, median {sorted(latencies)[2] * 1000:.1f} ms; "
                f"replica RSS {before:.1f} -> {after:.1f} MiB ({after - before:+.1f}); "
                f"8 of 8 session slots free afterwards"
            )
            assert max(latencies) < 1.0
            assert after - before < 50
            serve.delete("bounds")
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_a_create_whose_client_goes_away_frees_its_session(caplog):
    """The real app under an ASGI client whose request task is cancelled mid-create (what a
    disconnect or Serve's request timeout does): the create's thread still finishes, and the
    session it made is deleted at once, not left to idle out."""
    import asyncio
    import logging

    import httpx

    from surgray.serving.http_app import build_app
    from surgray.serving.service import SegmentationService
    from surgray.serving.tracker_backend import TrackerBackend

    config = ServeConfig.from_args(
        {
            "model": {"variant": "micro", "checkpoint": "random:2", "image_size": 64},
            "limits": {"max_image_side": 1024, "max_objects": 64},
        }
    )
    backend = TrackerBackend.from_config(config)
    service = SegmentationService(backend, config)
    full = np.zeros((1, 1024, 1024), bool)
    full[0, 100:900, 100:900] = True
    mask = encode_rle(full)[0]
    body = {"objects": [{"obj_id": n, "mask": mask} for n in range(1, 65)]}  # ~64 MB to decode

    async def cancelled_create() -> None:
        transport = httpx.ASGITransport(app=build_app(service, _open_checker()))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            task = asyncio.create_task(client.post("/v1/sessions", json=body))
            await asyncio.sleep(0.05)  # the create is decoding its masks in a worker thread
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    try:
        with caplog.at_level(logging.INFO, logger="surgray.serving.service"):
            asyncio.run(cancelled_create())
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(
                "create request was cancelled" in r.getMessage() for r in caplog.records
            ):
                time.sleep(0.05)
        assert any("create request was cancelled" in r.getMessage() for r in caplog.records)
        assert len(service.store) == 0
    finally:
        service.shutdown()
        backend.close()


def _mp4(width: int, height: int, frames: int = 2) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def test_a_video_of_frames_over_the_limit_is_refused_from_its_header(service):
    from surgray.serving.schemas import SegmentRequest
    from surgray.serving.video_header import VideoFramesTooLarge, declared_frame_size

    wide = _mp4(320, 64)
    assert declared_frame_size(wide) == (320, 64)
    assert declared_frame_size(b"not a video") is None
    with pytest.raises(VideoFramesTooLarge) as caught:
        service.segment(wide, "video/mp4", SegmentRequest(expressions=["the grasper"]))
    assert caught.value.status == 413 and "320x64" in caught.value.message


@pytest.mark.parametrize(
    "body, what",
    [
        ({"expressions": [f"tool {n}" for n in range(17)]}, "17 expressions"),
        ({"expressions": ["x" * 201]}, "a 201-character expression"),
        ({"objects": [{"box": [1, 1, 9, 9]}] * 65}, "65 objects"),
        ({"objects": [{"points": [[1, 1]] * 65, "point_labels": [1] * 65}]}, "65 points"),
        ({"objects": [{"box": [1, 1, 9, 9], "label": "l" * 201}]}, "a 201-character label"),
        ({"objects": [{"box": [1, 1, 9, 9]}] * 33}, "33 objects (limits.max_objects 32)"),
        ({"objects": [{"mask": {"size": [4, 4], "counts": [16] * 5000}}]}, "runs over the size"),
    ],
)
def test_counts_and_lengths_per_request_are_bounded(service, body, what):
    from fastapi.testclient import TestClient

    from surgray.serving.http_app import build_app

    with TestClient(build_app(service, _open_checker())) as client:
        response = client.post("/v1/sessions", json=body)
    assert response.status_code in (413, 422), (what, response.text)
    assert len(response.json()["message"]) < 2000, what
    assert len(service.store) == 0
