"""GPU check (issue 26, item 4): one script, one results file, under 8 minutes on one H100.

Sections (each one's failure is recorded in the results file and the others go on):
1. parity: the tracker (fp32, TF32 off) on CUDA against the same tracker on CPU: Hiera-T at
   512 px, random weights, a synthetic clip, one box-prompted object; max logit difference
   and pixel agreement per frame.
2. bf16: the same clip on CUDA with `precision="fast"` (bf16 autocast) against CUDA fp32.
3. speed: Hiera-S at 512 px in bf16, frames/s of one stream and of 8 videos stepped together
   (`Tracker.step_many`), against Meta's `SAM2VideoPredictor` (sam2 1.1.0) under bf16
   autocast in the same run (one video; 8 videos one after another, as it has no batching).
4. memory: peak GPU memory with 1 and with 8 tracked videos (surgray), per added video, and
   the reference's peak for one video.
5. scan: mamba-ssm's fused selective scan against surgray's chunked torch scan (max
   difference, ms), or a line saying why mamba-ssm cannot be imported.

The GPU machine has a CUDA torch but no Ray and no network; the script needs only the working
tree: surgray itself, and for the reference rows sam2's source with hydra/omegaconf (pure
Python). `--stage-deps` (run on a development machine) copies those from this venv to
build/gpu_deps (git-ignored; carry it), and pydantic for the GPU machine's Python if asked.
Modules found installed there win: build/gpu_deps is appended to sys.path, not prepended.

    python benchmarks/gpu_check.py --stage-deps                 # here, before lending a GPU
    python benchmarks/gpu_check.py --out gpu_check_results.md   # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --quick         # CI smoke run (micro, CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPS = REPO / "build" / "gpu_deps"
PURE_PYTHON_DEPS = ("sam2", "hydra", "omegaconf", "antlr4", "iopath", "portalocker")
PYDANTIC_WHEELS = ("pydantic",)  # with its dependencies: pydantic-core's matching version
for _path in (REPO, REPO / "benchmarks"):
    sys.path.insert(0, str(_path))
if DEPS.is_dir():
    sys.path.append(str(DEPS))


# ------------------------------------------------------------------ staging (dev machine)
def stage_deps(python_version: str | None) -> None:
    """Copy the reference's pure-Python dependencies to build/gpu_deps; with
    `python_version`, also unpack pydantic's wheels built for it (pip download)."""
    import importlib

    DEPS.mkdir(parents=True, exist_ok=True)
    for name in PURE_PYTHON_DEPS:
        source = Path(importlib.import_module(name).__file__).parent
        target = DEPS / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        print(f"staged {name} from {source}")
    if python_version:
        wheels = DEPS / "_wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--only-binary=:all:",
             "--python-version", python_version, "--platform", "manylinux2014_x86_64",
             "-d", str(wheels), *PYDANTIC_WHEELS],
            check=True,
        )  # fmt: skip
        import zipfile

        for wheel in wheels.glob("*.whl"):
            zipfile.ZipFile(wheel).extractall(DEPS)
            print(f"unpacked {wheel.name}")
        shutil.rmtree(wheels)
    size = sum(p.stat().st_size for p in DEPS.rglob("*") if p.is_file())
    print(f"{DEPS}: {size / 2**20:.1f} MiB; carry it: build/gpu_deps")


