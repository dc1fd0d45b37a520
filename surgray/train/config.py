"""`TrainConfig`: everything a fine-tuning run needs, validated before any worker starts.

One YAML file (see `configs/train_*.yaml`) maps onto these sections:

    model        variant, image size, initial weights, new modules allowed to be missing
    data         dataset kind and location, splits, image:video mix
    sampling     clip sampling (SAM2, DiveMem hybrid, ReSurgSAM2 referring)
    prompts      prompt simulation (`surgray.train.prompts.PromptSimConfig`)
    loss         loss weights (`surgray.train.losses.LossConfig`)
    optim        optimizer, schedule shape and freezing (`surgray.train.optim.OptimConfig`)
    schedule     epochs, steps, limits, logging cadence
    scaling      Ray Train workers
    checkpoint   where checkpoints go, how many are kept, what to resume from
    failure      how many worker failures to recover from
    validation   J&F on a held-out split
    storage      the object store of every URI above (`surgray.io.storage_config.StorageConfig`)

Unknown keys anywhere are errors; `from_yaml` and `parse_train_config` report every problem as
`section.key: message` so a typo names itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from surgray.config import validate_config
from surgray.errors import UserError
from surgray.io.storage_config import StorageConfig
from surgray.model.referring.config import ReferringConfig
from surgray.train.losses import LossConfig
from surgray.train.optim import OptimConfig
from surgray.train.prompts import PromptSimConfig

SourceKind = Literal["synthetic", "sasv", "ref_endovis", "davis"]
PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]


class TrainConfigError(UserError, ValueError):
    """A training config that cannot run; the message names the offending keys."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    variant: str = "micro"
    image_size: int | None = Field(None, gt=0)  # None: the variant's own
    # Nested changes to the variant's ModelConfig, e.g. {"memory": {"num_maskmem": 4}}.
    overrides: dict[str, Any] = Field(default_factory=dict)
    init_checkpoint: str | None = None  # local path or fsspec URI; None: random weights
    # Module prefixes that may be missing from `init_checkpoint` (new modules, e.g.
    # "long_term_tpos_enc"); they keep their fresh initialisation.
    init_from: tuple[str, ...] = ()
    # ReSurgSAM2 (text referring head, SAM2S semantic head): the network is a `ReSurgSAM2`,
    # and `init_checkpoint` may be a plain SAM2 one with the new modules named in `init_from`.
    referring: ReferringConfig | None = None

    @model_validator(mode="after")
    def _referring_fits(self) -> ModelSection:
        if self.referring is None:
            return self
        from surgray.model.checkpoints.variants import get_variant
        from surgray.model.referring.config import check_referring_config

        try:
            cfg = get_variant(self.variant, image_size=self.image_size, **self.overrides)
        except Exception:  # an unknown variant or bad overrides: preflight names it
            return self
        try:
            check_referring_config(cfg, self.referring)
        except ValueError as exc:
            raise ValueError(f"model.referring: {exc}") from None
        return self


class SyntheticSourceSection(_Section):
    """Clips drawn on the fly by `surgray.data.synthetic` (no files needed)."""

    train_videos: int = Field(16, ge=1)
    valid_videos: int = Field(4, ge=1)
    test_videos: int = Field(16, ge=1)  # the held-out split the demo's gates are measured on
    num_frames: int = Field(24, ge=2)
    height: int = Field(128, ge=32)
    width: int = Field(128, ge=32)
    seed: int = 0
    vary: bool = True  # object counts and events differ per clip
    events: bool = False  # leave-and-return, occlusion, smoke, motion blur


class DataSection(_Section):
    source: SourceKind = "synthetic"
    root: str | None = None  # dataset folder or URI (all kinds but synthetic)
    train_split: str = "train"
    valid_split: str | None = "valid"
    synthetic: SyntheticSourceSection = SyntheticSourceSection()
    # Share of training samples that are single annotated frames (SAM2S mixes 1 image batch
    # per 4 video batches: 0.2). Images are drawn from the training videos.
    image_fraction: float = Field(0.0, ge=0, le=1)
    object_ids: tuple[int, ...] | None = None  # train only on these ids (SAM2's used_object_ids)
    # Videos checked frame by frame (sizes from file headers) before training; None: all.
    preflight_videos: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _root_for_files(self) -> DataSection:
        if self.source != "synthetic" and not self.root:
            raise ValueError(f"data.root is required for source {self.source!r}")
        return self


class SamplingSection(_Section):
    clip_length: int = Field(8, ge=1)  # SAM2: 8 frames
    max_stride: int = Field(1, ge=1)  # SAM2 clips use a random stride in [1, max_stride]
    max_objects: int = Field(3, ge=1)
    reverse_prob: float = Field(0.0, ge=0, le=1)  # SAM2 clips played backwards
    # DiveMem: share of video clips sampled hybrid (SAM2S mixes 1:1).
    hybrid_fraction: float = Field(0.5, ge=0, le=1)
    hybrid_random_frames: int = Field(3, ge=2)  # 1 conditioning + long-term frames
    hybrid_consecutive_frames: int = Field(5, ge=1)
    # ReSurgSAM2: share of video clips that are referring clips (needs a referring model).
    referring_fraction: float = Field(0.0, ge=0, le=1)
    referring_tracking_prob: float = Field(0.5, ge=0, le=1)  # tracking vs referring-only
    referring_context_frames: int = Field(2, ge=0)
    referring_context_window: int = Field(4, ge=0)
    referring_tracking_frames: int = Field(7, ge=0)
    referring_reverse_prob: float = Field(0.25, ge=0, le=1)
    hflip_prob: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> SamplingSection:
        if self.hybrid_fraction + self.referring_fraction > 1:
            raise ValueError(
                "sampling.hybrid_fraction + sampling.referring_fraction must be <= 1, got "
                f"{self.hybrid_fraction} + {self.referring_fraction}"
            )
        if self.referring_context_frames > self.referring_context_window:
            raise ValueError(
                f"sampling.referring_context_frames ({self.referring_context_frames}) must be <= "
                f"sampling.referring_context_window ({self.referring_context_window})"
            )
        return self


