"""Training ReSurgSAM2 (referring clips) and SAM2S's TSL head with the training job, without Ray:
config checks, checkpoints that rebuild the referring model, gradients where they belong,
frozen SAM2, DDP's handling of modules a clip does not use, and J&F from text prompts."""

from __future__ import annotations

import contextlib
import os
import re

import numpy as np
import pytest
import torch
from _local_http import free_port

from surgray.data.categories import INSTRUMENT_CATEGORIES, TISSUE_CATEGORIES
from surgray.data.synthetic_plan import DRAWABLE_INSTRUMENTS
from surgray.io.storage import LOCAL
from surgray.model.checkpoints.referring_checkpoint import REFERRING_METADATA_KEY
from surgray.model.checkpoints.sam2_checkpoint import (
    CheckpointMismatchError,
    read_state_dict,
    save_checkpoint,
)
from surgray.model.checkpoints.variants import micro_config
from surgray.model.referring.resurgsam2 import ReSurgSAM2
from surgray.model.sam2.network import SAM2Model
from surgray.train.checkpoints import (
    MODEL_FILE,
    TrainingState,
    build_training_model,
    load_trained_model,
    write_checkpoint,
)
from surgray.train.cli import evaluate_checkpoint
from surgray.train.clip_data import TrainingClip, TrainVideo, open_videos
from surgray.train.config import TrainConfig, TrainConfigError, parse_train_config
from surgray.train.loop import LoopHooks, WorkerLoop
from surgray.train.losses import tsl_info_nce
from surgray.train.step import encode_clip
from surgray.train.validation import _same_kind_union, validate

NEW_MODULES = ("cross_modal_fusion", "text_tower", "semantic_head")
REFERRING = {
    "text_tower": {"width": 32, "layers": 1, "heads": 2, "context_length": 16},
    "fusion": {
        "d_model": 32, "text_dim": 32, "text_hidden_dim": 64, "num_heads": 2, "mlp_dim": 64,
        "d_state": 4, "dwmlp_ratio": 2, "fusion_hidden_dim": 64,
    },
    "semantic_head": {"d_model": 32, "memory_dim": 16, "text_dim": 32, "num_heads": 2, "mlp_dim": 64},
    "categories": list(DRAWABLE_INSTRUMENTS),
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config_data(tmp_path, **sections) -> dict:
    data = {
        "model": {"variant": "micro", "image_size": 64, "referring": REFERRING},
        "data": {
            "source": "synthetic",
            "synthetic": {"train_videos": 2, "valid_videos": 1, "num_frames": 8, "height": 64, "width": 64},
        },
        "sampling": {
            "clip_length": 3, "max_objects": 2, "hybrid_fraction": 0.0, "referring_fraction": 0.5,
            "referring_context_frames": 1, "referring_context_window": 2, "referring_tracking_frames": 2,
            "referring_tracking_prob": 1.0,
        },
        "prompts": {"num_correction_clicks": 1},
        "optim": {"new_module_lr": 1e-3, "grad_clip_norm": 1.0, "trainable_prefixes": [f"{m}." for m in NEW_MODULES]},
        "schedule": {"epochs": 1, "steps_per_epoch": 4, "log_every": 100},
        "validation": {"every_epochs": 1, "max_videos": 1, "max_frames": 4},
        "checkpoint": {"storage_path": str(tmp_path / "runs")},
    }  # fmt: skip
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return data


def tiny_config(tmp_path, **sections) -> TrainConfig:
    return parse_train_config(config_data(tmp_path, **sections))


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "change, named",
    [
        (
            {"model": {"variant": "micro"}, "sampling": {"referring_fraction": 0.5}},
            "sampling.referring_fraction > 0 needs a referring model: set model.referring",
        ),
        ({"model": {"referring": {"fusion": {"depht": 3}}}}, "model.referring.fusion.depht: unknown key"),
        ({"model": {"referring": {"colour": "red"}}}, "model.referring.colour: unknown key"),
        (
            {"model": {"referring": {**REFERRING, "categories": []}}},
            "loss.tsl > 0 trains model.referring.semantic_head against category names",
        ),
        (
            {"model": {"referring": {**REFERRING, "text_tower": None}}},
            "referring clips and TSL need text features: set model.referring.text_tower",
        ),
        (
            {"model": {"referring": {**REFERRING, "semantic_head": {**REFERRING["semantic_head"], "memory_dim": 64}}}},
            "model.referring: referring config does not fit the model: semantic_head.memory_dim 64 != 16",
        ),
    ],
)  # fmt: skip
def test_bad_referring_configs_are_named(tmp_path, change, named):
    data = config_data(tmp_path)
    for section, values in change.items():
        data[section] = {**data[section], **values}
    if "variant" in change.get("model", {}) and "referring" not in change["model"]:
        del data["model"]["referring"]
    with pytest.raises(TrainConfigError, match="invalid training config") as info:
        parse_train_config(data)
    assert named in str(info.value)