# ------------------------------------------------------------------ helpers
def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def simple_clip(size: int, frames: int, objects: int):
    """A clip drawn with numpy alone (for machines without OpenCV, which the synthetic
    generator needs): disks drifting over a smooth background; boxes around them on frame 0."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size]
    clip = np.empty((frames, size, size, 3), np.uint8)
    centres = [(0.3 + 0.2 * k, 0.4 + 0.15 * k) for k in range(objects)]
    radius = size * 0.09
    colours = [(220, 200, 60), (30, 200, 230), (200, 60, 180)]
    for t in range(frames):
        img = np.zeros((size, size, 3), np.float32)
        img[..., 0] = 90 + 40 * np.sin(xx / (size / 9))
        img[..., 1] = 50 + 30 * np.cos(yy / (size / 7))
        img[..., 2] = 80
        for k, (cx, cy) in enumerate(centres):
            x, y = (cx + 0.004 * t) * size, cy * size
            img[(xx - x) ** 2 + (yy - y) ** 2 < radius**2] = colours[k % len(colours)]
        clip[t] = img.astype(np.uint8)
    boxes = [
        [cx * size - radius, cy * size - radius, cx * size + radius, cy * size + radius]
        for cx, cy in centres
    ]
    return clip, boxes


def scenario(args, variant: str, frames: int, objects: int = 1):
    """(model config, random state dict, clip [T, S, S, 3], boxes) of the reference scenario
    (the synthetic surgical clip; a numpy-drawn one where OpenCV is missing)."""
    import torch
    from common import bench_config

    from surgray.model.checkpoints.sam2_checkpoint import build_model

    cfg = bench_config(variant, args.image_size)
    try:
        from runners import random_weights

        state = random_weights(cfg, args.seed)  # needs the reference (its parity helper)
    except ImportError:
        torch.manual_seed(args.seed)
        state = build_model(cfg).state_dict()
    try:
        from runners import synthetic_workload

        clip, boxes = synthetic_workload(cfg, frames, objects, seed=0)
    except ImportError:  # cv2
        clip, boxes = simple_clip(cfg.image_size, frames, objects)
    return cfg, state, clip, boxes


def track(cfg, state, clip, boxes, device, precision="fp32", videos: int = 1):
    """Logits per frame ([N, H, W] on CPU) of video 0, seconds per step, peak GPU bytes."""
    import torch

    from surgray.model.checkpoints.sam2_checkpoint import build_model
    from surgray.tracking.tracker import Tracker

    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    tracker = Tracker(
        model.to(device).eval(),
        {"name": "recent"},
        device=device,
        precision=precision,
        postprocess={"fill_hole_area": 0},
        keep_logits=True,
    )
    states = [tracker.start(f"v{k}", clip.shape[1:3], num_frames=len(clip)) for k in range(videos)]
    for st in states:
        for obj_id, box in enumerate(boxes, start=1):
            tracker.add_box(st, obj_id, 0, box)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    logits, times = [], []
    for frame in clip:
        sync(device)
        started = time.perf_counter()
        results = tracker.step_many(states, [frame] * videos)
        sync(device)
        times.append(time.perf_counter() - started)
        logits.append(torch.stack([o.logits.float().cpu() for o in results[0].objects]))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return logits, times, peak


def compare(a_frames, b_frames) -> dict:
    diffs = [float((a - b).abs().max()) for a, b in zip(a_frames, b_frames)]
    agree = [float(((a > 0) == (b > 0)).float().mean()) for a, b in zip(a_frames, b_frames)]
    return {"max_logit_diff": max(diffs), "min_pixel_agreement": min(agree),
            "mean_pixel_agreement": sum(agree) / len(agree)}  # fmt: skip


def fps(times, frames_per_step: int, warmup: int) -> float:
    timed = times[warmup:]
    return frames_per_step * len(timed) / sum(timed)


# ------------------------------------------------------------------ sections
def section_parity(args, device) -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg, state, clip, boxes = scenario(args, args.parity_variant, args.parity_frames)
    cpu, _, _ = track(cfg, state, clip, boxes, torch.device("cpu"))
    gpu, _, _ = track(cfg, state, clip, boxes, device)
    return {"variant": args.parity_variant, "frames": len(clip), **compare(gpu, cpu)}


def section_bf16(args, device) -> dict:
    import torch

    cfg, state, clip, boxes = scenario(args, args.parity_variant, args.parity_frames)
    exact, t32, _ = track(cfg, state, clip, boxes, device, "fp32")
    fast, t16, _ = track(cfg, state, clip, boxes, device, "fast")
    torch.backends.cuda.matmul.allow_tf32 = True
    return {"precision": "fast", **compare(fast, exact),
            "speed_vs_fp32": sum(t32[2:]) / max(sum(t16[2:]), 1e-9)}  # fmt: skip


def reference_run(cfg, state, clip, boxes, device, dtype, videos: int) -> tuple[list, int | None]:
    """Seconds per propagated frame of the reference over `videos` videos, one after another,
    and its peak GPU bytes for one video."""
    import numpy as np
    import torch
    from PIL import Image

    from devtools.sam2_reference import build_reference
    from surgray.model.sam2.preprocess import to_model_input

    predictor = build_reference(cfg, video=True)
    predictor.load_state_dict(state, strict=True)
    predictor = predictor.to(device).eval()
    images = to_model_input(clip, cfg.image_size).to(device)
    times, peak = [], None
    for k in range(videos):
        with tempfile.TemporaryDirectory() as folder:
            Image.fromarray(clip[0]).save(Path(folder) / "00000.jpg")
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
                st = predictor.init_state(folder)
        st["images"], st["num_frames"] = images, images.shape[0]
        st["video_height"], st["video_width"] = clip.shape[1:3]
        st["cached_features"] = {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
            for obj_id, box in enumerate(boxes, start=1):
                predictor.add_new_points_or_box(st, 0, obj_id, box=np.asarray(box))
            sync(device)
            started = time.perf_counter()
            for _ in predictor.propagate_in_video(st):
                sync(device)
                times.append(time.perf_counter() - started)
                started = time.perf_counter()
        if k == 0 and device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
    return times, peak


def section_speed(args, device) -> dict:
    import torch

    cfg, state, clip, boxes = scenario(args, args.speed_variant, args.speed_frames)
    warm = min(8, len(clip) // 2)
    out = {"variant": args.speed_variant, "frames": len(clip), "warmup_frames": warm}
    _, single, peak1 = track(cfg, state, clip, boxes, device, "fast", videos=1)
    _, batched, peak8 = track(cfg, state, clip, boxes, device, "fast", videos=args.batch)
    out["surgray_single_fps"] = fps(single, 1, warm)
    out[f"surgray_{args.batch}_videos_fps"] = fps(batched, args.batch, warm)
    if peak1 is not None:
        out["surgray_peak_gib_1_video"] = peak1 / 2**30
        out[f"surgray_peak_gib_{args.batch}_videos"] = peak8 / 2**30
        out["surgray_gib_per_added_video"] = (peak8 - peak1) / max(args.batch - 1, 1) / 2**30
    try:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        times, ref_peak = reference_run(cfg, state, clip, boxes, device, dtype, 1)
        out["reference_single_fps"] = fps(times, 1, warm)
        times, _ = reference_run(cfg, state, clip, boxes, device, dtype, args.batch)
        per_video = len(times) // args.batch
        timed = [
            t for k in range(args.batch) for t in times[k * per_video + warm : (k + 1) * per_video]
        ]
        out[f"reference_{args.batch}_videos_fps"] = len(timed) / sum(timed)
        if ref_peak is not None:
            out["reference_peak_gib_1_video"] = ref_peak / 2**30
        out["single_vs_reference"] = out["surgray_single_fps"] / out["reference_single_fps"]
    except Exception as exc:  # the reference may not be importable there: say so
        out["reference"] = f"not measured: {type(exc).__name__}: {exc}"[:300]
    return out


def section_scan(args, device) -> dict:
    from bench_selective_scan import make_inputs

    from surgray.model.referring.selective_scan import fused_kernel_available, selective_scan

    if device.type != "cuda":
        return {"mamba_ssm": "not measured: the fused scan needs CUDA"}
    if not fused_kernel_available():
        try:
            import mamba_ssm  # noqa: F401

            reason = "mamba_ssm imports but its selective_scan_fn does not"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        return {"mamba_ssm": f"not importable ({reason})"[:300]}
    x = make_inputs(1, 512, 16, args.scan_length, str(device))
    results = {}
    for backend in ("cuda", "chunked"):
        y = selective_scan(**x, delta_softplus=False, backend=backend)
        sync(device)
        started = time.perf_counter()
        for _ in range(5):
            y = selective_scan(**x, delta_softplus=False, backend=backend)
        sync(device)
        results[backend] = (y.float(), (time.perf_counter() - started) / 5 * 1000)
    diff = float((results["cuda"][0] - results["chunked"][0]).abs().max())
    return {"mamba_ssm": "imported", "length": args.scan_length, "max_diff": diff,
            "fused_ms": results["cuda"][1], "torch_scan_ms": results["chunked"][1]}  # fmt: skip


SECTIONS = {
    "parity": section_parity,
    "bf16": section_bf16,
    "speed": section_speed,
    "scan": section_scan,
}


def environment(device) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "device": str(device), "date": time.strftime("%Y-%m-%d %H:%M %Z")}  # fmt: skip
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    env["load_average"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return env


def render(results: dict) -> str:
    lines = ["# surgray GPU check", ""]
    for name, value in results.items():
        lines.append(f"## {name}")
        lines.append("")
        lines.append("| key | value |")
        lines.append("|---|---|")
        for key, item in value.items():
            text = f"{item:.4g}" if isinstance(item, float) else str(item)
            lines.append(f"| {key} | {text} |")
        lines.append("")
    lines += ["```json", json.dumps(results, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="micro at 128 px, few frames")
    parser.add_argument("--out", default="gpu_check_results.md")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parity-variant", default="sam2.1_hiera_tiny")
    parser.add_argument("--parity-frames", type=int, default=12)
    parser.add_argument("--speed-variant", default="sam2.1_hiera_small")
    parser.add_argument("--speed-frames", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--scan-length", type=int, default=3072)
    parser.add_argument("--stage-deps", action="store_true", help="copy deps to build/gpu_deps")
    parser.add_argument("--deps-python", default=None, help="with --stage-deps: e.g. 3.12")
    args = parser.parse_args(argv)
    if args.stage_deps:
        stage_deps(args.deps_python)
        return 0
    import torch

    if args.quick:
        args.image_size, args.parity_variant, args.speed_variant = 128, "micro", "micro"
        args.parity_frames, args.speed_frames, args.batch, args.scan_length = 4, 6, 2, 256
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device (use --device cpu for a dry run)")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    results = {"environment": environment(device)}
    started = time.monotonic()
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        began = time.monotonic()
        try:
            results[name] = SECTIONS[name](args, device)
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500],
                             "trace": traceback.format_exc(limit=3)[-800:]}  # fmt: skip
        results[name]["seconds"] = round(time.monotonic() - began, 1)
        print(f"[gpu_check] {name}: {json.dumps(results[name], default=str)[:400]}", flush=True)
    results["environment"]["total_seconds"] = round(time.monotonic() - started, 1)
    Path(args.out).write_text(render(results))
    print(render(results))
    return 1 if any("error" in v for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
