"""Prompt simulation for training, as SAM2 trains (clicks themselves: `surgray.train.clicks`).

How SAM2 prompts a training clip (facebookresearch/sam2 `training/model/sam2.py`),
reproduced by `plan_clip_prompts`, `initial_prompt` and `correction_click`:
- per clip, one draw decides between the ground-truth mask (`1 - prob_point_input`) and
  clicks; with clicks, each initial conditioning frame draws a noisy GT box
  (`prob_box_input`) or one click;
- the first frame is always an initial conditioning frame; up to `num_init_cond_frames`
  (a random number from 1 to it when `rand_init_cond_frames`) more are drawn among the rest;
- with clicks only, correction clicks are added on the initial conditioning frames and on
  extra random frames up to `num_frames_to_correct`; with
  `add_all_frames_to_correct_as_cond` those frames become conditioning frames too;
- a one-frame clip (an image) always uses clicks;
- each correction click comes from the current prediction's errors, or, with probability
  `prob_sample_from_gt`, from the GT mask alone.

Randomness comes only from the `torch.Generator` given, so a seed fixes every prompt.
SAM2S's deterministic evaluation clicks are `evaluation_clicks` (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from surgray.train.clicks import (
    Clicks,
    EvaluationClicks,
    box_clicks,
    center_error_click,
    check_masks,
    error_click,
    evaluation_clicks,
    mask_boxes,
    uniform_error_click,
)

__all__ = [
    "Clicks",
    "ClipPromptPlan",
    "EvaluationClicks",
    "InitialPrompt",
    "PromptKind",
    "PromptSimConfig",
    "box_clicks",
    "center_error_click",
    "correction_click",
    "error_click",
    "evaluation_clicks",
    "initial_prompt",
    "mask_boxes",
    "plan_clip_prompts",
    "uniform_error_click",
]

PromptKind = Literal["mask", "point", "box"]


class PromptSimConfig(BaseModel):
    """Prompt simulation; defaults follow SurgSAM2's SAM2.1 EndoVis18 training config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prob_point_input: float = Field(0.5, ge=0, le=1)  # otherwise the GT mask is the prompt
    prob_box_input: float = Field(0.5, ge=0, le=1)  # share of the click inputs given as boxes
    prob_sample_from_gt: float = Field(0.1, ge=0, le=1)  # correction click from GT, not errors
    num_correction_clicks: int = Field(7, ge=0)
    num_init_cond_frames: int = Field(1, ge=1)
    rand_init_cond_frames: bool = True
    num_frames_to_correct: int = Field(1, ge=1)
    rand_frames_to_correct: bool = True
    add_all_frames_to_correct_as_cond: bool = True
    click_sampling: Literal["uniform", "center"] = "uniform"  # SAM2: uniform in training
    box_noise: float = Field(0.1, ge=0)  # fraction of the box side
    box_noise_bound: float = Field(20.0, ge=0)  # pixels

    @model_validator(mode="after")
    def _corrections_cover_init_frames(self) -> PromptSimConfig:
        if self.num_frames_to_correct < self.num_init_cond_frames:
            raise ValueError(
                f"num_frames_to_correct ({self.num_frames_to_correct}) must be >= "
                f"num_init_cond_frames ({self.num_init_cond_frames}): every initial "
                "conditioning frame receives correction clicks"
            )
        return self


@dataclass
class InitialPrompt:
    """The prompt of an initial conditioning frame: clicks (point or box) or the GT mask."""

    kind: PromptKind
    clicks: Clicks | None = None
    mask: torch.Tensor | None = None  # [N, H, W] bool


