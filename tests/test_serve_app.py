"""The Ray Serve application over real HTTP on 127.0.0.1 (issue 8's proofs).

One local Ray (2 CPUs) and one Serve application with two replicas (0.4 CPU each) of the micro
model at 64 px serve the whole module; every test talks to it with httpx, as a client would.
Masks from the service are compared with a `Tracker` run in this process on the same frames
and the same checkpoint file.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import pytest
from _local_http import REPO, encode, import_serve_app, serve_http

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
import_serve_app()

TOKEN = "serve-test-token-0123456789"
SESSION_KEY = "serve-test-session-key"
HEIGHT, WIDTH, IMAGE_SIZE, SEED = 48, 64, 64, 2
MAX_BODY = 100_000
REPLICA_HEADER = "X-Surgray-Replica"


def scene(count: int, seed: int) -> np.ndarray:
    """[count, 48, 64, 3] uint8: a red disc drifting over a dark, noisy background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = rng.integers(0, 40, (HEIGHT, WIDTH, 3)).astype(np.uint8)
    frames = []
    for index in range(count):
        cx, cy = 16 + 1.2 * (index % 25) + 3 * (seed % 4), 20 + 4 * np.sin(index / 3 + seed)
        image = base.copy()
        image[(cols - cx) ** 2 + (rows - cy) ** 2 <= 81] = (220, 60 + 30 * seed % 190, 40)
        frames.append(image)
    return np.stack(frames)


@dataclass(frozen=True)
class Served:
    base_url: str
    checkpoint: str

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def served(ray_cluster):
    from ray import serve

    from serve.app import build_app_from_args
    from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

    temp = tempfile.mkdtemp(prefix="srt", dir="/tmp")  # Ray's socket paths must stay short
    checkpoint = os.path.join(temp, "micro64.pt")
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        save_checkpoint(build_model("micro", image_size=IMAGE_SIZE), checkpoint)
    # The replicas get their secrets the way a deployment would: through their runtime env.
    env = {"SURGRAY_API_TOKENS": TOKEN, "SURGRAY_SESSION_KEY": SESSION_KEY}
    try:
        with serve_http() as url:
            with pytest.MonkeyPatch.context() as patch:  # the builder warns when it sees no token
                patch.setenv("SURGRAY_API_TOKENS", TOKEN)
                app = build_app_from_args(
                    {
                        "model": {
                            "variant": "micro",
                            "checkpoint": checkpoint,
                            "image_size": IMAGE_SIZE,
                        },
                        "replicas": 2,
                        "ray_actor_options": {"num_cpus": 0.4, "runtime_env": {"env_vars": env}},
                        "sessions": {"max_per_replica": 8, "idle_timeout_s": 600},
                        "limits": {"max_body_bytes": MAX_BODY, "max_image_side": 256},
                        "batching": {"max_batch_size": 4, "wait_timeout_s": 0.005},
                    }
                )
            serve.run(app, name="surgray", route_prefix="/")
            yield Served(url, checkpoint)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def client(served):
    with served.client() as http:
        yield http


# -- helpers -------------------------------------------------------------------------------------
@dataclass
class Session:
    http: httpx.Client
    session_id: str
    replica: str

    def frame(self, image: np.ndarray, fmt: str = "PNG", **kwargs) -> httpx.Response:
        return self.post_frame(encode(image, fmt), f"image/{fmt.lower()}", **kwargs)

    def post_frame(self, body: bytes, content_type: str, **kwargs) -> httpx.Response:
        headers = {"Content-Type": content_type, "X-Session-Id": self.session_id}
        return self.http.post(
            f"/v1/sessions/{self.session_id}/frames", content=body, headers=headers, **kwargs
        )

    def prompts(self, body: dict) -> httpx.Response:
        return self.http.post(
            f"/v1/sessions/{self.session_id}/prompts",
            json=body,
            headers={"X-Session-Id": self.session_id},
        )

    def delete(self) -> httpx.Response:
        return self.http.delete(
            f"/v1/sessions/{self.session_id}", headers={"X-Session-Id": self.session_id}
        )


def open_session(http: httpx.Client, objects: list[dict]) -> Session:
    response = http.post("/v1/sessions", json={"objects": objects})
    assert response.status_code == 201, response.text
    return Session(http, response.json()["session_id"], response.headers[REPLICA_HEADER])


def expect_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code, response.text
    assert response.headers[REPLICA_HEADER]  # errors come from a replica too, and say which
    return response.json()["message"]


