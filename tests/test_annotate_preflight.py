"""Mistakes of the user's making stop the annotation job in the driver, before Ray starts:
one line, exit 2, within seconds. Also: the shipped configs for data the user brings name the
missing paths, `demo:` inputs are written on first use, and a job run by a Python without
surgray's packages names them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from surgray.annotate.config import AnnotateConfig
from surgray.annotate.demo_source import resolve_demo_inputs
from surgray.annotate.driver import prepare_job
from surgray.annotate.preflight import MissingPackageError, PreflightError, missing_package
from surgray.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SURGRAY = [sys.executable, "-m", "surgray.cli"]
PREFLIGHT_S = 5.0  # the bound for a driver-side check


def demo_config(tmp_path: Path, **model) -> AnnotateConfig:
    data = yaml.safe_load((REPO / "configs" / "annotate_demo.yaml").read_text())
    data["output"]["prefix"] = str(tmp_path / "out")
    data["model"].update(model)
    return AnnotateConfig.from_dict(data)


@pytest.fixture(scope="module")
def quick_env():
    """SURGRAY_README_QUICK=1 for this module: the demo clip is 12 frames at 128 px."""
    before = os.environ.get("SURGRAY_README_QUICK")
    os.environ["SURGRAY_README_QUICK"] = "1"
    yield
    if before is None:
        os.environ.pop("SURGRAY_README_QUICK")
    else:
        os.environ["SURGRAY_README_QUICK"] = before


def expect_preflight_error(config: AnnotateConfig, *needles: str) -> str:
    started = time.monotonic()
    with pytest.raises(PreflightError) as info:
        prepare_job(config)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert "\n" not in message
    assert "weights_only" not in message  # never advise loading a checkpoint unsafely
    for needle in needles:
        assert needle in message, message
    assert elapsed < PREFLIGHT_S, f"preflight took {elapsed:.1f} s"
    return message


def test_demo_input_written_once_and_reused(tmp_path, quick_env):
    config = demo_config(tmp_path)
    resolved = resolve_demo_inputs(config)
    manifest = Path(resolved.inputs.manifest)
    assert manifest.is_file() and manifest.parent == tmp_path / "out" / "demo_inputs"
    assert (manifest.parent / "ground_truth" / "Annotations").is_dir()
    assert list((manifest.parent / "videos").glob("*.mp4"))
    stamp = manifest.stat().st_mtime_ns
    assert resolve_demo_inputs(config).inputs.manifest == str(manifest)
    assert manifest.stat().st_mtime_ns == stamp  # not written again
    with pytest.raises(UserError, match="demo:text or demo:mask"):
        bad = config.model_copy(
            update={"inputs": config.inputs.model_copy(update={"manifest": "demo:video"})}
        )
        resolve_demo_inputs(bad)


def test_random_bytes_checkpoint(tmp_path, quick_env):
    checkpoint = tmp_path / "random.pt"
    checkpoint.write_bytes(os.urandom(50_000))
    expect_preflight_error(
        demo_config(tmp_path, checkpoint=str(checkpoint)), "model.checkpoint", str(checkpoint)
    )


def test_wrong_variant(tmp_path, quick_env):
    expect_preflight_error(
        demo_config(tmp_path, variant="sam2.1_hiera_tiny"), "micro", "sam2.1_hiera_tiny"
    )


def test_unknown_variant(tmp_path, quick_env):
    message = expect_preflight_error(demo_config(tmp_path, variant="nonsense"), "model.variant")
    assert "known: micro" in message and '"' not in message


def test_missing_checkpoint(tmp_path, quick_env):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(UserError, match="nowhere.pt"):
        prepare_job(demo_config(tmp_path, checkpoint=str(missing)))


def test_text_prompts_need_a_referring_checkpoint(tmp_path, quick_env):
    expect_preflight_error(demo_config(tmp_path, checkpoint="demo:model"), "text prompts")


def test_separate_text_encoder_refused_by_embedded_tower(tmp_path, quick_env):
    folder = tmp_path / "clip-text"
    folder.mkdir()
    expect_preflight_error(
        demo_config(tmp_path, text_encoder=str(folder)), "text tower", "model.text_encoder"
    )


@pytest.fixture(scope="module")
def referring_without_text(tmp_path_factory) -> str:
    """A micro ReSurgSAM2 checkpoint that names no CLIP folder and embeds no text tower."""
    from surgray.model.checkpoints.referring_checkpoint import save_referring_checkpoint
    from surgray.model.checkpoints.variants import get_variant
    from surgray.model.referring.resurgsam2 import ReSurgSAM2

    path = tmp_path_factory.mktemp("ckpt") / "referring_no_text.pt"
    save_referring_checkpoint(ReSurgSAM2(get_variant("micro", image_size=128)), str(path))
    return str(path)


def test_text_prompts_need_a_text_encoder(tmp_path, quick_env, referring_without_text):
    config = demo_config(tmp_path, checkpoint=referring_without_text)
    expect_preflight_error(config, "model.text_encoder", "names none")
    missing = tmp_path / "no-clip-folder"
    config = demo_config(tmp_path, checkpoint=referring_without_text, text_encoder=str(missing))
    expect_preflight_error(config, str(missing), "no such folder")


def test_unwritable_output_prefix(tmp_path, quick_env):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = demo_config(tmp_path)
    config = config.model_copy(
        update={"output": config.output.model_copy(update={"prefix": str(blocker / "out")})}
    )
    expect_preflight_error(config, "output.prefix", "cannot write")


def test_missing_package_is_named_not_blamed_on_the_folder():
    try:
        import surgray_no_such_package  # noqa: F401
    except ImportError as exc:
        cause = exc
    wrapped = OSError("cannot write")  # how a store's failure to import its backend arrives
    wrapped.__cause__ = cause
    error = missing_package(wrapped)
    assert isinstance(error, MissingPackageError)
    assert "surgray_no_such_package" in str(error) and "cannot write" not in str(error)
    assert missing_package(RuntimeError("not an import failure")) is None


def run_cli(args: list[str], tmp_path: Path, timeout: float = 60) -> tuple[int, str, float]:
    env = dict(os.environ, SURGRAY_README_QUICK="1")
    started = time.monotonic()
    proc = subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, proc.stderr, time.monotonic() - started


def test_cli_wrong_variant_one_line_before_ray(tmp_path):
    data = yaml.safe_load((REPO / "configs" / "annotate_demo.yaml").read_text())
    data["model"]["variant"] = "sam2.1_hiera_small"
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(data))
    ray_dir = tmp_path / "ray"
    args = [*SURGRAY, "annotate", "--config", str(config), "--quiet", "--ray-temp-dir"]
    code, stderr, elapsed = run_cli([*args, str(ray_dir)], tmp_path)
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("surgray annotate: model.checkpoint"), stderr
    assert "sam2.1_hiera_small" in lines[0]
    assert not ray_dir.exists()  # Ray never started
    # Process start, imports and the check; the bound leaves room for a loaded CI machine.
    assert elapsed < 3 * PREFLIGHT_S, f"{elapsed:.1f} s"


@pytest.mark.parametrize("command", ["benchmark", "evaluate"])
def test_evaluate_config_names_missing_paths(tmp_path, command):
    config = REPO / "configs" / "evaluate_endovis18_surgsam2.yaml"
    code, stderr, _ = run_cli([*SURGRAY, command, "--config", str(config)], tmp_path)
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert "/data/Ref-Endovis18" in lines[-1] and "sam2.1_hiera_s_endo18.pth" in lines[-1]
    assert len(lines) == (2 if command == "evaluate" else 1), stderr  # + the deprecation note
    if command == "evaluate":
        assert "surgray benchmark" in lines[0]


@pytest.mark.parametrize(
    "name, path",
    [
        ("train_surgsam2_endovis18.yaml", "/data/Ref-Endovis18"),
        ("train_sam2s_sasv.yaml", "/data/SA-SV"),
    ],
)
def test_train_configs_for_user_data_name_missing_paths(tmp_path, name, path):
    config = REPO / "configs" / name
    code, stderr, _ = run_cli(
        [*SURGRAY, "train", "--config", str(config), "--check-only"], tmp_path
    )
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and path in lines[0], stderr


def test_job_in_a_python_without_surgray_packages_names_them(tmp_path):
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or os.path.realpath(python) == os.path.realpath(sys.executable):
        pytest.skip("no system Python beside this venv's")
    probe = subprocess.run([python, "-c", "import torch, fsspec, ray"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip(f"{python} has surgray's packages")
    job = REPO / "jobs" / "annotate.py"
    config = REPO / "configs" / "annotate_demo.yaml"
    code, stderr, _ = run_cli([python, str(job), "--config", str(config)], tmp_path)
    assert code == 2, stderr
    line = stderr.strip()
    assert "\n" not in line and "lacks the package" in line
    assert "cannot write" not in line
