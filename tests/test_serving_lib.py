"""surgray.serving: config, auth, frame validation, the session store, schemas and real HTTP.

Expected values are worked out by hand or computed by pycocotools / PIL / cv2 (references),
never by surgray. The HTTP tests run the FastAPI app under uvicorn on 127.0.0.1 and talk to it
with httpx; the tiny echo backend below exists only to exercise the HTTP plumbing.
"""

from __future__ import annotations

import base64
import io
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from _local_http import encode, free_port
from PIL import Image
from pycocotools import mask as coco_mask

from surgray.serving.auth import AuthConfigError, AuthError, build_token_checker
from surgray.serving.backend import SessionSummary, TrackedFrame, TrackedObject
from surgray.serving.config import AuthConfig, ServeConfig, ServeConfigError
from surgray.serving.errors import ApiError, Unprocessable
from surgray.serving.images import decode_frame
from surgray.serving.results import encode_objects
from surgray.serving.routing import ReplicaIdentity, SessionIdCodec, parse_session_tag
from surgray.serving.schemas import (
    CreateSessionRequest,
    ModelInfo,
    RleMask,
    SegmentEndLine,
    SegmentFrameLine,
    parse_ndjson_line,
)
from surgray.serving.sessions import EndReason, SessionLimits, SessionStore

REPO = Path(__file__).resolve().parents[1]
TOKEN_A = "alpha-token-0123456789"
TOKEN_B = "bravo-token-0123456789"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gradient(height: int = 30, width: int = 40) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols * 6, rows * 8, (rows + cols) * 3], axis=-1).astype(np.uint8)


