"""What `surgray demo` feeds the annotation job and how it scores what comes back.

* `write_clip`: a seeded synthetic clip as MP4 plus its DAVIS-style ground truth, with the
  first-frame mask of every object visible there and one referring expression per object.
* `write_manifest`: the one-row manifest of a run, prompted by masks or by expressions (the
  job refuses text mixed with masks in one video, so the two are separate runs).
* `choose_weights`: which checkpoint runs, and whether it can take text.
* `score_run`: J, F, J&F of a run's Parquet masks against the ground truth, under
  `DEMO_PROTOCOL`. The text run's manifest gives each expression the ground-truth id of the
  object it was written for (`{"text": ..., "obj_id": N}`), so both runs write the ground
  truth's ids, and `surgray eval` with `EVAL_FLAGS` scores their outputs exactly as the demo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgray.model.checkpoints.shipped import SHIPPED_DIR as DEMO_ASSETS

REFERRING_CHECKPOINT = DEMO_ASSETS / "referring.pt"
MASK_CHECKPOINT = DEMO_ASSETS / "model.pt"
VIDEO_ID = "synthetic-case-0"
DEFAULT_IMAGE_SIZE = 128  # the shipped checkpoints' input size
# ReSurgSAM2's protocol: every frame is scored, the first and last included (SurgSAM2 skips
# them); the EndoVis18 instrument / tissue groups as extra rows.
PROTOCOL_NAME = "J&F over all frames, first and last included (ReSurgSAM2's protocol)"
EVAL_FLAGS = ("--no-skip-first-last", "--endovis18-groups")  # the same, for `surgray eval`
SCORES_FILE = "demo_scores.json"  # a run's report, in `surgray eval`'s eval_results.json form


@dataclass(frozen=True)
class DemoClip:
    video: Path
    ground_truth: Path
    num_frames: int
    events_off: tuple[str, ...]  # events a short clip has no room for
    mask_objects: tuple[dict[str, Any], ...]  # manifest prompt entries, first-frame masks
    expressions: dict[str, int] = field(default_factory=dict)  # text -> ground-truth obj_id


@dataclass(frozen=True)
class DemoWeights:
    checkpoint: str
    variant: str
    image_size: int
    description: str
    trained: bool
    takes_text: bool  # a referring checkpoint with a text tower (or a text encoder folder)


def clip_config(frames: int, size: int) -> tuple[Any, tuple[str, ...]]:
    """The synthetic clip's config with every event that fits in `frames` (the generator
    places the tracking events, and the scene effects, one after another with margins)."""
    from surgray.data.synthetic_plan import RAMP_FRAMES, SyntheticClipConfig

    cfg = SyntheticClipConfig(num_frames=frames, height=size, width=size)
    off: dict[str, bool] = {}
    if frames < 2 * RAMP_FRAMES + cfg.absence_frames + cfg.occlusion_frames + 6:
        off |= {"leave_and_return": False, "occlusion": False}
    if frames < cfg.smoke_frames + cfg.motion_blur_frames + 2:
        off |= {"smoke": False, "motion_blur": False}
    return cfg.model_copy(update=off), tuple(off)


def write_clip(out: Path, frames: int, size: int, seed: int) -> DemoClip:
    from surgray.data.synthetic import generate_clip
    from surgray.data.synthetic_writers import write_clip_folder, write_clip_video
    from surgray.io.masks import encode_rle

    config, events_off = clip_config(frames, size)
    clip = generate_clip(config, seed)
    video = out / "videos" / f"{VIDEO_ID}.mp4"
    video.parent.mkdir(parents=True, exist_ok=True)
    write_clip_video(clip, str(video))
    ground_truth = out / "ground_truth"
    write_clip_folder(clip, str(ground_truth), VIDEO_ID)
    objects = []
    for info in clip.objects:
        mask = clip.masks[0] == info.obj_id
        if mask.any():
            rle = encode_rle(mask[None])[0]
            objects.append(
                {
                    "obj_id": int(info.obj_id),
                    "label": info.category,
                    "frame": 0,
                    "mask_rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]},
                }
            )
    if not objects:
        raise RuntimeError(f"the synthetic clip (seed {seed}) has no object on its first frame")
    expressions: dict[str, int] = {}
    for expression in clip.expressions:
        # Two objects described alike cannot be told apart by text: the first one keeps it.
        expressions.setdefault(expression.text, int(expression.obj_id))
    return DemoClip(
        video.resolve(), ground_truth.resolve(), frames, events_off, tuple(objects), expressions
    )


def write_manifest(path: Path, clip: DemoClip, prompt: str) -> Path:
    row: dict[str, Any] = {"video_uri": str(clip.video), "video_id": VIDEO_ID}
    if prompt == "text":  # each expression asks for its ground-truth object's id
        row["text"] = [{"text": text, "obj_id": obj} for text, obj in clip.expressions.items()]
    else:
        row["prompts"] = {"objects": list(clip.mask_objects)}
    path.write_text(json.dumps(row) + "\n")
    return path


def _takes_text(metadata: dict[str, Any]) -> bool:
    from surgray.model.checkpoints.referring_checkpoint import REFERRING_METADATA_KEY

    referring = metadata.get(REFERRING_METADATA_KEY)
    if referring is None:
        return False
    fields = json.loads(referring)
    return fields.get("text_tower") is not None or fields.get("text_encoder") is not None


def describe_checkpoint(path: str, description: str, trained: bool) -> DemoWeights:
    from surgray.model.checkpoints.sam2_checkpoint import read_state_dict

    _, metadata = read_state_dict(path)
    if not metadata or "variant" not in metadata:
        raise ValueError(
            f"{path}: no surgray metadata naming the model variant; the demo runs checkpoints "
            "written by surgray (save_checkpoint / save_referring_checkpoint / surgray train)"
        )
    config = json.loads(metadata["config"]) if "config" in metadata else {}
    return DemoWeights(
        checkpoint=path,
        variant=metadata["variant"],
        image_size=int(config.get("image_size", DEFAULT_IMAGE_SIZE)),
        description=description,
        trained=trained,
        takes_text=_takes_text(metadata),
    )


def choose_weights(out: Path, given: Path | None) -> DemoWeights:
    """The given checkpoint, else the shipped referring one, else the shipped mask-only one,
    else a random-weight micro SAM2 written under `out` (untrained: the demo says so)."""
    if given is not None:
        if not given.is_file():
            raise FileNotFoundError(f"--checkpoint {given}: no such file")
        return describe_checkpoint(str(given.resolve()), f"checkpoint {given}", trained=True)
    if REFERRING_CHECKPOINT.is_file():
        return describe_checkpoint(
            str(REFERRING_CHECKPOINT), "shipped referring demo checkpoint", trained=True
        )
    if MASK_CHECKPOINT.is_file():
        return describe_checkpoint(
            str(MASK_CHECKPOINT), "shipped demo checkpoint (mask prompts only)", trained=True
        )
    import torch

    from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

    path = out / "checkpoints" / "random_micro.pt"
    torch.manual_seed(0)
    save_checkpoint(build_model("micro", image_size=DEFAULT_IMAGE_SIZE), str(path))
    return describe_checkpoint(str(path), "RANDOM-WEIGHT micro SAM2", trained=False)


def demo_protocol() -> Any:
    """The `EvalOptions` the demo scores with (see `PROTOCOL_NAME`, `EVAL_FLAGS`)."""
    from surgray.eval.evaluate import RESURGSAM2_PROTOCOL

    return RESURGSAM2_PROTOCOL


def eval_command(ground_truth: Path, masks: Path) -> str:
    """The `surgray eval` command that reproduces the demo's scores of one run."""
    return " ".join(("surgray eval --gt", str(ground_truth), "--pred", str(masks), *EVAL_FLAGS))


def score_run(ground_truth: Path, masks: Path) -> Any:
    """The `EvaluationReport` of one run under the demo's protocol (its ids are the ground
    truth's: the manifest gave them)."""
    from surgray.eval.evaluate import evaluate
    from surgray.eval.sources import open_predictions, video_inputs

    return evaluate(video_inputs(ground_truth, open_predictions(masks)), demo_protocol())
