"""surgray.serving without Ray: the micro-batcher, model loading and the tracker backend.

The backend is an adapter, so its masks are checked against the `Tracker` driven directly
with the same prompts and frames; the batcher is checked with hand-built batches.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from surgray.serving.batching import BatcherClosed, MicroBatcher
from surgray.serving.config import ServeConfig, ServedModel
from surgray.serving.model_loading import (
    RANDOM_WEIGHTS_NOTE,
    ModelLoadError,
    load_served_model,
    random_weights_seed,
    resolve_variant,
)
from surgray.serving.schemas import CreateSessionRequest, PromptsRequest, SegmentRequest
from surgray.serving.session_prompts import (
    FrameSizeMismatch,
    InvalidFrameIndex,
    InvalidPrompt,
    TextPromptsUnavailable,
    UnknownObject,
)
from surgray.serving.tracker_backend import TrackerBackend

HEIGHT, WIDTH = 48, 64


def scene(count: int, seed: int) -> np.ndarray:
    """[count, 48, 64, 3] uint8: a red disc drifting over a dark, noisy background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = rng.integers(0, 40, (HEIGHT, WIDTH, 3)).astype(np.uint8)
    frames = []
    for index in range(count):
        cx, cy = 16 + 1.2 * index + 3 * seed, 20 + 4 * np.sin(index / 3 + seed)
        image = base.copy()
        image[(cols - cx) ** 2 + (rows - cy) ** 2 <= 81] = (220, 60 + 30 * seed % 190, 40)
        frames.append(image)
    return np.stack(frames)


# -- micro-batcher -------------------------------------------------------------------------------
def _submit_all(batcher: MicroBatcher, items: list) -> list:
    results: list = [None] * len(items)
    errors: list = [None] * len(items)

    def call(position: int) -> None:
        try:
            results[position] = batcher.submit(items[position])
        except Exception as exc:  # collected for the assertions
            errors[position] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results if not any(errors) else errors


def test_batcher_groups_concurrent_submits_up_to_the_limit():
    seen: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        seen.append(sorted(items))
        return [item * 10 for item in items]

    batcher = MicroBatcher(run, max_batch_size=4, wait_timeout_s=1.0)
    assert _submit_all(batcher, [1, 2, 3, 4]) == [10, 20, 30, 40]
    assert seen == [[1, 2, 3, 4]]  # one call: the 4th item filled the batch before the timeout
    seen.clear()
    assert _submit_all(batcher, [5, 6, 7, 8, 9, 10]) == [50, 60, 70, 80, 90, 100]
    assert sorted(len(batch) for batch in seen) == [2, 4]
    assert (batcher.stats.batches, batcher.stats.items, batcher.stats.largest) == (3, 10, 4)
    batcher.close()


def test_batcher_waits_at_most_the_timeout_and_runs_one_alone():
    batcher = MicroBatcher(lambda items: items, max_batch_size=8, wait_timeout_s=0.05)
    started = time.perf_counter()
    assert batcher.submit("x") == "x"
    assert 0.04 <= time.perf_counter() - started < 2.0
    assert batcher.stats.largest == 1
    batcher.close()


def test_batcher_errors_reach_every_caller_and_close_refuses_new_work():
    def fail(items: list[int]) -> list[int]:
        raise ValueError(f"bad batch of {len(items)}")

    batcher = MicroBatcher(fail, max_batch_size=3, wait_timeout_s=1.0)
    errors = _submit_all(batcher, [1, 2, 3])
    assert [str(error) for error in errors] == ["bad batch of 3"] * 3
    short = MicroBatcher(lambda items: items[:-1], max_batch_size=1, wait_timeout_s=0)
    with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
        short.submit(1)
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(4)
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda items: items, max_batch_size=0, wait_timeout_s=0)


