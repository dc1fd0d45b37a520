"""`surgray demo` (README command 1): the annotation job on a generated clip, once prompted by
the clip's referring expressions and once by first-frame masks, each scored against the
synthetic ground truth. The end-to-end runs are real subprocesses (`python -m surgray.cli
demo`) joining the session's Ray; the checkpoints are random-weight micro models built here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from surgray.demo import main as demo_main

REPO = Path(__file__).resolve().parents[1]
FRAMES = 12


def _sam2_checkpoint(path: Path) -> Path:
    from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(build_model("micro", image_size=64), str(path))
    return path


@pytest.fixture(scope="module")
def referring_checkpoint(tmp_path_factory) -> Path:
    """A random micro ReSurgSAM2 at 64 px with an embedded CLIP text tower (shipped vocab)."""
    from surgray.model.checkpoints.referring_checkpoint import save_referring_checkpoint
    from surgray.model.checkpoints.variants import micro_config
    from surgray.model.referring.config import ReferringConfig
    from surgray.model.referring.cstmamba import CSTMambaConfig
    from surgray.model.referring.resurgsam2 import ReSurgSAM2
    from surgray.model.text.tower import TextTowerConfig

    fusion = CSTMambaConfig.tiny()
    referring = ReferringConfig(
        fusion=fusion, text_tower=TextTowerConfig(width=fusion.text_dim, heads=2)
    )
    torch.manual_seed(0)
    model = ReSurgSAM2(micro_config(64), referring).eval()
    path = tmp_path_factory.mktemp("weights") / "referring_random.pt"
    save_referring_checkpoint(model, str(path))
    return path


def _demo(ray_cluster, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "surgray.cli", "demo", *args]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )  # fmt: skip
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


def _rows(folder: Path) -> list[dict]:
    columns = ["frame_idx", "obj_id", "label", "state"]
    return pq.read_table(folder, columns=columns, partitioning=None).to_pylist()


def _decoded_frames(video: Path) -> int:
    import av

    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.ray
def test_demo_runs_the_job_with_text_and_with_masks(referring_checkpoint, ray_cluster, tmp_path):  # noqa: F811
    out = tmp_path / "demo"
    done = _demo(
        ray_cluster, "--out", str(out), "--frames", str(FRAMES), "--size", "128",
        "--checkpoint", str(referring_checkpoint),
    )  # fmt: skip
    categories = json.loads((out / "ground_truth/Meta/synthetic-case-0.json").read_text())
    categories = set(categories["info"]["category"].values())
    text_prompts = json.loads((out / "manifest_text.jsonl").read_text())["text"]
    texts = [t["text"] for t in text_prompts]
    gt_ids = {t["text"]: t["obj_id"] for t in text_prompts}  # each expression's object
    masked = json.loads((out / "manifest_mask.jsonl").read_text())["prompts"]["objects"]
    assert len(texts) == len(categories) == 3 and masked
    # Each expression names its object's category first ("clip applier is idle").
    assert sorted(next(c for c in categories if t.startswith(c)) for t in texts) == sorted(
        categories
    )
    expected_objects = {"text": len(texts), "mask": len(masked)}
    for run in ("text", "mask"):
        rows = _rows(out / run / "masks")
        assert len(rows) == FRAMES * expected_objects[run]
        per_frame = {f: sum(r["frame_idx"] == f for r in rows) for f in range(FRAMES)}
        assert set(per_frame.values()) == {expected_objects[run]}
        overlay = out / run / "exports/overlay_mp4/synthetic-case-0.mp4"
        assert _decoded_frames(overlay) == FRAMES
        assert len(list((out / run / "exports/davis/synthetic-case-0").glob("*.png"))) == FRAMES
        line = re.search(rf"^\[demo\] {run} run: J&F (\d+\.\d) \(J ", done.stdout, re.M)
        assert line is not None, done.stdout
        assert 0.0 <= float(line.group(1)) <= 100.0
        assert f"[demo]   masks (Parquet, RLE): {out / run / 'masks'}" in done.stdout
    text_rows = _rows(out / "text" / "masks")
    assert {r["label"] for r in text_rows} == set(texts)
    # One id everywhere: the ground truth's id of each expression's object, in the Parquet...
    assert {(r["label"], r["obj_id"]) for r in text_rows} == set(gt_ids.items())
    # ... the DAVIS PNGs ...
    png = np.asarray(Image.open(out / "text/exports/davis/synthetic-case-0/00000.png"))
    assert set(np.unique(png)) - {0} <= set(gt_ids.values())
    # ... and the printed summary.
    for text, obj_id in gt_ids.items():
        assert f"{text!r} (obj {obj_id})" in done.stdout
    assert "J&F over all frames, first and last included" in done.stdout
    # Progress a person can read: a line per finished video, no Ray Data bars, no Ray error.
    finished = re.findall(
        r"^\[annotate\] 1/1 videos done: .* frames/s \| finished$", done.stdout, re.M
    )
    assert len(finished) == 2, done.stdout  # one per run
    assert "constructor arguments in the object store" not in done.stdout + done.stderr
    assert "row/s]" not in done.stdout + done.stderr
    assert {r["state"] for r in text_rows} <= {"searching", "tracking", "lost"}
    mask_rows = _rows(out / "mask" / "masks")
    assert {r["obj_id"] for r in mask_rows} == {o["obj_id"] for o in masked}
    # `surgray eval` on the demo's outputs, with the command the demo prints, gives its scores.
    for run in ("text", "mask"):
        command = re.search(rf"the same scores: (surgray eval .*{run}/masks.*)$", done.stdout, re.M)
        assert command is not None, done.stdout
        words = command.group(1).split()[1:] + ["--out-dir", str(tmp_path / f"eval_{run}")]
        evaluated = subprocess.run(
            [sys.executable, "-m", "surgray.cli", *words], cwd=REPO, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stderr
        ours = json.loads((out / run / "demo_scores.json").read_text())
        theirs = json.loads((tmp_path / f"eval_{run}" / "eval_results.json").read_text())
        assert theirs == ours
        jf = re.search(rf"^\[demo\] {run} run: J&F (\d+\.\d)", done.stdout, re.M).group(1)
        assert f"{100 * theirs['overall']['jf']:.1f}" == jf


@pytest.mark.ray
def test_checkpoint_without_text_tower_runs_masks_and_says_text_is_skipped(
    ray_cluster, tmp_path, capsys
):  # noqa: F811
    # In this process, on the session's Ray (the demo joins a connected Ray, never stops it).
    checkpoint = _sam2_checkpoint(tmp_path / "sam2_random.pt")
    out = tmp_path / "demo"
    code = demo_main(
        ["--out", str(out), "--frames", "6", "--size", "64", "--checkpoint", str(checkpoint)]
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "the TEXT RUN IS SKIPPED" in stdout
    assert "[demo] text run: SKIPPED (the checkpoint has no text tower)" in stdout
    assert re.search(r"^\[demo\] mask run: J&F \d+\.\d", stdout, re.M), stdout
    assert not (out / "text").exists()
    assert {r["frame_idx"] for r in _rows(out / "mask" / "masks")} == set(range(6))


def test_text_only_without_text_tower_is_refused_before_any_work(tmp_path, capsys):
    checkpoint = _sam2_checkpoint(tmp_path / "sam2_random.pt")
    code = demo_main(["--out", str(tmp_path / "o"), "--prompt", "text", "--checkpoint", str(checkpoint)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    assert "--prompt text needs text prompts" in captured.err
    assert "has no text tower" in captured.err
    assert "annotating" not in captured.out and not (tmp_path / "o/videos").exists()
    assert demo_main(["--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert f"--checkpoint {tmp_path / 'nope.pt'}: no such file" in capsys.readouterr().err
    bare = tmp_path / "bare.pt"
    torch.save({"model": torch.load(checkpoint, weights_only=True)["model"]}, bare)
    assert demo_main(["--out", str(tmp_path / "o"), "--checkpoint", str(bare)]) == 2
    assert "no surgray metadata naming the model variant" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "0"], "--frames 0: the clip needs at least 2 frames"),
        (["--size", "8"], "--size 8: give a frame side between 32 and 4096 pixels"),
        (["--checkpoint", "RANDOM"], "not a readable PyTorch checkpoint"),
    ],
)
def test_unusable_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    from surgray.cli import main as surgray_main

    if "RANDOM" in args:
        garbage = tmp_path / "garbage.pt"
        garbage.write_bytes(np.random.default_rng(0).bytes(4096))
        args = [str(garbage) if a == "RANDOM" else a for a in args]
    code = surgray_main(["demo", "--out", str(tmp_path / "o"), *args])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("surgray demo: ") and message in lines[0]
    assert "Traceback" not in captured.err and "annotating" not in captured.out
    assert not (tmp_path / "o" / "videos").exists()