def test_tsl_can_be_turned_off_without_categories(tmp_path):
    data = config_data(tmp_path, loss={"tsl": 0.0}, sampling={"referring_fraction": 0.0})
    data["model"]["referring"] = {**REFERRING, "categories": [], "semantic_head": None}
    assert parse_train_config(data).model.referring.categories == ()


# ---------------------------------------------------------------------- model and checkpoints


def test_a_plain_sam2_checkpoint_starts_the_referring_model(tmp_path):
    sam2 = SAM2Model(micro_config(64))
    torch.nn.init.normal_(sam2.no_mem_embed)  # a value the fresh referring model cannot have
    path = tmp_path / "sam2.pt"
    save_checkpoint(sam2, path)
    config = tiny_config(
        tmp_path, model={"init_checkpoint": str(path), "init_from": list(NEW_MODULES)}
    )
    model = build_training_model(config)
    assert isinstance(model, ReSurgSAM2) and model.text_tower is not None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sam2.state_dict().items())
    strict = tiny_config(tmp_path, model={"init_checkpoint": str(path)})
    with pytest.raises(CheckpointMismatchError, match="missing keys: cross_modal_fusion"):
        build_training_model(strict)


def test_training_checkpoints_rebuild_the_referring_model(tmp_path):
    config = tiny_config(tmp_path)
    model = build_training_model(config)
    write_checkpoint(tmp_path / "ckpt", model, TrainingState(1, 4), {"loss": 1.0}, config)
    _, metadata = read_state_dict(tmp_path / "ckpt" / MODEL_FILE)
    assert REFERRING_METADATA_KEY in metadata and metadata["global_step"] == 4
    loaded = load_trained_model(tmp_path / "ckpt")
    assert isinstance(loaded, ReSurgSAM2) and loaded.referring_cfg == model.referring_cfg
    saved = model.state_dict()
    assert any(k.startswith("text_tower.") for k in saved)
    assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items())


def test_training_clips_carry_category_ids():
    clip = TrainingClip(
        "sam2",
        torch.zeros(1, 3, 8, 8),
        torch.zeros(1, 3, 8, 8, dtype=torch.bool),
        (1, 2, 3),
        categories=("bipolar forceps", "liver", None),
    )
    assert clip.category_ids(["prograsp forceps", "bipolar forceps"]).tolist() == [1, -1, -1]


def test_synthetic_clips_name_their_objects_categories(tmp_path):
    loop = WorkerLoop(tiny_config(tmp_path, sampling={"referring_fraction": 0.0}))
    try:
        clip = loop.clip_for_step(0)
        video = next(v for v in loop.videos if v.video_id == clip.video_id)
        truth = {info.obj_id: info.category for info in video.clip.objects}
        assert clip.categories == tuple(truth[o] for o in clip.object_ids)
    finally:
        loop.close()


# ---------------------------------------------------------------------- training steps