# -- model loading -------------------------------------------------------------------------------
def test_random_weights_are_seeded_and_announced():
    served = ServedModel(variant="micro", checkpoint="random:2", image_size=64)
    first, second = load_served_model(served), load_served_model(served)
    state_a, state_b = first.tracker.model.state_dict(), second.tracker.model.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    other = load_served_model(served.model_copy(update={"checkpoint": "random:3"}))
    key = "image_encoder.trunk.patch_embed.proj.weight"
    assert not torch.equal(other.tracker.model.state_dict()[key], state_a[key])
    info = first.info(text_prompts=False)
    assert info.description == RANDOM_WEIGHTS_NOTE and not info.text_prompts
    assert (random_weights_seed("random:17"), random_weights_seed("/ckpt/random:1.pt")) == (
        17,
        None,
    )
    assert resolve_variant("tiny") == "sam2.1_hiera_tiny" and resolve_variant("micro") == "micro"


def test_checkpoint_round_trip_and_load_errors(tmp_path):
    from surgray.model.checkpoints.sam2_checkpoint import save_checkpoint

    random_model = load_served_model(
        ServedModel(variant="micro", checkpoint="random:2", image_size=64)
    )
    path = tmp_path / "micro.pt"
    save_checkpoint(random_model.tracker.model, path)
    loaded = load_served_model(ServedModel(variant="micro", checkpoint=str(path), image_size=64))
    assert not loaded.random_weights
    assert loaded.info(text_prompts=False).description == ""
    for key, value in random_model.tracker.model.state_dict().items():
        assert torch.equal(loaded.tracker.model.state_dict()[key], value), key
    with pytest.raises(ModelLoadError, match="missing.pt: file not found"):
        load_served_model(ServedModel(variant="micro", checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(ModelLoadError, match="unknown model variant 'huge'"):
        load_served_model(ServedModel(variant="huge", checkpoint="random:0"))
    with pytest.raises(ModelLoadError, match="'random:<seed>'"):
        load_served_model(ServedModel(variant="micro", checkpoint="random:abc"))
    with pytest.raises(ModelLoadError, match="precision 'int3'"):
        load_served_model(ServedModel(variant="micro", checkpoint="random:0", precision="int3"))


def test_shipped_demo_checkpoints_load_by_name_with_their_own_text_tower():
    from surgray.model.referring.resurgsam2 import ReSurgSAM2

    loaded = load_served_model(
        ServedModel(variant="micro", checkpoint="demo:referring", image_size=128), device="cpu"
    )
    assert loaded.text_prompts and not loaded.random_weights
    assert isinstance(loaded.tracker.model, ReSurgSAM2)
    assert loaded.tracker.model.text_tower is not None
    masks_only = load_served_model(ServedModel(variant="micro", checkpoint="demo:model"))
    assert not masks_only.text_prompts
    with pytest.raises(ModelLoadError, match="shipped: demo:model, demo:referring"):
        load_served_model(ServedModel(variant="micro", checkpoint="demo:large"))
    # A separate CLIP folder would not match the fusion trained with the embedded tower.
    with pytest.raises(ModelLoadError, match="embeds its own text tower"):
        load_served_model(
            ServedModel(variant="micro", checkpoint="demo:referring", text_encoder="/clip")
        )


# -- backend -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backend():
    config = ServeConfig.from_args(
        {
            "model": {"variant": "micro", "checkpoint": "random:2", "image_size": 64},
            "batching": {"max_batch_size": 4, "wait_timeout_s": 0.2},
        }
    )
    built = TrackerBackend.from_config(config)
    yield built
    built.close()


def create(**body) -> CreateSessionRequest:
    return CreateSessionRequest.model_validate(body)


def box_session(backend, sid="s", box=(6, 10, 28, 31), **extra):
    return backend.open_session(sid, create(objects=[{"box": list(box), **extra}]))


def test_session_masks_equal_the_tracker_run_directly(backend):
    frames = scene(6, 2)
    state = box_session(backend)
    assert backend.describe(state).obj_ids == [1]
    tracker = backend.tracker
    video = tracker.start("direct", (HEIGHT, WIDTH))
    tracker.add_box(video, 1, 0, (6, 10, 28, 31))
    for index, frame in enumerate(frames):
        got = backend.track_frame(state, frame)
        want = tracker.step(video, frame).objects[0]
        assert (got.frame_index, got.height, got.width) == (index, HEIGHT, WIDTH)
        [obj] = got.objects
        assert obj.obj_id == 1 and obj.mask.dtype == bool
        assert np.array_equal(obj.mask, want.mask)
        assert obj.state == ("tracking" if want.present else "lost")
        assert obj.score == pytest.approx(1 / (1 + np.exp(-want.object_score)))
    assert sum(int(obj.mask.sum()) for obj in got.objects) > 0  # the scene gives a real mask
    backend.close_session(state)
    assert state.closed and state.video.closed


def test_concurrent_sessions_share_batches_and_match_sequential_runs(backend):
    frames = [scene(4, seed) for seed in range(3)]
    sequential = []
    for seed in range(3):
        state = box_session(backend, f"seq{seed}", box=(6 + 3 * seed, 10, 28 + 3 * seed, 31))
        sequential.append([backend.track_frame(state, f).objects[0].mask for f in frames[seed]])
    states = [
        box_session(backend, f"par{seed}", box=(6 + 3 * seed, 10, 28 + 3 * seed, 31))
        for seed in range(3)
    ]
    before = backend.batcher.stats.batches
    masks: list[list] = [[] for _ in range(3)]
    barrier = threading.Barrier(3)

    def stream(seed: int) -> None:
        for frame in frames[seed]:
            barrier.wait(10)
            masks[seed].append(backend.track_frame(states[seed], frame).objects[0].mask)

    threads = [threading.Thread(target=stream, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert backend.batcher.stats.largest == 3
    assert backend.batcher.stats.batches - before < 12  # 12 frames in fewer model calls
    for seed in range(3):
        assert all(np.array_equal(a, b) for a, b in zip(masks[seed], sequential[seed]))


def test_mid_stream_prompts_and_their_errors(backend):
    frames = scene(4, 2)
    state = box_session(backend, "mid")
    backend.track_frame(state, frames[0])
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[5:20, 40:60] = True
    from surgray.io.masks import encode_rle

    rle = encode_rle(mask[None])[0]
    backend.add_prompts(state, PromptsRequest.model_validate({"objects": [{"mask": rle}]}))
    assert backend.describe(state).obj_ids == [1, 2]  # a new id, the first free one
    assert [o.obj_id for o in backend.track_frame(state, frames[1]).objects] == [1, 2]
    with pytest.raises(UnknownObject, match="tracks no object 9 .*background clicks alone"):
        backend.add_prompts(
            state,
            PromptsRequest.model_validate(
                {"objects": [{"obj_id": 9, "points": [[3, 3]], "point_labels": [0]}]}
            ),
        )
    with pytest.raises(
        InvalidFrameIndex, match=r"frame_index 0; .*last \(1\) or the next one \(2\)"
    ):
        backend.add_prompts(
            state,
            PromptsRequest.model_validate({"objects": [{"box": [1, 1, 9, 9], "frame_index": 0}]}),
        )
    with pytest.raises(InvalidPrompt, match=r"box .*outside the frame"):
        backend.add_prompts(
            state, PromptsRequest.model_validate({"objects": [{"box": [1, 1, 90, 9]}]})
        )
    small = encode_rle(np.ones((1, 10, 10), dtype=bool))[0]
    with pytest.raises(InvalidPrompt, match="the mask is 10x10 .* frames are 64x48"):
        backend.add_prompts(state, PromptsRequest.model_validate({"objects": [{"mask": small}]}))
    # A correction of object 1 on the frame processed last runs at once; tracking goes on.
    backend.add_prompts(
        state,
        PromptsRequest.model_validate(
            {
                "objects": [
                    {"obj_id": 1, "points": [[20, 20]], "point_labels": [0], "frame_index": 1}
                ]
            }
        ),
    )
    with pytest.raises(FrameSizeMismatch, match="frame is 32x24 .* session's frames are 64x48"):
        backend.track_frame(state, np.zeros((24, 32, 3), dtype=np.uint8))
    assert backend.track_frame(state, frames[2]).frame_index == 2
    backend.close_session(state)


def test_first_frame_checks_the_waiting_prompts(backend):
    frames = scene(2, 2)
    state = backend.open_session(
        "first", create(objects=[{"box": [6, 10, 28, 31]}, {"obj_id": 4, "box": [50, 10, 99, 20]}])
    )
    assert backend.describe(state).obj_ids == [1, 4]
    with pytest.raises(InvalidPrompt, match=r"object 4: box .* outside the frame.*dropped"):
        backend.track_frame(state, frames[0])
    assert backend.describe(state).obj_ids == [1] and state.video is None
    result = backend.track_frame(state, frames[0])  # the frame again, now it fits
    assert (result.frame_index, [o.obj_id for o in result.objects]) == (0, [1])
    backend.close_session(state)

    from surgray.io.masks import encode_rle

    rle = encode_rle(np.ones((1, 30, 40), dtype=bool))[0]
    masked = backend.open_session("masked", create(objects=[{"mask": rle, "label": "liver"}]))
    with pytest.raises(FrameSizeMismatch, match="mask prompts are 40x30"):
        backend.track_frame(masked, frames[0])
    other = encode_rle(np.ones((1, 20, 20), dtype=bool))[0]
    with pytest.raises(InvalidPrompt, match="the mask is 20x20 .* frames are 40x30"):
        backend.open_session("two-sizes", create(objects=[{"mask": rle}, {"mask": other}]))
    with pytest.raises(InvalidFrameIndex, match="no frame yet"):
        backend.open_session("later", create(objects=[{"box": [1, 1, 5, 5], "frame_index": 3}]))
    with pytest.raises(InvalidPrompt, match="a mask, or points and/or a box, not both"):
        backend.open_session("both", create(objects=[{"mask": rle, "box": [1, 1, 5, 5]}]))


def test_text_prompts_are_refused_until_the_referring_pipeline_exists(backend):
    assert backend.models()[0].text_prompts is False
    with pytest.raises(TextPromptsUnavailable, match="no text encoder and referring fusion"):
        backend.open_session("text", create(expressions=["the grasper"]))
    state = box_session(backend, "text2")
    with pytest.raises(TextPromptsUnavailable):
        backend.add_prompts(state, PromptsRequest(expressions=["the liver"]))
    with pytest.raises(TextPromptsUnavailable):
        backend.segment_video(b"video", SegmentRequest(expressions=["the liver"]))


# -- text prompts (tiny ReSurgSAM2 + tiny CLIP) ------------------------------------------------
# Every stage-1 frame is a credible candidate and a tracked object is never lost, so a text
# object searches for WINDOW - 1 frames and is tracked from the WINDOW-th (CIFS picks it).
WINDOW = 3
ACCEPT = {
    "score_threshold": 0.0,
    "iou_threshold": 0.0,
    "lost_score_threshold": 0.0,
    "window": WINDOW,
}


@pytest.fixture(scope="module")
def referring_checkpoint(tmp_path_factory):
    from _referring_fixtures import script_scores, tiny_model, write_tiny_clip

    from surgray.model.checkpoints.referring_checkpoint import save_referring_checkpoint
    from surgray.tracking.cifs import CIFSConfig

    root = tmp_path_factory.mktemp("referring")
    clip_dir = write_tiny_clip(root / "clip")
    model = tiny_model(clip_dir, size=64, cifs=CIFSConfig(**ACCEPT))
    script_scores(model, object_score=4.0, iou=0.9)  # objects are seen on every frame
    path = root / "resurgsam2.pt"
    save_referring_checkpoint(model, path)  # no text encoder folder in the metadata
    return path, clip_dir


@pytest.fixture(scope="module")
def referring_backend(referring_checkpoint):
    path, clip_dir = referring_checkpoint
    config = ServeConfig.from_args(
        {
            "model": {
                "variant": "micro",
                "checkpoint": str(path),
                "image_size": 64,
                "text_encoder": str(clip_dir),
            },
            "batching": {"max_batch_size": 2, "wait_timeout_s": 0.0},
        }
    )
    built = TrackerBackend.from_config(config, device="cpu")
    yield built
    built.close()


def test_referring_checkpoint_needs_a_text_encoder_folder(referring_checkpoint):
    path, _ = referring_checkpoint
    with pytest.raises(ModelLoadError, match="no text encoder folder is known"):
        load_served_model(ServedModel(variant="micro", checkpoint=str(path), image_size=64))


def test_text_session_reports_states_and_maps_ids_to_expressions(referring_backend):
    from surgray.model.referring.resurgsam2 import ReSurgSAM2

    assert isinstance(referring_backend.tracker.model, ReSurgSAM2)
    assert referring_backend.models()[0].text_prompts is True
    state = referring_backend.open_session(
        "text", create(expressions=["the grasper"], objects=[{"box": [6, 10, 28, 31]}])
    )
    # The box object takes id 1 (assigned first), the expression the next free id.
    summary = referring_backend.describe(state)
    assert (summary.expressions, summary.obj_ids) == (["the grasper"], [2, 1])
    frames = scene(5, seed=0)
    seen: dict[int, list[str]] = {1: [], 2: [], 3: []}
    for index, image in enumerate(frames):
        tracked = referring_backend.track_frame(state, image)
        assert tracked.frame_index == index
        for obj in tracked.objects:
            assert obj.mask.shape == (HEIGHT, WIDTH) and obj.mask.dtype == np.bool_
            seen[obj.obj_id].append(obj.state)
            if obj.obj_id == 2:
                assert obj.label == "the grasper"
        if index == 1:
            # A new expression mid-stream gets the next free id and searches from frame 2.
            referring_backend.add_prompts(state, PromptsRequest(expressions=["the needle"]))
            summary = referring_backend.describe(state)
            assert summary.expressions == ["the grasper", "the needle"]
            assert summary.obj_ids == [2, 3, 1]
    assert seen[1] == ["tracking"] * 5
    assert seen[2] == ["searching"] * (WINDOW - 1) + ["tracking"] * (5 - WINDOW + 1)
    assert seen[3] == ["searching"] * (WINDOW - 1) + ["tracking"]
    with pytest.raises(InvalidPrompt, match=r"'the needle' \(object 3\)"):
        referring_backend.add_prompts(state, PromptsRequest(expressions=["the needle"]))
    referring_backend.close_session(state)


def _encode_mp4(path, frames: np.ndarray) -> np.ndarray:
    """Write frames as an MPEG-4 MP4 with PyAV; returns the frames as decoded back."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_segment_video_tracks_every_frame_like_a_session(referring_backend, tmp_path):
    from surgray.serving.config import LimitsConfig
    from surgray.serving.tracker_backend import FrameLimit, InvalidVideo

    path = tmp_path / "clip.mp4"
    decoded = _encode_mp4(path, scene(4, seed=1))
    request = SegmentRequest(expressions=["the grasper", "the needle"])
    frames = list(referring_backend.segment_video(path.read_bytes(), request))
    assert [frame.frame_index for frame in frames] == [0, 1, 2, 3]
    assert all((frame.height, frame.width) == (HEIGHT, WIDTH) for frame in frames)
    states = [[obj.state for obj in frame.objects] for frame in frames]
    assert states == [["searching"] * 2] * (WINDOW - 1) + [["tracking"] * 2] * (4 - WINDOW + 1)
    assert [obj.label for obj in frames[0].objects] == ["the grasper", "the needle"]
    # The same expressions in a session over the decoded frames give the same masks.
    state = referring_backend.open_session("same", create(expressions=request.expressions))
    for frame, image in zip(frames, decoded, strict=True):
        tracked = referring_backend.track_frame(state, image)
        assert [o.obj_id for o in tracked.objects] == [o.obj_id for o in frame.objects] == [1, 2]
        for ours, theirs in zip(frame.objects, tracked.objects, strict=True):
            assert np.array_equal(ours.mask, theirs.mask)
    referring_backend.close_session(state)

    short = TrackerBackend(referring_backend.loaded, limits=LimitsConfig(max_video_frames=3))
    try:
        stream = short.segment_video(path.read_bytes(), request)
        assert [next(stream).frame_index for _ in range(3)] == [0, 1, 2]
        with pytest.raises(FrameLimit, match="more than 3 frames"):
            next(stream)
    finally:
        short.close()
    with pytest.raises(InvalidVideo, match="cannot decode the video"):
        next(referring_backend.segment_video(b"not a video at all", request))