@dataclass
class ClipPromptPlan:
    """Which frames of a clip are prompted, how, and which get correction clicks."""

    num_frames: int
    use_point_input: bool
    init_cond_frames: list[int]
    frames_to_correct: list[int]
    add_corrected_as_cond: bool

    @property
    def processing_order(self) -> list[int]:
        """Initial conditioning frames first (to become memories), then the rest in order."""
        rest = [t for t in range(self.num_frames) if t not in self.init_cond_frames]
        return list(self.init_cond_frames) + rest

    def is_conditioning(self, frame: int) -> bool:
        """Whether the frame's output is stored as a conditioning memory."""
        return frame in self.init_cond_frames or (
            self.add_corrected_as_cond and frame in self.frames_to_correct
        )


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def _randint_inclusive(low: int, high: int, generator: torch.Generator) -> int:
    return int(torch.randint(low, high + 1, (), generator=generator))


def _choose(pool: list[int], count: int, generator: torch.Generator) -> list[int]:
    order = torch.randperm(len(pool), generator=generator)[:count]
    return [pool[i] for i in order.tolist()]


def plan_clip_prompts(
    num_frames: int, config: PromptSimConfig, generator: torch.Generator
) -> ClipPromptPlan:
    """Draw the prompting plan of a training clip of `num_frames` frames."""
    if num_frames < 1:
        raise ValueError(f"plan_clip_prompts: num_frames must be >= 1, got {num_frames}")
    prob_point, num_init, num_correct = (
        config.prob_point_input,
        config.num_init_cond_frames,
        config.num_frames_to_correct,
    )
    if num_frames == 1:  # an image: SAM2 always clicks on images
        prob_point, num_init, num_correct = 1.0, 1, 1
    use_points = _uniform(generator) < prob_point
    if config.rand_init_cond_frames and num_init > 1:
        num_init = _randint_inclusive(1, num_init, generator)
    if use_points and config.rand_frames_to_correct and num_correct > num_init:
        num_correct = _randint_inclusive(num_init, num_correct, generator)
    # Short clips cannot hold more prompted frames than they have.
    num_init = min(num_init, num_frames)
    num_correct = min(max(num_correct, num_init), num_frames)

    init_frames = [0] + _choose(list(range(1, num_frames)), num_init - 1, generator)
    if not use_points:
        corrected: list[int] = []
    else:
        others = [t for t in range(num_frames) if t not in init_frames]
        corrected = init_frames + _choose(others, num_correct - num_init, generator)
    return ClipPromptPlan(
        num_frames=num_frames,
        use_point_input=use_points,
        init_cond_frames=init_frames,
        frames_to_correct=corrected,
        add_corrected_as_cond=config.add_all_frames_to_correct_as_cond,
    )


def initial_prompt(
    gt: torch.Tensor,
    use_point_input: bool,
    config: PromptSimConfig,
    generator: torch.Generator,
) -> InitialPrompt:
    """The prompt of one initial conditioning frame for its N objects ([N, H, W] bool)."""
    check_masks(gt, None, "initial_prompt")
    if not use_point_input:
        return InitialPrompt("mask", mask=gt)
    if _uniform(generator) < config.prob_box_input:
        clicks = box_clicks(gt, generator, config.box_noise, config.box_noise_bound)
        return InitialPrompt("box", clicks=clicks)
    return InitialPrompt("point", clicks=error_click(gt, None, config.click_sampling, generator))


def correction_click(
    gt: torch.Tensor,
    pred_logits: torch.Tensor,
    config: PromptSimConfig,
    generator: torch.Generator,
) -> Clicks:
    """The next correction click of N objects, from the errors of the current prediction
    (logits [N, H, W] or [N, 1, H, W], > 0 = object); with probability
    `prob_sample_from_gt` it ignores the prediction and clicks inside the GT mask."""
    if pred_logits.numel() != gt.numel():
        raise ValueError(
            f"correction_click: prediction of shape {list(pred_logits.shape)} does not match "
            f"the gt masks {list(gt.shape)}"
        )
    pred = pred_logits.reshape(gt.shape) > 0
    # Draw only when the option is on, so that turning it off keeps the random stream.
    if config.prob_sample_from_gt > 0 and _uniform(generator) < config.prob_sample_from_gt:
        pred = None
    return error_click(gt, pred, config.click_sampling, generator)