def test_referring_and_tsl_steps_train_only_the_new_modules(tmp_path):
    reports = []
    loop = WorkerLoop(tiny_config(tmp_path), hooks=LoopHooks(report=lambda m, f: reports.append(m)))
    before = {k: v.clone() for k, v in loop.model.state_dict().items()}
    seen: dict[str, set[str]] = {}
    tsl = []
    try:
        for step in range(6):
            parts, kind = loop.train_step(step)
            assert np.isfinite(parts["total"])
            tsl.append((kind, parts["tsl"]))
            graded = {
                n.split(".")[0]
                for n, p in loop.model.named_parameters()
                if p.grad is not None and p.grad.abs().sum() > 0
            }
            seen.setdefault(kind, set()).update(graded)
    finally:
        loop.close()
    # Referring clips train the text tower and the fusion (and TSL on their tracked frames);
    # SAM2 clips train the semantic head only: SAM2 is frozen and the category embeddings are
    # fixed TSL targets.
    assert {"text_tower", "cross_modal_fusion", "semantic_head"} <= seen["referring"]
    assert seen["sam2"] == {"semantic_head"}
    assert any(kind == "sam2" and value > 0 for kind, value in tsl)
    after = loop.model.state_dict()
    changed = {k.split(".")[0] for k in after if not torch.equal(before[k], after[k])}
    assert changed == set(NEW_MODULES)


def test_tsl_term_is_the_info_nce_of_each_tracked_frame(tmp_path):
    loop = WorkerLoop(tiny_config(tmp_path, sampling={"referring_fraction": 0.0}))
    try:
        clip = loop.clip_for_step(0)
        out = loop.module(clip, torch.Generator().manual_seed(0))
        model = loop.model
        ids = clip.category_ids(model.referring_cfg.categories)
        text = model.category_embeddings()
        embedded = [p.semantic_embedding for p in out.predictions]
        # The initial conditioning frame has no memory: no embedding there.
        assert embedded[0] is None and all(e is not None for e in embedded[1:])
        expected = sum(tsl_info_nce(e, text, ids) for e in embedded[1:])
        assert torch.allclose(out.loss.tsl, expected)
        assert torch.allclose(out.loss.total - 0.1 * out.loss.tsl, _mask_terms(out.loss))
    finally:
        loop.close()


@pytest.mark.parametrize("trains_text", [False, True])
def test_tsl_reaches_the_text_tower_only_when_asked(tmp_path, trains_text):
    config = tiny_config(
        tmp_path, sampling={"referring_fraction": 0.0}, loss={"tsl_trains_text": trains_text}
    )
    loop = WorkerLoop(config)
    try:
        parts, kind = loop.train_step(0)
    finally:
        loop.close()
    assert kind == "sam2" and parts["tsl"] > 0
    grads = [p.grad for p in loop.model.text_tower.parameters()]
    reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    assert reached == trains_text


def _mask_terms(loss) -> torch.Tensor:
    return 20 * loss.focal + loss.dice + loss.iou + loss.object_class


def test_a_frozen_image_encoder_runs_without_autograd(tmp_path):
    model = build_training_model(tiny_config(tmp_path))
    images = torch.randn(2, 3, 64, 64)
    assert encode_clip(model, images)[0].image_embed.requires_grad
    for p in model.image_encoder.parameters():
        p.requires_grad_(False)
    feats = encode_clip(model, images)
    assert not feats[1].image_embed.requires_grad
    assert feats[1].high_res[0].requires_grad  # the decoder's conv_s0 still trains
    reference = model.encode_frames(images)
    assert torch.equal(reference[1].high_res[0], feats[1].high_res[0])


@contextlib.contextmanager
def gloo_group():
    dist = torch.distributed
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_reduces_the_new_modules_whichever_clip_kind_runs(tmp_path):
    from torch.nn.parallel import DistributedDataParallel

    def prepare(module):
        return DistributedDataParallel(module, find_unused_parameters=True)

    with gloo_group():
        loop = WorkerLoop(tiny_config(tmp_path), hooks=LoopHooks(prepare_module=prepare))
        try:
            kinds = [loop.train_step(step)[1] for step in range(6)]
        finally:
            loop.close()
    assert {"referring", "sam2"} <= set(kinds)  # both kinds ran one after the other


# ---------------------------------------------------------------------- validation


class _NoTextFor(TrainVideo):
    """A training video whose object `hidden` has no referring expression."""

    def __init__(self, video: TrainVideo, hidden: int) -> None:
        self.video, self.hidden = video, hidden
        self.video_id, self.num_frames = video.video_id, video.num_frames

    def load(self, positions):
        return self.video.load(positions)

    def expression(self, obj_id):
        return None if obj_id == self.hidden else self.video.expression(obj_id)


