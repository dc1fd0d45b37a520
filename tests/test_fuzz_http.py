"""Property-based fuzzing of the HTTP API's request bodies (hypothesis, bounded), against the
real FastAPI app of `surgray.serving.http_app` in process, over the real service and tracker
backend (micro model, random weights).

Properties: every body (session creates, prompts, frames) is answered 2xx or 4xx with the
error model `{"error", "message"}`, never 5xx; a refused create leaves no session behind.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
KEYS = ["objects", "expressions", "model", "include_png", "obj_id", "label", "points",
        "point_labels", "box", "mask", "frame_index", "size", "counts"]  # fmt: skip
numbers = st.integers(-5, 70_000) | st.floats(allow_nan=False, allow_infinity=False, width=32)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    max_leaves=16,
)  # fmt: skip
rle = st.fixed_dictionaries(
    {
        "size": st.lists(st.integers(0, 70_000), min_size=2, max_size=2),
        "counts": st.text(alphabet=st.characters(min_codepoint=40, max_codepoint=115), max_size=30),
    }
)
prompt_object = st.fixed_dictionaries(
    {},
    optional={
        "obj_id": st.integers(-1, 2**31),
        "points": st.lists(st.lists(numbers, min_size=2, max_size=2), max_size=3),
        "point_labels": st.lists(st.integers(-1, 2), max_size=3),
        "box": st.lists(numbers, min_size=4, max_size=4),
        "mask": rle,
        "frame_index": st.integers(-1, 5),
        "label": st.text(max_size=5),
    },
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "objects": st.lists(prompt_object, max_size=3),
            "expressions": st.lists(st.text(max_size=20), max_size=3),
        },
    ),
)


@pytest.fixture(scope="module")
def app():
    from fastapi.testclient import TestClient

    from surgray.serving.auth import build_token_checker
    from surgray.serving.config import AuthConfig, ServeConfig
    from surgray.serving.http_app import build_app
    from surgray.serving.service import SegmentationService
    from surgray.serving.tracker_backend import TrackerBackend

    config = ServeConfig.from_args(
        {
            "model": {"variant": "micro", "checkpoint": "random:3", "image_size": 64},
            "sessions": {"max_per_replica": 8},
            "limits": {"max_image_side": 128, "max_body_bytes": 65536},
        }
    )
    backend = TrackerBackend.from_config(config)
    service = SegmentationService(backend, config)
    checker = build_token_checker(AuthConfig(insecure_no_auth=True))
    with TestClient(build_app(service, checker)) as client:
        yield client, service
    service.shutdown()
    backend.close()


def _no_5xx(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) >= {"error", "message"} and body["message"], body


def _cleanup(client, service) -> None:
    for session_id in service.store.session_ids():
        client.delete(f"/v1/sessions/{session_id}")
    assert len(service.store) == 0


@FUZZ
@given(body=bodies)
def test_session_create_bodies(app, body):
    client, service = app
    response = client.post("/v1/sessions", content=json.dumps(body).encode(),
                           headers={"Content-Type": "application/json"})  # fmt: skip
    _no_5xx(response)
    if response.status_code != 201:
        assert len(service.store) == 0  # a refused create holds no slot
    _cleanup(client, service)


@pytest.fixture(scope="module")
def session(app):
    client, service = app
    created = client.post("/v1/sessions", json={"objects": [{"box": [4, 4, 30, 30]}]})
    assert created.status_code == 201, created.text
    session_id = created.json()["session_id"]
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[10:30, 10:30] = 200
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    first = client.post(f"/v1/sessions/{session_id}/frames", content=buffer.getvalue(),
                        headers={"Content-Type": "image/png"})  # fmt: skip
    assert first.status_code == 200, first.text
    return session_id, buffer.getvalue()


@FUZZ
@given(body=bodies)
def test_prompt_bodies_on_a_live_session(app, session, body):
    client, _ = app
    session_id, _ = session
    response = client.post(f"/v1/sessions/{session_id}/prompts", content=json.dumps(body).encode(),
                           headers={"Content-Type": "application/json"})  # fmt: skip
    _no_5xx(response)


@FUZZ
@given(
    prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"]),
    noise=st.binary(max_size=200),
    cut=st.integers(0, 400),
    content_type=st.sampled_from(["image/png", "image/jpeg", "text/plain", ""]),
)
def test_frame_bodies(app, session, prefix, noise, cut, content_type):
    client, _ = app
    session_id, good = session
    body = prefix + noise if cut % 3 else good[:cut] + noise
    response = client.post(f"/v1/sessions/{session_id}/frames", content=body,
                           headers={"Content-Type": content_type})  # fmt: skip
    _no_5xx(response)
