"""Training config and pre-training checks: bad input fails early, naming what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from surgray.io.storage import Storage
from surgray.train.cli import apply_overrides, main
from surgray.train.config import TrainConfig, TrainConfigError, parse_train_config
from surgray.train.preflight import PreflightError, check_storage, preflight

SMALL_MODEL = {"variant": "micro", "image_size": 64}


# ---------------------------------------------------------------------- config keys and values


def test_defaults_and_total_steps():
    config = parse_train_config({"schedule": {"epochs": 3, "steps_per_epoch": 10}})
    assert config.schedule.total_steps == 30
    capped = parse_train_config({"schedule": {"epochs": 3, "steps_per_epoch": 10, "max_steps": 7}})
    assert capped.schedule.total_steps == 7
    assert config.validation_split == "valid"
    assert config.prompts.num_correction_clicks == 7 and config.loss.focal == 20.0


@pytest.mark.parametrize(
    "data, named",
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"schedule": {"epoch": 3}}, "schedule.epoch: unknown key"),
        ({"optim": {"lr": 1e-4}}, "optim.lr: unknown key"),
        ({"data": {"synthetic": {"frames": 8}}}, "data.synthetic.frames: unknown key"),
        (
            {"schedule": {"epochs": 0}},
            "schedule.epochs: Input should be greater than or equal to 1",
        ),
        ({"data": {"source": "kinetics"}}, "data.source: Input should be 'synthetic', 'sasv'"),
        ({"data": {"source": "sasv"}}, "data.root is required for source 'sasv'"),
        (
            {"sampling": {"hybrid_fraction": 0.7, "referring_fraction": 0.5}},
            "hybrid_fraction + sampling.referring_fraction must be <= 1",
        ),
        (
            {"data": {"source": "davis", "root": "/x"}, "sampling": {"referring_fraction": 0.5}},
            "needs referring expressions",
        ),
        (
            {"data": {"valid_split": None}},
            "validation.every_epochs > 0 needs validation.split or data.valid_split",
        ),
    ],
)
def test_bad_config_values_are_named(data, named):
    with pytest.raises(TrainConfigError, match="invalid training config") as info:
        parse_train_config(data)
    assert named in str(info.value)


def test_every_problem_is_listed_at_once():
    with pytest.raises(TrainConfigError) as info:
        parse_train_config({"bogus": 1, "schedule": {"epoch": 3}})
    assert "bogus: unknown key" in str(info.value)
    assert "schedule.epoch: unknown key" in str(info.value)


def test_from_yaml_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model:\n  variant: micro\nschedule:\n  epohcs: 2\n")
    with pytest.raises(TrainConfigError, match=r"train.yaml: invalid training config") as info:
        TrainConfig.from_yaml(path)
    # The line names the key and what the section does accept.
    assert "schedule.epohcs: unknown key (allowed: epochs, " in str(info.value)
    with pytest.raises(TrainConfigError, match="config file not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    path.write_text("model: [unclosed\n")
    with pytest.raises(TrainConfigError, match="not valid YAML"):
        TrainConfig.from_yaml(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(TrainConfigError, match="expected a mapping of sections, got list"):
        TrainConfig.from_yaml(path)


def test_config_round_trips_through_yaml(tmp_path):
    config = parse_train_config({"model": SMALL_MODEL, "schedule": {"epochs": 2}})
    path = tmp_path / "round.yaml"
    path.write_text(config.to_yaml())
    assert TrainConfig.from_yaml(path) == config


def test_shipped_configs_validate():
    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/train_*.yaml"))
    assert configs, "no configs/train_*.yaml"
    for path in configs:
        TrainConfig.from_yaml(path)


def test_cli_overrides():
    data = apply_overrides(
        {"schedule": {"epochs": 5}}, ["schedule.epochs=2", "model.init_from=[a, b]"]
    )
    assert data == {"schedule": {"epochs": 2}, "model": {"init_from": ["a", "b"]}}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        apply_overrides({}, ["schedule.epochs"])
    with pytest.raises(ValueError, match="'epochs' is not a section"):
        apply_overrides({"epochs": 3}, ["epochs.x=1"])


# ---------------------------------------------------------------------- checks before training


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small DAVIS-layout folder: train/ with 2 videos, valid/ with 1 (4 frames, 32 px)."""
    from surgray.data.synthetic import SyntheticClipConfig
    from surgray.data.synthetic_writers import make_synthetic_dataset

    root = tmp_path_factory.mktemp("davis")
    clip = SyntheticClipConfig(
        num_frames=4, height=32, width=32,
        leave_and_return=False, occlusion=False, smoke=False, motion_blur=False,
    )  # fmt: skip
    make_synthetic_dataset(root, 3, layout="davis", config=clip, vary=False, valid_fraction=0.34)
    return root