def test_validation_from_text(tmp_path):
    config = tiny_config(tmp_path)
    model = build_training_model(config).train()
    videos = open_videos(config.data, "valid", storage=LOCAL)
    result = validate(videos, model, 1, 4, predictor="text")
    assert 0.0 <= result.jf <= 1.0 and result.skipped_objects == 0
    assert model.training  # validation gives the model back in training mode
    _, ids = videos[0].load((0,))
    present = [int(v) for v in np.unique(ids[0]) if v]
    masked = validate(videos, model, 1, 4)
    assert result.objects == masked.objects == len(present)
    # Every synthetic object has a category: the kinds split the objects, and the overall J&F
    # (a mean over objects) is the object-weighted mean of the kinds' J&F.
    from surgray.data.categories import category_kind

    assert set(result.by_kind) == {category_kind(videos[0].category(obj)) for obj in present}
    assert sum(s.objects for s in result.by_kind.values()) == result.objects
    weighted = sum(s.jf * s.objects for s in result.by_kind.values()) / result.objects
    assert weighted == pytest.approx(result.jf, abs=1e-9)

    hidden = validate([_NoTextFor(videos[0], present[0])], model, 1, 4, predictor="text")
    assert hidden.skipped_objects == 1 and hidden.objects == len(present) - 1
    if len(present) > 1:
        assert hidden.as_metrics("val_text_")["val_text_skipped_objects"] == 1.0
    silent = [_NoTextFor(videos[0], obj) for obj in present[:1]]
    if len(present) == 1:
        with pytest.raises(ValueError, match="none of the 1 objects .* has a referring expression"):
            validate(silent, model, 1, 4, predictor="text")
    with pytest.raises(ValueError, match="needs a ReSurgSAM2"):
        validate(videos, SAM2Model(micro_config(64)), 1, 4, predictor="text")


class _Drawn(TrainVideo):
    """Hand-drawn id masks with given categories (None: unknown)."""

    def __init__(self, ids: np.ndarray, categories: dict[int, str | None]) -> None:
        self.ids, self.categories = ids, categories
        self.video_id, self.num_frames = "drawn", ids.shape[0]

    def load(self, positions):
        ids = self.ids[list(positions)]
        return np.zeros(ids.shape + (3,), np.uint8), ids

    def category(self, obj_id):
        return self.categories[obj_id]


def test_same_kind_answers_every_object_of_the_kind():
    ids = np.zeros((4, 6, 6), np.uint8)
    ids[:, 0, :2], ids[:, 2, :2], ids[:, 4, :] = 1, 2, 3  # two instruments and a tissue
    ids[:, 0, 4:] = 4  # an object of unknown category
    ids[2:, 5, :] = 5  # an instrument that only appears on frame 2
    categories = {1: "bipolar forceps", 2: "clip applier", 3: "liver", 4: None, 5: "vessel sealer"}
    video = _Drawn(ids, categories)
    unions = _same_kind_union(video, ids, [1, 2, 3, 4])
    assert unions.shape == (4, 4, 6, 6)
    assert np.array_equal(unions[:, 0], np.isin(ids, [1, 2, 5]))
    assert np.array_equal(unions[:, 1], unions[:, 0])
    assert np.array_equal(unions[:, 2], ids == 3)
    assert np.array_equal(unions[:, 3], ids == 4)
    # Alone in their kind, objects 3 and 4 score 1; the instruments share their answer.
    result = validate([video], None, 1, 4, predictor="same_kind")
    assert result.objects == 4
    assert result.by_kind["tissue"].jf == 1.0
    assert result.by_kind["instrument"].jf < 0.7


def test_epoch_reports_text_jf_and_evaluate_prints_every_row(tmp_path, capsys):
    reports = []

    def report(metrics, folder):
        reports.append(metrics)
        if folder is not None:
            import shutil

            shutil.copytree(folder, tmp_path / "kept")

    config = tiny_config(tmp_path, schedule={"steps_per_epoch": 1})
    WorkerLoop(config, hooks=LoopHooks(report=report)).run()
    metrics = reports[0]
    assert 0.0 <= metrics["val_text_jf"] <= 1.0 and 0.0 <= metrics["val_jf"] <= 1.0
    assert "loss_tsl" in metrics

    class Args:
        evaluate = os.fspath(tmp_path / "kept")
        eval_split, eval_videos, eval_frames = "valid", 1, 4

    assert evaluate_checkpoint(Args, config) == 0
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if not line.startswith("[surgray train")]  # progress lines
    assert all(
        re.search(r"; by kind: (instrument|tissue) \d\.\d{3} \(\d+ objects\)", line)
        for line in lines[:5]
    )
    rows = [line.split(":")[0].strip() for line in lines]
    assert rows[:5] == [
        "checkpoint, mask prompt",
        "checkpoint, text prompt",
        "repeat first-frame mask",
        "predict nothing",
        "all of its kind (oracle)",
    ]