def png_with_header(width: int, height: int) -> bytes:
    """A syntactically valid PNG header (IHDR + IEND, no pixels) declaring any size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def status_of(error: ApiError) -> tuple[int, str]:
    return error.status, error.code


# -- config ------------------------------------------------------------------------------------
def test_serve_yaml_is_a_ray_serve_config_with_our_args():
    import yaml

    data = yaml.safe_load((REPO / "configs/serve.yaml").read_text())
    app = data["applications"][0]
    assert app["import_path"] == "serve.app:app"
    config = ServeConfig.from_yaml(REPO / "configs/serve.yaml")
    assert config == ServeConfig.from_args(app["args"])
    assert (config.http.host, config.http.port) == (
        data["http_options"]["host"],
        data["http_options"]["port"],
    )
    assert config.model_registry() == {"default": config.model}
    schema = pytest.importorskip("ray.serve.schema")
    parsed = schema.ServeDeploySchema.model_validate(data)
    assert parsed.applications[0].args == app["args"]


def test_config_errors_name_the_bad_key(tmp_path):
    with pytest.raises(ServeConfigError, match=r"sessions\.max_per_replicas: unknown key"):
        ServeConfig.from_args(
            {"model": {"checkpoint": "x.pt"}, "sessions": {"max_per_replicas": 2}}
        )
    with pytest.raises(ServeConfigError, match=r"model: required key is missing"):
        ServeConfig.from_args({})
    with pytest.raises(ServeConfigError, match=r"auth\.token_env: .*environment variable name"):
        ServeConfig.from_args({"model": {"checkpoint": "x"}, "auth": {"token_env": "not a name"}})
    two_apps = tmp_path / "two.yaml"
    two_apps.write_text("applications:\n  - {name: a, args: {}}\n  - {name: b, args: {}}\n")
    with pytest.raises(ServeConfigError, match="2 applications"):
        ServeConfig.from_yaml(two_apps)


# -- auth --------------------------------------------------------------------------------------
def test_tokens_from_env_accept_each_and_reject_others():
    checker = build_token_checker(AuthConfig(), {"SURGRAY_API_TOKENS": f" {TOKEN_A} ,{TOKEN_B}"})
    checker.check(f"Bearer {TOKEN_A}")
    checker.check(f"bearer {TOKEN_B}")
    with pytest.raises(AuthError) as wrong:
        checker.check("Bearer alpha-token-0123456780")
    assert status_of(wrong.value) == (401, "invalid_token")
    assert wrong.value.headers["WWW-Authenticate"].startswith("Bearer")
    with pytest.raises(AuthError, match="missing 'Authorization: Bearer"):
        checker.check(None)
    with pytest.raises(AuthError, match="must be 'Bearer <token>'"):
        checker.check(f"Basic {TOKEN_A}")


def test_tokens_from_file_skip_comments_and_blank_lines(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# rotated 2026-01\n\n{TOKEN_A}\n  {TOKEN_B}  \n")
    checker = build_token_checker(AuthConfig(token_env=None, token_file=str(path)), {})
    checker.check(f"Bearer {TOKEN_B}")
    with pytest.raises(AuthError):
        checker.check("Bearer # rotated 2026-01")
    with pytest.raises(AuthConfigError, match="does not exist"):
        build_token_checker(AuthConfig(token_file=str(tmp_path / "missing")), {})


def test_no_token_refuses_to_start_unless_insecure():
    with pytest.raises(AuthConfigError) as refused:
        build_token_checker(AuthConfig(), {})
    message = str(refused.value)
    for hint in ("SURGRAY_API_TOKENS", "auth.token_file", "auth.insecure_no_auth"):
        assert hint in message
    checker = build_token_checker(AuthConfig(insecure_no_auth=True), {})
    checker.check(None)
    # A configured token wins over the insecure flag.
    secured = build_token_checker(
        AuthConfig(insecure_no_auth=True), {"SURGRAY_API_TOKENS": TOKEN_A}
    )
    with pytest.raises(AuthError):
        secured.check(None)
    with pytest.raises(AuthConfigError, match="at least 16 characters"):
        build_token_checker(AuthConfig(), {"SURGRAY_API_TOKENS": "short"})


# -- images ------------------------------------------------------------------------------------
def test_png_decodes_exactly_and_modes_become_rgb():
    image = gradient()
    assert np.array_equal(decode_frame(encode(image), "image/png", max_side=64), image)
    gray = image[..., 0]
    decoded = decode_frame(encode(gray), "image/png; charset=binary", max_side=64)
    assert decoded.shape == (30, 40, 3) and np.array_equal(decoded[..., 2], gray)
    rgba = np.dstack([image, np.full(image.shape[:2], 7, np.uint8)])
    assert np.array_equal(decode_frame(encode(rgba), "image/png", max_side=64), image)


def test_jpeg_from_pil_and_cv2_decode_close_to_the_source():
    import cv2

    image = gradient()
    from_pil = decode_frame(encode(image, "JPEG"), "image/jpeg", max_side=64)
    ok, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    from_cv2 = decode_frame(encoded.tobytes(), "IMAGE/JPEG", max_side=64)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = "frame 7"  # ImageDescription, so the file has an APP1 segment to skip
    Image.fromarray(image).save(buffer, format="JPEG", quality=95, progressive=True, exif=exif)
    assert b"\xff\xc2" in buffer.getvalue() and b"Exif" in buffer.getvalue()
    progressive = decode_frame(buffer.getvalue(), "image/jpeg", max_side=64)
    for decoded in (from_pil, from_cv2, progressive):
        assert decoded.shape == (30, 40, 3) and decoded.dtype == np.uint8
        assert np.abs(decoded.astype(int) - image).mean() < 3


@pytest.mark.parametrize(
    ("body", "content_type", "expected", "message"),
    [
        (b"", "image/png", (422, "empty_body"), "body is empty"),
        (b"GIF89a....", "image/gif", (415, "unsupported_media_type"), "image/gif"),
        (b"\x89PNG", None, (415, "unsupported_media_type"), r"\(none\)"),
        (b"hello, not an image", "image/png", (422, "invalid_image"), "not a PNG"),
    ],
)
def test_bad_uploads_are_refused_with_their_reason(body, content_type, expected, message):
    with pytest.raises(ApiError, match=message) as error:
        decode_frame(body, content_type, max_side=64)
    assert status_of(error.value) == expected


def test_content_type_must_match_the_bytes():
    with pytest.raises(ApiError, match="says image/jpeg but the body is a PNG") as error:
        decode_frame(encode(gradient()), "image/jpeg", max_side=64)
    assert status_of(error.value) == (415, "content_type_mismatch")


def test_truncated_images_are_refused():
    jpeg = encode(gradient(), "JPEG")
    for cut in (jpeg[: len(jpeg) // 2], jpeg[:-2]):
        with pytest.raises(ApiError, match="truncated") as error:
            decode_frame(cut, "image/jpeg", max_side=64)
        assert status_of(error.value) == (422, "invalid_image")
    png = encode(gradient())
    with pytest.raises(ApiError, match="truncated") as error:
        decode_frame(png[: len(png) - 20], "image/png", max_side=64)
    assert status_of(error.value) == (422, "invalid_image")


def test_declared_size_is_checked_before_decoding():
    started = time.perf_counter()
    with pytest.raises(ApiError, match="100000x100000; the largest side allowed is 4096") as error:
        decode_frame(png_with_header(100_000, 100_000), "image/png", max_side=4096)
    assert status_of(error.value) == (413, "image_too_large")
    assert time.perf_counter() - started < 0.5
    with pytest.raises(ApiError, match="empty size 0x5") as error:
        decode_frame(png_with_header(0, 5), "image/png", max_side=4096)
    assert status_of(error.value) == (422, "invalid_image")
    # A real baseline JPEG whose SOF0 header is patched to 40000 x 50000.
    jpeg = bytearray(encode(gradient(), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 40_000, 50_000)
    with pytest.raises(ApiError, match="50000x40000") as error:
        decode_frame(bytes(jpeg), "image/jpeg", max_side=4096)
    assert status_of(error.value) == (413, "image_too_large")


# -- session ids and the store -----------------------------------------------------------------
def test_session_ids_are_random_url_safe_and_carry_the_replica_tag():
    codec = SessionIdCodec(b"k" * 32)
    ids = {codec.mint("abc123XY") for _ in range(1000)}
    assert len(ids) == 1000
    for session_id in list(ids)[:20]:
        assert re.fullmatch(r"abc123XY\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{11}", session_id)
        parsed = codec.parse(session_id)
        assert parsed is not None and parsed.tag == "abc123XY"
        raw = base64.urlsafe_b64decode(session_id.split(".")[1] + "==")
        assert len(raw) == 16  # 128 bits
    one = next(iter(ids))
    tampered = one[:-1] + ("A" if one[-1] != "A" else "B")
    assert codec.parse(tampered) is None
    assert SessionIdCodec(b"other-key").parse(one) is None
    assert parse_session_tag(one) == "abc123XY" and parse_session_tag("no-dots") is None
    identity = ReplicaIdentity.create("abc123XY")
    assert identity.replica_id.endswith(":abc123XY") and str(identity.pid) in identity.replica_id
    with pytest.raises(ValueError, match="replica tag"):
        ReplicaIdentity.create("has.dot")


def make_store(clock, closed=None, **limits):
    defaults = dict(max_sessions=2, idle_timeout_s=10.0, max_frames=3, tombstones=8)
    defaults.update(limits)

    def on_close(session_id, state, reason):
        if closed is not None:
            closed.append((session_id, state, reason))

    return SessionStore(
        SessionLimits(**defaults),
        identity=ReplicaIdentity.create("replicaA"),
        codec=SessionIdCodec(b"shared-key"),
        clock=clock,
        on_close=on_close,
    )


def test_capacity_then_idle_eviction_frees_a_slot():
    clock, closed = FakeClock(), []
    store = make_store(clock, closed)
    first = store.create("s1")
    clock.now += 3
    second = store.create("s2")
    with pytest.raises(ApiError, match="maximum of 2 sessions") as full:
        store.create("s3")
    assert status_of(full.value) == (429, "at_capacity")
    assert full.value.headers["Retry-After"] == "7"  # first was last used 3 s ago, timeout 10 s
    clock.now += 7  # first is now idle for 10 s
    third = store.create("s3")
    assert closed == [(first, "s1", EndReason.EXPIRED)]
    assert set(store.session_ids()) == {second, third}
    with pytest.raises(ApiError, match="expired after 10 s") as gone:
        store.get(first)
    assert status_of(gone.value) == (410, "session_expired")


def test_expiry_on_access_and_sweep():
    clock, closed = FakeClock(), []
    store = make_store(clock, closed)
    a, b = store.create("a"), store.create("b")
    clock.now += 9.5
    store.touch(b)
    clock.now += 0.5
    with pytest.raises(ApiError) as gone:
        store.get(a)
    assert status_of(gone.value) == (410, "session_expired")
    assert closed == [(a, "a", EndReason.EXPIRED)]
    assert store.maybe_sweep(min_interval_s=100) == []
    clock.now += 10
    assert store.sweep() == [b]
    assert len(store) == 0


def test_unknown_deleted_lost_and_tombstone_bound():
    clock, closed = FakeClock(), []
    store = make_store(clock, closed, max_sessions=4, tombstones=2)
    ids = [store.create(n) for n in range(3)]
    for session_id in ids:
        store.delete(session_id)
    assert [c[2] for c in closed] == [EndReason.DELETED] * 3
    with pytest.raises(ApiError) as forgotten:
        store.get(ids[0])  # pushed out of the 2-entry tombstone LRU
    assert status_of(forgotten.value) == (404, "unknown_session")
    for session_id in ids[1:]:
        with pytest.raises(ApiError, match="was deleted") as gone:
            store.delete(session_id)
        assert status_of(gone.value) == (410, "session_deleted")
    never = SessionIdCodec(b"shared-key").mint("replicaA")
    foreign = SessionIdCodec(b"shared-key").mint("replicaB")
    forged = SessionIdCodec(b"attacker").mint("replicaB")
    cases = {
        never: (404, "unknown_session"),
        foreign: (410, "session_lost"),
        "x/../y": (404, "unknown_session"),
        forged: (404, "unknown_session"),
    }
    for session_id, expected in cases.items():
        with pytest.raises(ApiError) as error:
            store.get(session_id)
        assert status_of(error.value) == expected, session_id
    assert "replica replicaB" in _message(store, foreign)


def _message(store, session_id):
    try:
        store.get(session_id)
    except ApiError as exc:
        return exc.message
    raise AssertionError("expected an error")


def test_frame_limit_busy_and_failed_frames():
    clock = FakeClock()
    store = make_store(clock)
    sid = store.create({"n": 0})
    with pytest.raises(RuntimeError):
        with store.lease(sid, frame=True):
            raise RuntimeError("model failed")
    for _ in range(3):
        with store.lease(sid, frame=True) as entry:
            with pytest.raises(ApiError) as busy:
                with store.lease(sid):
                    pass
            assert status_of(busy.value) == (409, "session_busy")
    assert entry.frames == 3  # the failed frame was not counted
    with pytest.raises(ApiError, match="limit of 3 frames") as limit:
        with store.lease(sid, frame=True):
            pass
    assert status_of(limit.value) == (409, "frame_limit")
    with store.lease(sid):  # prompts still allowed; the session stays until deleted
        pass
    store.delete(sid)


def test_lease_blocks_eviction_and_defers_close_of_a_deleted_session():
    clock, closed = FakeClock(), []
    store = make_store(clock, closed)
    sid = store.create("state")
    with store.lease(sid, frame=True):
        clock.now += 60
        assert store.sweep() == []
        store.delete(sid)
        assert closed == []  # still in use
    assert closed == [(sid, "state", EndReason.DELETED)]
    with pytest.raises(ApiError) as gone:
        store.get(sid)
    assert status_of(gone.value) == (410, "session_deleted")


def test_failed_build_releases_its_slot():
    store = make_store(FakeClock(), max_sessions=1)

    def failing(_session_id):
        raise Unprocessable("mask prompt does not fit")

    with pytest.raises(Unprocessable):
        store.create_with(failing)
    assert len(store) == 0
    store.create("fits now")


def test_store_is_thread_safe():
    clock = FakeClock()
    store = make_store(clock, max_sessions=3, max_frames=10_000)
    outcomes = {"created": 0, "full": 0, "over": 0}
    unexpected = []
    lock = threading.Lock()

    def churn():
        for _ in range(60):
            try:
                sid = store.create_with(lambda s: len(store))
            except ApiError as exc:
                if exc.code != "at_capacity":
                    unexpected.append(exc)
                with lock:
                    outcomes["full"] += 1
                continue
            with lock:
                outcomes["created"] += 1
                outcomes["over"] += len(store) > 3
            store.delete(sid)

    shared = store.create("shared")
    successes = []

    def frames():
        count = 0
        for _ in range(200):
            try:
                with store.lease(shared, frame=True):
                    count += 1
            except ApiError as exc:
                if exc.code != "session_busy":
                    unexpected.append(exc)
        successes.append(count)

    threads = [threading.Thread(target=churn) for _ in range(6)]
    threads += [threading.Thread(target=frames) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not unexpected and not any(thread.is_alive() for thread in threads)
    assert outcomes["created"] + outcomes["full"] == 360 and outcomes["over"] == 0
    assert store.session_ids() == [shared]
    assert store.get(shared).frames == sum(successes) > 0


# -- schemas and result encoding -----------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2
def test_create_request_round_trip_and_validation():
    mask = np.zeros((4, 5), dtype=np.uint8)
    mask[1:3, 2:4] = 1
    reference = coco_mask.encode(np.asfortranarray(mask))
    request = CreateSessionRequest.model_validate(
        {
            "model": "default",
            "expressions": [" grasper ", "grasper", "bipolar forceps"],
            "objects": [
                {"obj_id": 3, "points": [[10, 20.5]], "point_labels": [1], "box": [1, 2, 30, 40]},
                {"mask": {"size": [4, 5], "counts": reference["counts"].decode()}},
            ],
        }
    )
    assert request.expressions == ["grasper", "bipolar forceps"]
    again = CreateSessionRequest.model_validate_json(request.model_dump_json())
    assert again == request
    decoded = coco_mask.decode({"size": [4, 5], "counts": again.objects[1].mask.counts.encode()})
    assert np.array_equal(decoded, mask)
    bad = {
        "points": [[1, 2]],
        "point_labels": [],
    }
    with pytest.raises(ValueError, match=r"points \(1\) and point_labels \(0\)"):
        CreateSessionRequest.model_validate({"objects": [bad]})
    with pytest.raises(ValueError, match="x1 > x0"):
        CreateSessionRequest.model_validate({"objects": [{"box": [5, 5, 1, 9]}]})
    with pytest.raises(ValueError, match="needs points, a box or a mask"):
        CreateSessionRequest.model_validate({"objects": [{"label": "x"}]})
    with pytest.raises(ValueError, match="at least one text expression"):
        CreateSessionRequest.model_validate({})
    with pytest.raises(ValueError, match="Extra inputs"):
        CreateSessionRequest.model_validate({"expressions": ["a"], "checkpoint": "/etc/passwd"})
    with pytest.raises(ValueError, match="should match pattern"):
        CreateSessionRequest.model_validate({"expressions": ["a"], "model": "../weights.pt"})
    with pytest.raises(ValueError, match="sum to 3, size \\[2, 2\\] needs 4"):
        RleMask.model_validate({"size": [2, 2], "counts": [1, 2]})


def test_encode_objects_matches_pycocotools_and_hand_values():
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:4, 2:7] = True  # rows 1..3, cols 2..6
    empty = np.zeros((6, 8), dtype=bool)
    frame = TrackedFrame(
        frame_index=4,
        height=6,
        width=8,
        objects=[
            TrackedObject(obj_id=1, state="tracking", score=0.9, mask=mask, label="grasper"),
            TrackedObject(obj_id=2, state="lost", score=0.1, mask=empty),
        ],
    )
    first, second = encode_objects(frame, include_png=True)
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert first.rle.counts == reference["counts"].decode() and first.rle.size == (6, 8)
    assert (first.area, first.bbox) == (15, (2.0, 1.0, 5.0, 3.0))
    assert (second.area, second.bbox, second.state) == (0, None, "lost")
    png = Image.open(io.BytesIO(base64.b64decode(first.png_base64))).convert("L")
    assert np.array_equal(np.asarray(png) == 255, mask)
    wrong = TrackedFrame(0, 6, 8, [TrackedObject(1, "tracking", 1.0, mask[:5])])
    with pytest.raises(ApiError, match="the frame needs bool\\[6, 8\\]"):
        encode_objects(wrong)


def test_ndjson_lines_parse_by_type():
    frame = parse_ndjson_line(b'{"type":"frame","frame_index":2,"objects":[],"latency_ms":1.5}')
    assert isinstance(frame, SegmentFrameLine) and frame.frame_index == 2
    end = parse_ndjson_line('{"type":"end","frames":3}')
    assert isinstance(end, SegmentEndLine) and end.frames == 3
    with pytest.raises(ValueError):
        parse_ndjson_line('{"type":"nope"}')


# -- real HTTP -----------------------------------------------------------------------------------
HTTP_CODEC = SessionIdCodec(b"http-test-key")


class EchoBackend:
    """Test-only backend: one object whose mask is `red channel > 127`."""

    def models(self):
        return [
            ModelInfo(
                name="default", variant="tiny", image_size=64, policy="recent", text_prompts=True
            )
        ]

    def open_session(self, session_id, request):
        return {
            "model": request.model,
            "expressions": list(request.expressions),
            "frames": 0,
            "closed": False,
        }

    def track_frame(self, state, image):
        state["frames"] += 1
        mask = image[..., 0] > 127
        obj = TrackedObject(obj_id=1, state="tracking", score=1.0, mask=mask, label="red")
        return TrackedFrame(state["frames"] - 1, image.shape[0], image.shape[1], [obj])

    def add_prompts(self, state, request):
        state["expressions"] += request.expressions

    def describe(self, state):
        return SessionSummary(model=state["model"], expressions=state["expressions"], obj_ids=[1])

    def close_session(self, state):
        state["closed"] = True

    def segment_video(self, video, request):
        if video.startswith(b"bad"):
            raise Unprocessable("cannot decode the video", code="invalid_video")
        for index in range(3):
            mask = np.zeros((4, 4), dtype=bool)
            mask[index, :] = True
            yield TrackedFrame(index, 4, 4, [TrackedObject(7, "tracking", 0.5, mask)])


@pytest.fixture(scope="module")
def server():
    import httpx
    import uvicorn

    from surgray.serving.http_app import build_app
    from surgray.serving.service import SegmentationService

    config = ServeConfig.from_args(
        {
            "model": {"checkpoint": "unused.pt"},
            "sessions": {"max_per_replica": 2, "idle_timeout_s": 30, "max_frames": 3},
            "limits": {"max_body_bytes": 20_000, "max_image_side": 256, "max_video_bytes": 4096},
        }
    )
    clock = FakeClock()
    service = SegmentationService(
        EchoBackend(),
        config,
        identity=ReplicaIdentity.create("replicaA"),
        codec=HTTP_CODEC,
        clock=clock,
    )
    checker = build_token_checker(config.auth, {"SURGRAY_API_TOKENS": TOKEN_A})
    app = build_app(service, checker, require_routing_header=True)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN_A}"},
        timeout=10,
    )
    try:
        yield client, clock, service
    finally:
        client.close()
        uv.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.fixture
def http(server):
    """The shared server; every session a test leaves behind is closed afterwards."""
    yield server
    server[2].store.close_all()


def create(client, **body):
    response = client.post("/v1/sessions", json={"expressions": ["red thing"], **body})
    assert response.status_code == 201, response.text
    return response.json()["session_id"]


def in_session(sid):
    return {"X-Session-Id": sid}


def expect_error(response, status, code):
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert response.headers["X-Surgray-Replica"].endswith(":replicaA")
    return response.json()["message"]


def test_http_auth_health_and_models(http):
    client, _, _ = http
    import httpx

    base = str(client.base_url)
    health = httpx.get(base + "/healthz", timeout=5)
    assert health.json() == {"status": "ok", "api_version": "v1"}
    assert health.headers["X-Surgray-Replica"].endswith(":replicaA")
    anonymous = httpx.get(base + "/v1/models", timeout=5)
    expect_error(anonymous, 401, "unauthorized")
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = httpx.get(
        base + "/v1/models", headers={"Authorization": f"Bearer {TOKEN_B}"}, timeout=5
    )
    expect_error(wrong, 401, "invalid_token")
    assert client.get("/v1/models").json()["models"][0]["name"] == "default"
    expect_error(client.get("/v1/nothing-here"), 404, "not_found")


def test_http_session_lifecycle_and_frames(http):
    client, _, _ = http
    image = np.zeros((12, 16, 3), dtype=np.uint8)
    image[2:5, 3:9, 0] = 200
    sid = create(client, include_png=True)
    headers = {**in_session(sid), "Content-Type": "image/png"}
    response = client.post(f"/v1/sessions/{sid}/frames", content=encode(image), headers=headers)
    assert response.status_code == 200, response.text
    result = response.json()
    reference = coco_mask.encode(np.asfortranarray((image[..., 0] > 127).astype(np.uint8)))
    (obj,) = result["objects"]
    assert obj["rle"] == {"size": [12, 16], "counts": reference["counts"].decode()}
    assert (obj["area"], obj["bbox"], obj["state"]) == (18, [3.0, 2.0, 6.0, 3.0], "tracking")
    assert obj["png_base64"] and result["frame_index"] == 0 and result["latency_ms"] > 0
    plain = client.post(
        f"/v1/sessions/{sid}/frames?include_png=false",
        content=encode(image, "JPEG"),
        headers={**in_session(sid), "Content-Type": "image/jpeg"},
    )
    assert plain.json()["objects"][0]["png_base64"] is None and plain.json()["frame_index"] == 1
    prompts = client.post(
        f"/v1/sessions/{sid}/prompts", json={"expressions": ["tip"]}, headers=in_session(sid)
    )
    assert prompts.json()["expressions"] == ["red thing", "tip"]
    assert prompts.json()["frames_processed"] == 2
    over = client.post(f"/v1/sessions/{sid}/frames", content=encode(image), headers=headers)
    assert over.status_code == 200
    expect_error(
        client.post(f"/v1/sessions/{sid}/frames", content=encode(image), headers=headers),
        409,
        "frame_limit",
    )
    assert client.delete(f"/v1/sessions/{sid}", headers=in_session(sid)).status_code == 204
    expect_error(client.get(f"/v1/sessions/{sid}", headers=in_session(sid)), 410, "session_deleted")


def test_http_rejects_bad_frames(http):
    client, _, _ = http
    sid = create(client)
    url = f"/v1/sessions/{sid}/frames"
    png = encode(gradient())

    def post(body, content_type, **extra):
        return client.post(
            url, content=body, headers={**in_session(sid), "Content-Type": content_type}, **extra
        )

    expect_error(post(png, "image/jpeg"), 415, "content_type_mismatch")
    expect_error(post(png, "text/plain"), 415, "unsupported_media_type")
    jpeg = encode(gradient(), "JPEG")
    expect_error(post(jpeg[: len(jpeg) // 2], "image/jpeg"), 422, "invalid_image")
    expect_error(post(png_with_header(5000, 10), "image/png"), 413, "image_too_large")
    expect_error(post(b"", "image/png"), 422, "empty_body")
    expect_error(post(b"\x00" * 30_000, "image/png"), 413, "body_too_large")

    def chunks():
        for _ in range(30):
            yield b"\x00" * 1000

    expect_error(post(chunks(), "image/png"), 413, "body_too_large")
    assert (
        client.get(f"/v1/sessions/{sid}", headers=in_session(sid)).json()["frames_processed"] == 0
    )
    expect_error(client.get(f"/v1/sessions/{sid}"), 400, "missing_routing_header")
    client.delete(f"/v1/sessions/{sid}", headers=in_session(sid))


def test_http_session_errors(http):
    client, clock, service = http
    expect_error(
        client.post(
            "/v1/sessions",
            content=b'{"expressions": ["a"]}',
            headers={"Content-Type": "text/plain"},
        ),
        415,
        "unsupported_media_type",
    )
    message = expect_error(
        client.post(
            "/v1/sessions", content=b"{not json", headers={"Content-Type": "application/json"}
        ),
        422,
        "invalid_request",
    )
    assert "JSON" in message
    expect_error(
        client.post("/v1/sessions", json={"expressions": ["a"], "model": "other"}),
        422,
        "unknown_model",
    )
    never, lost = HTTP_CODEC.mint("replicaA"), HTTP_CODEC.mint("deadReplica")
    expect_error(
        client.get(f"/v1/sessions/{never}", headers=in_session(never)), 404, "unknown_session"
    )
    expect_error(client.get(f"/v1/sessions/{lost}", headers=in_session(lost)), 410, "session_lost")
    first, second = create(client), create(client)
    full = client.post("/v1/sessions", json={"expressions": ["a"]})
    expect_error(full, 429, "at_capacity")
    assert full.headers["Retry-After"] == "30"
    states = [service.store.get(sid).state for sid in (first, second)]
    clock.now += 31
    expect_error(
        client.get(f"/v1/sessions/{first}", headers=in_session(first)), 410, "session_expired"
    )
    third = create(client)  # the idle second one is evicted to make room
    assert all(state["closed"] for state in states)
    client.delete(f"/v1/sessions/{third}", headers=in_session(third))


def test_http_segment_streams_ndjson(http):
    client, _, _ = http
    with client.stream(
        "POST",
        "/v1/segment?expression=red&expression=tip",
        content=b"video-bytes",
        headers={"Content-Type": "video/mp4"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [parse_ndjson_line(line) for line in response.iter_lines() if line]
    assert [line.type for line in lines] == ["frame", "frame", "frame", "end"]
    assert lines[1].objects[0].bbox == (0.0, 1.0, 4.0, 1.0) and lines[-1].frames == 3
    bad = client.post(
        "/v1/segment?expression=red", content=b"bad video", headers={"Content-Type": "video/mp4"}
    )
    expect_error(bad, 422, "invalid_video")
    expect_error(
        client.post(
            "/v1/segment?expression=red", content=b"x", headers={"Content-Type": "image/png"}
        ),
        415,
        "unsupported_media_type",
    )
    expect_error(
        client.post("/v1/segment", content=b"x", headers={"Content-Type": "video/mp4"}),
        422,
        "invalid_request",
    )
    expect_error(
        client.post(
            "/v1/segment?expression=a&path=/etc",
            content=b"x",
            headers={"Content-Type": "video/mp4"},
        ),
        422,
        "invalid_request",
    )
    expect_error(
        client.post(
            "/v1/segment?expression=a", content=b"x" * 5000, headers={"Content-Type": "video/mp4"}
        ),
        413,
        "body_too_large",
    )