def rle_of(mask: np.ndarray) -> dict:
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# -- configuration -------------------------------------------------------------------------------
def test_builder_defaults_to_the_shipped_demo_checkpoint_and_reads_serve_yaml():
    import yaml

    from serve.app import DEMO_MODEL, build_app_from_args, resolve_args
    from surgray.serving.config import ServeConfigError

    config, actor = resolve_args({"insecure": "true"})
    assert config.model.checkpoint == "demo:referring" and config.model.variant == "micro"
    assert config.auth.insecure_no_auth and actor == {"num_cpus": 1}
    assert DEMO_MODEL["checkpoint"] == "demo:referring"
    config, actor = resolve_args({"checkpoint": "s3://b/m.pt", "num_cpus": "0.5", "replicas": "3"})
    assert (config.model.checkpoint, config.replicas, actor["num_cpus"]) == ("s3://b/m.pt", 3, 0.5)
    assert config.model.description == ""  # not the demo checkpoint's
    assert not config.auth.insecure_no_auth  # never implied
    with pytest.raises(ServeConfigError, match="insecure must be true or false"):
        resolve_args({"insecure": "maybe"})
    with pytest.raises(ServeConfigError, match=r"sesions: unknown key"):
        resolve_args({"sesions": {}})
    args = yaml.safe_load((REPO / "configs/serve.yaml").read_text())["applications"][0]["args"]
    del args["http"]  # with it, building in this process would start Serve on its port
    application = build_app_from_args(args)
    deployment = application._bound_deployment
    assert deployment.num_replicas == args["replicas"]
    router = deployment._deployment_config.request_router_config.request_router_class
    assert router.endswith("SessionAffinityRouter")


# -- HTTP ----------------------------------------------------------------------------------------
def test_health_models_and_authentication(served, client):
    with served.client(token=None) as anonymous:
        health = anonymous.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok", "api_version": "v1"}
        missing = anonymous.get("/v1/models")
        assert "missing 'Authorization: Bearer" in expect_error(missing, 401, "unauthorized")
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        anonymous_frame = anonymous.post("/v1/sessions/x.y.z/frames", content=b"x")
        expect_error(anonymous_frame, 401, "unauthorized")
    with served.client(token="wrong-token-0123456789") as wrong:
        expect_error(wrong.get("/v1/models"), 401, "invalid_token")
        expect_error(
            wrong.post("/v1/sessions", json={"objects": [{"box": [1, 1, 9, 9]}]}),
            401,
            "invalid_token",
        )
    models = client.get("/v1/models")
    assert models.status_code == 200
    assert models.json() == {
        "models": [
            {
                "name": "default",
                "variant": "micro",
                "image_size": IMAGE_SIZE,
                "policy": "recent",
                "text_prompts": False,
                "description": "",
            }
        ]
    }


def test_a_session_from_create_to_gone(client):
    frames = scene(11, SEED)
    session = open_session(client, [{"box": [6, 10, 28, 31], "label": "disc"}])
    assert client.get(
        f"/v1/sessions/{session.session_id}", headers={"X-Session-Id": session.session_id}
    ).json()["obj_ids"] == [1]
    disc = np.zeros((HEIGHT, WIDTH), dtype=bool)
    disc[5:20, 40:60] = True
    for index in range(10):
        if index == 5:  # a second object joins mid-stream, from a mask
            info = session.prompts(
                {"objects": [{"obj_id": 7, "mask": rle_of(disc), "label": "patch"}]}
            )
            assert info.status_code == 200, info.text
            assert info.json()["obj_ids"] == [1, 7] and info.json()["frames_processed"] == 5
        response = session.frame(frames[index], fmt="JPEG")
        assert response.status_code == 200, response.text
        assert response.headers[REPLICA_HEADER] == session.replica
        body = response.json()
        assert body["session_id"] == session.session_id and body["frame_index"] == index
        assert body["latency_ms"] > 0
        assert [o["obj_id"] for o in body["objects"]] == ([1] if index < 5 else [1, 7])
        first = body["objects"][0]
        assert first["label"] == "disc" and first["state"] in ("tracking", "lost")
        assert first["rle"]["size"] == [HEIGHT, WIDTH] and 0 <= first["score"] <= 1
    info = client.get(
        f"/v1/sessions/{session.session_id}", headers={"X-Session-Id": session.session_id}
    )
    assert info.json()["frames_processed"] == 10
    assert session.delete().status_code == 204
    expect_error(session.frame(frames[10]), 410, "session_deleted")
    expect_error(session.delete(), 410, "session_deleted")
    # A session created from a mask prompt works the same way.
    masked = open_session(client, [{"mask": rle_of(disc)}])
    response = masked.frame(frames[0])
    assert response.status_code == 200 and response.json()["objects"][0]["obj_id"] == 1
    assert masked.delete().status_code == 204