def folder_config(root: Path, tmp_path: Path, **sections) -> TrainConfig:
    data = {
        "model": dict(SMALL_MODEL),
        "data": {"source": "davis", "root": str(root)},
        "checkpoint": {"storage_path": str(tmp_path / "runs")},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return parse_train_config(data)


def broken_copy(dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    return copy


def test_a_good_dataset_passes(dataset, tmp_path):
    report = preflight(folder_config(dataset, tmp_path))
    assert (report.train_videos, report.valid_videos, report.annotated_frames) == (2, 1, 8)
    assert (tmp_path / "runs").is_dir() and not list((tmp_path / "runs").iterdir())


def test_missing_mask_is_reported_before_training(dataset, tmp_path):
    root = broken_copy(dataset, tmp_path)
    video = sorted((root / "train" / "Annotations").iterdir())[0]
    (video / "00002.png").unlink()
    with pytest.raises(PreflightError, match="missing annotation for frame") as info:
        preflight(folder_config(root, tmp_path))
    assert "00002" in str(info.value) and "training split 'train'" in str(info.value)


def test_missing_frame_is_reported(dataset, tmp_path):
    root = broken_copy(dataset, tmp_path)
    video = sorted((root / "train" / "JPEGImages").iterdir())[1]
    (video / "00001.jpg").unlink()
    with pytest.raises(PreflightError, match="annotation has no matching frame '00001'"):
        preflight(folder_config(root, tmp_path))


def test_mask_of_another_size_is_reported(dataset, tmp_path):
    root = broken_copy(dataset, tmp_path)
    mask = sorted((root / "valid" / "Annotations").iterdir())[0] / "00003.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mask)
    with pytest.raises(
        PreflightError, match=r"validation video 'synth_\d+'.*mask is 16x16 but frame"
    ):
        preflight(folder_config(root, tmp_path))


def test_empty_split_is_reported(tmp_path):
    root = tmp_path / "empty"
    (root / "train" / "JPEGImages").mkdir(parents=True)
    (root / "train" / "Annotations").mkdir()
    config = folder_config(root, tmp_path, validation={"every_epochs": 0})
    with pytest.raises(
        PreflightError, match=r"training split 'train': .*no video folders \(empty split\)"
    ):
        preflight(config)


def test_missing_split_and_model_problems_are_listed_together(dataset, tmp_path):
    config = folder_config(
        dataset,
        tmp_path,
        data={"train_split": "trian"},
        model={"init_checkpoint": str(tmp_path / "nope.pt")},
    )
    with pytest.raises(PreflightError) as info:
        preflight(config)
    text = str(info.value)
    assert "training split 'trian'" in text and "folder not found" in text
    assert "model: checkpoint" in text and "nope.pt: file not found" in text


def test_unwritable_local_storage_is_reported(dataset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = folder_config(dataset, tmp_path, checkpoint={"storage_path": str(blocker / "runs")})
    with pytest.raises(
        PreflightError, match="checkpoint.storage_path .*a-file/runs' is not writable"
    ):
        preflight(config)


def test_missing_resume_checkpoint_is_reported(dataset, tmp_path):
    config = folder_config(dataset, tmp_path, checkpoint={"resume_from": str(tmp_path / "gone")})
    with pytest.raises(PreflightError, match="checkpoint.resume_from: .*gone: folder not found"):
        preflight(config)


def test_object_storage_must_be_reachable(s3_server):
    bucket = s3_server.make_bucket("train-runs")
    check_storage(f"{bucket}/runs", "checkpoint.storage_path", storage=s3_server.storage)
    assert s3_server.filesystem().ls("train-runs") == []  # the probe is removed again
    with pytest.raises(PreflightError, match="'s3://no-such-bucket/runs' is not writable"):
        check_storage(
            "s3://no-such-bucket/runs", "checkpoint.storage_path", storage=s3_server.storage
        )
    closed = dict(s3_server.storage.options, endpoint_url="http://127.0.0.1:9")
    closed["config_kwargs"] = {"connect_timeout": 1, "retries": {"max_attempts": 1}}
    with pytest.raises(PreflightError, match="is not writable"):
        check_storage(f"{bucket}/runs", "checkpoint.storage_path", storage=Storage(closed))


def test_cli_check_only(dataset, tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(folder_config(dataset, tmp_path).to_yaml())
    assert main(["--config", str(good), "--check-only"]) == 0
    assert "checks passed (2 training videos, 8 annotated frames" in capsys.readouterr().out
    assert main(["--config", str(good), "--check-only", "--set", "schedule.epochz=2"]) == 2
    assert "schedule.epochz: unknown key" in capsys.readouterr().err
    assert main(["--config", str(good), "--check-only", "--set", "data.train_split=nope"]) == 2
    assert "training split 'nope'" in capsys.readouterr().err
