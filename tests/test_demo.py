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
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from surgray.demo import main as demo_main
from surgray.demo_inputs import score_run

REPO = Path(__file__).resolve().parents[1]
FRAMES = 12


def _sam2_checkpoint(path: Path) -> Path:
    from surgray.model.checkpoint import build_model, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(build_model("micro", image_size=64), str(path))
    return path


@pytest.fixture(scope="module")
def referring_checkpoint(tmp_path_factory) -> Path:
    """A random micro ReSurgSAM2 at 64 px with an embedded CLIP text tower (shipped vocab)."""
    from surgray.model.cstmamba import CSTMambaConfig
    from surgray.model.referring import ReferringConfig, ReSurgSAM2
    from surgray.model.referring_checkpoint import save_referring_checkpoint
    from surgray.model.text_tower import TextTowerConfig
    from surgray.model.variants import micro_config

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
    texts = json.loads((out / "manifest_text.jsonl").read_text())["text"]
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
    assert {r["state"] for r in text_rows} <= {"searching", "tracking", "lost"}
    mask_rows = _rows(out / "mask" / "masks")
    assert {r["obj_id"] for r in mask_rows} == {o["obj_id"] for o in masked}


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


def _rle(mask: np.ndarray) -> tuple[str, list[int]]:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return encoded["counts"].decode(), [int(v) for v in encoded["size"]]


def test_text_objects_are_scored_against_the_object_their_expression_names(tmp_path):
    """Ground truth (16x16, 2 frames): obj 1 a square top left, obj 11 one bottom right. The
    text run named its objects 1 = "kidney" (predicted: the bottom-right square) and
    2 = "grasper" (the top-left one): scored through the expressions every mask is exact,
    J = F = 1; scored by the job's own ids, obj 1 is predicted far from where it is and obj 11
    not at all, J = F = 0."""
    labels = np.zeros((16, 16), np.uint8)
    labels[1:5, 1:5], labels[10:15, 10:15] = 1, 11
    folder = tmp_path / "gt/Annotations/case"
    folder.mkdir(parents=True)
    rows = []
    for frame in range(2):
        Image.fromarray(labels, mode="L").save(folder / f"{frame:05d}.png")
        for obj_id, label, gt_id in ((1, "kidney", 11), (2, "grasper", 1)):
            counts, size = _rle(labels == gt_id)
            rows.append(dict(video_id="case", frame_idx=frame, obj_id=obj_id, label=label,
                             rle_counts=counts, rle_size=size))  # fmt: skip
    (tmp_path / "pred").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pred/part.parquet")
    report = score_run(tmp_path / "gt", tmp_path / "pred", {"grasper": 1, "kidney": 11})
    assert (report.overall.objects, report.overall.j, report.overall.f) == (2, 1.0, 1.0)
    unmapped = score_run(tmp_path / "gt", tmp_path / "pred")  # ids as the job wrote them
    assert (unmapped.overall.j, unmapped.overall.f) == (0.0, 0.0)
    with pytest.raises(ValueError, match=r"rows labelled \['kidney'\]"):
        score_run(tmp_path / "gt", tmp_path / "pred", {"grasper": 1})