def test_the_referring_demo_recipe_starts_from_the_demo_checkpoint():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = TrainConfig.from_yaml(os.path.join(root, "configs/train_demo_referring.yaml"))
    assert config.schedule.time_limit_s is None and config.schedule.total_steps >= 500
    init = os.path.join(root, config.model.init_checkpoint)
    section = config.model.model_copy(update={"init_checkpoint": init})
    model = build_training_model(config.model_copy(update={"model": section}))
    demo, _ = read_state_dict(init)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in demo.items())
    # The category probes train with the new modules (they only shape them; inference never
    # calls them), and so does the stride-8 text-pixel head.
    new_modules = (*NEW_MODULES, "category_probes", "text_pixel")
    assert set(config.optim.trainable_prefixes) == {f"{m}." for m in new_modules}
    assert set(config.model.init_from) == set(new_modules)
    assert config.loss.text_category > 0 and config.loss.pixel_category > 0
    # The config spells out the canonical names (YAML cannot import them): same names, same order.
    assert config.model.referring.grounding_categories == INSTRUMENT_CATEGORIES + TISSUE_CATEGORIES
    assert model.category_probes.num_categories == len(config.model.referring.grounding_categories)
    assert model.text_pixel is not None and model.text_pixel.scale.item() == 0.0
    # ReSurgSAM2's two stages: the new modules alone first, then everything (the image
    # encoder too: model.pt's features were learnt for tracking, not for telling categories).
    assert 0 < config.optim.unfreeze_at_step < config.schedule.total_steps
    assert config.optim.frozen_prefixes == ()
    assert config.model.referring.stage1_multimask is False


@pytest.mark.parametrize("multimask", [True, False])
def test_stage1_frames_are_supervised_with_as_many_masks_as_the_model_keeps(tmp_path, multimask):
    referring = REFERRING | {"stage1_multimask": multimask}
    config = tiny_config(
        tmp_path, model={"referring": referring}, sampling={"referring_fraction": 1.0}
    )
    loop = WorkerLoop(config)
    try:
        clip = loop.clip_for_step(0)
        out = loop.module(clip, torch.Generator().manual_seed(0))
    finally:
        loop.close()
    assert out.plan is None  # a referring clip: context frame, anchor, then tracked frames
    stage1 = out.predictions[:2]
    assert all(len(p.steps) == 1 for p in stage1)
    assert {p.steps[0].mask_logits.shape[1] for p in stage1} == {3 if multimask else 1}
    assert torch.isfinite(out.loss.total)


def test_a_clip_that_meets_no_trained_module_still_steps(tmp_path):
    # Image clips never reach the new modules; with SAM2 frozen nothing in their loss trains.
    config = tiny_config(
        tmp_path, data={"image_fraction": 1.0}, sampling={"referring_fraction": 0.0}
    )
    loop = WorkerLoop(config)
    try:
        parts, kind = loop.train_step(0)
    finally:
        loop.close()
    assert kind == "image" and np.isfinite(parts["total"]) and parts["tsl"] == 0.0


def test_local_paths_become_absolute_for_ray_workers(tmp_path):
    from surgray.train.run import with_absolute_paths

    config = tiny_config(
        tmp_path,
        model={"init_checkpoint": "assets/model.pt"},
        checkpoint={"resume_from": "s3://bucket/run/epoch_0001", "progress_file": "p.jsonl"},
    )
    fixed = with_absolute_paths(config, base="/work/repo")
    assert fixed.model.init_checkpoint == "/work/repo/assets/model.pt"
    assert fixed.checkpoint.resume_from == "s3://bucket/run/epoch_0001"
    assert fixed.checkpoint.progress_file == "/work/repo/p.jsonl"
    assert fixed.model.referring == config.model.referring