class ScheduleSection(_Section):
    epochs: int = Field(10, ge=1)
    steps_per_epoch: int = Field(100, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop early after this many steps in all
    time_limit_s: float | None = Field(None, gt=0)  # stop after the step that crosses it
    log_every: int = Field(10, ge=1)  # one log line per this many steps
    seed: int = 0

    @property
    def total_steps(self) -> int:
        total = self.epochs * self.steps_per_epoch
        return min(total, self.max_steps) if self.max_steps is not None else total


class ScalingSection(_Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1)  # None: max(1, floor(cpus_per_worker))
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with GPUs, else gloo
    bf16: bool = True  # autocast to bf16 on GPU (never on CPU)
    address: str | None = None  # Ray cluster to join; None: the current or a local one
    # How Ray places the workers' resource bundles (ScalingConfig.placement_strategy): PACK
    # fills a node first (Ray's default), SPREAD spreads over nodes when it can, STRICT_SPREAD
    # puts every worker on its own node (and waits for nodes until there are enough).
    placement_strategy: PlacementStrategy = "PACK"

    @field_validator("placement_strategy", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class CheckpointSection(_Section):
    storage_path: str = "./runs"  # local folder or s3://bucket/prefix
    name: str = "surgray-train"
    keep: int = Field(2, ge=1)
    resume_from: str | None = None  # a checkpoint folder (local or URI) to start from
    # Local file where every worker appends {pid, rank, epoch, step} lines (for monitoring
    # and the fault-tolerance test); None: not written.
    progress_file: str | None = None


class FailureSection(_Section):
    max_failures: int = Field(0, ge=-1)


class ValidationSection(_Section):
    every_epochs: int = Field(1, ge=0)  # 0: no validation
    split: str | None = None  # None: data.valid_split
    max_videos: int = Field(4, ge=1)
    max_frames: int = Field(16, ge=2)
    prompt: Literal["mask"] = "mask"  # first-frame mask prompt
    # Referring models also score text prompts (`val_text_jf`): each object's expression is
    # added on the first frame and the tracker finds it (CIFS) and tracks it.
    text: bool = True


class TrainConfig(_Section):
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    sampling: SamplingSection = SamplingSection()
    prompts: PromptSimConfig = PromptSimConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleSection = ScheduleSection()
    scaling: ScalingSection = ScalingSection()
    checkpoint: CheckpointSection = CheckpointSection()
    failure: FailureSection = FailureSection()
    validation: ValidationSection = ValidationSection()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _validation_split(self) -> TrainConfig:
        if self.validation.every_epochs and self.validation_split is None:
            raise ValueError(
                "validation.every_epochs > 0 needs validation.split or data.valid_split"
            )
        problems = self._referring_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _referring_problems(self) -> list[str]:
        problems = []
        referring = self.model.referring
        referring_clips = self.sampling.referring_fraction > 0
        if referring_clips and self.data.source not in ("ref_endovis", "synthetic"):
            problems.append(
                "sampling.referring_fraction > 0 needs referring expressions: data.source "
                f"must be ref_endovis or synthetic, got {self.data.source!r}"
            )
        probes = self.loss.text_category > 0 or self.loss.pixel_category > 0
        if referring is None:
            if probes:
                problems.append(
                    "loss.text_category and loss.pixel_category need a referring model with "
                    "model.referring.grounding_categories"
                )
            if referring_clips:
                problems.append(
                    "sampling.referring_fraction > 0 needs a referring model: set "
                    "model.referring (ReSurgSAM2's fusion and a text tower or text encoder)"
                )
            return problems
        tsl = referring.semantic_head is not None and self.loss.tsl > 0
        if tsl and not referring.categories:
            problems.append(
                "loss.tsl > 0 trains model.referring.semantic_head against category names: "
                "set model.referring.categories (or loss.tsl: 0)"
            )
        if probes and not referring.grounding_categories:
            problems.append(
                "loss.text_category and loss.pixel_category train the category probes: set "
                "model.referring.grounding_categories (or both weights to 0)"
            )
        if (referring_clips or tsl) and not has_text_source(referring):
            problems.append(
                "referring clips and TSL need text features: set model.referring.text_tower "
                "(a small text tower trained with the model) or model.referring.text_encoder "
                "(a CLIP text folder)"
            )
        return problems

    @property
    def validation_split(self) -> str | None:
        return self.validation.split or self.data.valid_split

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        from surgray.config import load_yaml_mapping

        data = load_yaml_mapping(path, TrainConfigError)
        return parse_train_config(data or {}, source=str(path))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def has_text_source(referring: ReferringConfig) -> bool:
    """Whether a referring model built from this config can encode text."""
    return referring.text_encoder is not None or getattr(referring, "text_tower", None) is not None


def parse_train_config(data: Any, source: str = "config") -> TrainConfig:
    """A `TrainConfig` from plain data; every problem is listed as `section.key: message`."""
    if isinstance(data, TrainConfig):
        return data
    return validate_config(
        TrainConfig, data, source=source, kind="training", error=TrainConfigError
    )