def test_malformed_and_oversized_requests(client):
    expect_error(
        client.post(
            "/v1/sessions", content=b'{"objects": [', headers={"Content-Type": "application/json"}
        ),
        422,
        "invalid_request",
    )
    expect_error(
        client.post("/v1/sessions", content=b"objects", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    message = expect_error(
        client.post("/v1/sessions", json={"objects": [{"label": "x"}]}), 422, "invalid_request"
    )
    assert "points, a box or a mask" in message
    too_big = {"objects": [{"box": [1, 1, 9, 9], "label": "x" * 100}] * 20, "pad": "y" * MAX_BODY}
    expect_error(client.post("/v1/sessions", json=too_big), 413, "body_too_large")
    message = expect_error(
        client.post("/v1/sessions", json={"expressions": ["the grasper"]}),
        422,
        "text_prompts_unavailable",
    )
    assert "no text encoder" in message
    session = open_session(client, [{"box": [6, 10, 28, 31]}])
    big_image = np.zeros((300, 40, 3), dtype=np.uint8)
    expect_error(session.frame(big_image), 413, "image_too_large")
    expect_error(session.post_frame(b"\0" * (MAX_BODY + 1), "image/png"), 413, "body_too_large")
    no_header = client.post(
        f"/v1/sessions/{session.session_id}/frames",
        content=encode(scene(1, 0)[0]),
        headers={"Content-Type": "image/png"},
    )
    expect_error(no_header, 400, "missing_routing_header")
    assert session.frame(scene(1, 0)[0]).json()["frame_index"] == 0  # still fine
    assert session.delete().status_code == 204


def test_bad_frames_and_prompts_leave_the_session_working(client):
    frames = scene(3, SEED)
    session = open_session(client, [{"box": [6, 10, 28, 31]}])
    assert session.frame(frames[0]).status_code == 200
    expect_error(session.post_frame(b"GIF89a not an image", "image/png"), 422, "invalid_image")
    jpeg = encode(frames[1], "JPEG")
    assert "truncated" in expect_error(
        session.post_frame(jpeg[: len(jpeg) // 2], "image/jpeg"), 422, "invalid_image"
    )
    expect_error(session.post_frame(encode(frames[1]), "image/jpeg"), 415, "content_type_mismatch")
    small = np.zeros((24, 32, 3), dtype=np.uint8)
    message = expect_error(session.frame(small), 422, "frame_size_mismatch")
    assert "32x24" in message and "64x48" in message
    unknown = {"objects": [{"obj_id": 9, "points": [[3, 3]], "point_labels": [0]}]}
    assert "no object 9" in expect_error(session.prompts(unknown), 422, "unknown_object")
    expect_error(session.prompts({"objects": [{"box": [1, 1, 90, 9]}]}), 422, "invalid_prompt")
    expect_error(
        session.prompts({"objects": [{"box": [1, 1, 9, 9], "frame_index": 7}]}),
        422,
        "invalid_frame_index",
    )
    response = session.frame(frames[1])
    assert response.status_code == 200 and response.json()["frame_index"] == 1
    assert response.headers[REPLICA_HEADER] == session.replica
    info = client.get(
        f"/v1/sessions/{session.session_id}", headers={"X-Session-Id": session.session_id}
    )
    assert info.json()["frames_processed"] == 2 and info.json()["obj_ids"] == [1]
    assert session.delete().status_code == 204


def test_unknown_and_lost_sessions(client):
    from surgray.serving.routing import SessionIdCodec

    forged = "abcd.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAA"
    expect_error(
        client.get(f"/v1/sessions/{forged}", headers={"X-Session-Id": forged}),
        404,
        "unknown_session",
    )
    gone_replica = SessionIdCodec(SESSION_KEY.encode()).mint("deadreplica")
    message = expect_error(
        client.get(f"/v1/sessions/{gone_replica}", headers={"X-Session-Id": gone_replica}),
        410,
        "session_lost",
    )
    assert "mask prompts" in message


def test_two_replicas_pin_sessions_and_match_a_local_tracker(served, client):
    sessions: list[tuple[Session, tuple]] = []
    per_replica: dict[str, int] = {}
    try:
        for attempt in range(16):  # creations are spread at random; stop once both hold 2
            box = (6 + attempt % 4, 10, 28 + attempt % 4, 31)
            response = client.post("/v1/sessions", json={"objects": [{"box": list(box)}]})
            if response.status_code == 429:
                # The router sent it to a replica already holding its 8: a full replica
                # refuses, and the next creation is routed afresh.
                expect_error(response, 429, "at_capacity")
                continue
            assert response.status_code == 201, response.text
            session = Session(
                client, response.json()["session_id"], response.headers[REPLICA_HEADER]
            )
            sessions.append((session, box))
            per_replica[session.replica] = per_replica.get(session.replica, 0) + 1
            if len(per_replica) == 2 and min(per_replica.values()) >= 2:
                break
        assert len(per_replica) == 2 and min(per_replica.values()) >= 2, per_replica
        _pinned_sessions_track_as_a_local_tracker(served, sessions)
    except BaseException:  # a failure must not leave sessions holding the replicas' capacity
        for session, _ in sessions:
            session.delete()
        raise


def _pinned_sessions_track_as_a_local_tracker(served: Served, sessions: list) -> None:
    import torch

    from surgray.model.checkpoints.sam2_checkpoint import build_model
    from surgray.tracking.tracker import Tracker

    frames = {s.session_id: scene(20, seed) for seed, (s, _) in enumerate(sessions)}
    served_masks: dict[str, list] = {s.session_id: [] for s, _ in sessions}
    for index in range(20):  # interleaved: frame i of every session, then frame i + 1
        for session, _ in sessions:
            response = session.frame(frames[session.session_id][index])
            assert response.status_code == 200, response.text
            assert response.headers[REPLICA_HEADER] == session.replica
            served_masks[session.session_id].append([o["rle"] for o in response.json()["objects"]])
    for session, _ in sessions:
        assert session.delete().status_code == 204

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the replicas
    try:
        tracker = Tracker(
            build_model("micro", served.checkpoint, image_size=IMAGE_SIZE), {"name": "recent"}
        )
        nonempty = 0
        for session, box in sessions:
            video = tracker.start(session.session_id, (HEIGHT, WIDTH))
            tracker.add_box(video, 1, 0, box)
            for index, image in enumerate(frames[session.session_id]):
                [want] = tracker.step(video, image).objects
                [got] = served_masks[session.session_id][index]
                assert got == rle_of(want.mask), (session.session_id, index)
                nonempty += int(want.mask.any())
    finally:
        torch.set_num_threads(threads)
    assert nonempty > 0


def _stream(served: Served, seed: int, *, frames: int) -> list[float]:
    images = [encode(image) for image in scene(frames, seed)]
    latencies = []
    with served.client() as http:
        session = open_session(http, [{"box": [6, 10, 28, 31]}])
        for index, body in enumerate(images):
            started = time.perf_counter()
            response = session.post_frame(body, "image/png")
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
            assert response.json()["frame_index"] == index
            assert response.headers[REPLICA_HEADER] == session.replica
        assert session.delete().status_code == 204
    return latencies


@pytest.mark.slow
def test_bounded_load_run(served):
    rows = []
    for concurrency, frames in ((1, 50), (8, 50)):
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            runs = list(pool.map(partial(_stream, served, frames=frames), range(concurrency)))
        wall = time.perf_counter() - started
        latencies = [value for run in runs for value in run]
        assert len(latencies) == concurrency * frames
        rows.append(
            (
                concurrency,
                len(latencies),
                len(latencies) / wall,
                1000 * statistics.median(latencies),
                1000 * percentile(latencies, 99),
            )
        )
    print(
        "\nsessions  frames  frames/s  p50 ms  p99 ms   (2 replicas x 0.4 CPU, micro @64 px, 64x48 PNG)"
    )
    for concurrency, count, rate, p50, p99 in rows:
        print(f"{concurrency:>8}  {count:>6}  {rate:>8.1f}  {p50:>6.1f}  {p99:>6.1f}")


def test_replicas_refuse_to_start_without_tokens(served):
    from ray import serve

    from serve.app import build_app_from_args

    app = build_app_from_args(
        {
            "model": {"variant": "micro", "checkpoint": "random:0", "image_size": IMAGE_SIZE},
            "auth": {"token_env": "SURGRAY_TEST_UNSET_TOKENS"},
            "ray_actor_options": {"num_cpus": 0.1},
        }
    )
    try:
        with pytest.raises(RuntimeError, match="Deploying application noauth failed"):
            serve.run(app, name="noauth", route_prefix="/noauth")
        status = serve.status().applications["noauth"].deployments["SegmentationServer"]
        assert "refusing to start without authentication" in status.message
        assert "SURGRAY_TEST_UNSET_TOKENS" in status.message
    finally:
        serve.delete("noauth")
