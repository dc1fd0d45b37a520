"""Throughput and latency of the Ray Serve application over HTTP on 127.0.0.1.

Starts a local Ray (loopback only), deploys `serve.app` with the micro model (random weights,
or --checkpoint), and streams PNG frames from 1 and 8 concurrent sessions (each: create with a
box prompt, --frames frames one after another, delete). Each configuration runs once with
frame batching (--max-batch, default 4) and once without (max batch 1). Prints one table:
requests per second over all sessions, client-side p50/p99 latency, the server's own p50
(`latency_ms`: decode + track + encode) and the mean number of frames per model call.

    .venv/bin/python benchmarks/bench_serve.py [--frames 50] [--replicas 1] [--num-cpus 1]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

TOKEN = "bench-serve-token-0123456789"
os.environ.setdefault("SURGRAY_API_TOKENS", TOKEN)  # the builder checks it here too


@dataclass
class Row:
    max_batch: int
    sessions: int
    frames: int
    rate: float
    p50: float
    p99: float
    server_p50: float
    mean_batch: float


def scene(count: int, seed: int, height: int, width: int) -> list[bytes]:
    """PNG frames of a disc drifting over a noisy background."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 40, (height, width, 3)).astype(np.uint8)
    radius = max(3, height // 6)
    frames = []
    for index in range(count):
        cx = width / 4 + (index % 40) * width / 100 + seed
        cy = height / 2 + height / 10 * np.sin(index / 3 + seed)
        image = base.copy()
        image[(cols - cx) ** 2 + (rows - cy) ** 2 <= radius**2] = (220, 80, 40)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        frames.append(buffer.getvalue())
    return frames


def stream(base_url: str, frames: list[bytes], box: list[float]) -> tuple[list[float], list[float]]:
    """One session: (client latencies, server latencies) in seconds."""
    import httpx

    client_s, server_s = [], []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as http:
        created = http.post("/v1/sessions", json={"objects": [{"box": box}]})
        created.raise_for_status()
        sid = created.json()["session_id"]
        routed = {"X-Session-Id": sid}
        for body in frames:
            started = time.perf_counter()
            response = http.post(
                f"/v1/sessions/{sid}/frames",
                content=body,
                headers={**routed, "Content-Type": "image/png"},
            )
            client_s.append(time.perf_counter() - started)
            response.raise_for_status()
            server_s.append(response.json()["latency_ms"] / 1000)
        http.delete(f"/v1/sessions/{sid}", headers=routed).raise_for_status()
    return client_s, server_s


def replica_stats(handle, replicas: int) -> dict[str, dict]:
    """Counters of every replica (calls land on random replicas: ask until all answered)."""
    seen: dict[str, dict] = {}
    for _ in range(20 * replicas):
        stats = handle.stats.remote().result()
        seen[stats["replica"]] = stats
        if len(seen) == replicas:
            break
    return seen


def run_config(args, base_url: str, max_batch: int) -> list[Row]:
    from ray import serve

    from serve.app import build_app_from_args

    model = {"variant": args.variant, "checkpoint": args.checkpoint, "image_size": args.image_size}
    app = build_app_from_args(
        {
            "model": model,
            "replicas": args.replicas,
            "ray_actor_options": {"num_cpus": args.num_cpus},
            "sessions": {"max_per_replica": max(8, 2 * args.sessions)},
            "batching": {"max_batch_size": max_batch, "wait_timeout_s": args.wait_ms / 1000},
        }
    )
    serve.run(app, name="bench", route_prefix="/")
    handle = serve.get_app_handle("bench")
    height, width = args.height, args.width
    box = [width * 0.1, height * 0.2, width * 0.5, height * 0.8]
    stream(base_url, scene(5, 99, height, width), box)  # warm-up
    rows = []
    for sessions in (1, args.sessions):
        clips = [scene(args.frames, seed, height, width) for seed in range(sessions)]
        before = replica_stats(handle, args.replicas)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=sessions) as pool:
            runs = list(pool.map(partial(stream, base_url, box=box), clips))
        wall = time.perf_counter() - started
        after = replica_stats(handle, args.replicas)
        batches = sum(after[r]["batches"] - before.get(r, {"batches": 0})["batches"] for r in after)
        frames = sum(after[r]["frames"] - before.get(r, {"frames": 0})["frames"] for r in after)
        client = [v for run in runs for v in run[0]]
        server = [v for run in runs for v in run[1]]
        rows.append(
            Row(
                max_batch=max_batch,
                sessions=sessions,
                frames=len(client),
                rate=len(client) / wall,
                p50=1000 * statistics.median(client),
                p99=1000 * float(np.percentile(client, 99)),
                server_p50=1000 * statistics.median(server),
                mean_batch=frames / batches if batches else float("nan"),
            )
        )
    serve.delete("bench")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=50, help="frames per session")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sessions (2nd row)")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    parser.add_argument("--variant", default="micro")
    parser.add_argument("--checkpoint", default="random:0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--wait-ms", type=float, default=5.0)
    args = parser.parse_args()

    import ray
    from ray import serve

    temp = tempfile.mkdtemp(prefix="srb", dir="/tmp")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp,
        runtime_env={"env_vars": {"SURGRAY_API_TOKENS": TOKEN}},
        logging_level="warning",
        log_to_driver=False,
    )
    rows: list[Row] = []
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base_url = f"http://127.0.0.1:{port}"
        for max_batch in sorted({args.max_batch, 1}, reverse=True):
            rows += run_config(args, base_url, max_batch)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)

    print(
        f"\nRay Serve over HTTP on 127.0.0.1: {args.variant} @ {args.image_size} px "
        f"({args.checkpoint}), {args.height}x{args.width} PNG frames, {args.replicas} replica(s) "
        f"x {args.num_cpus:g} CPU, {os.cpu_count()} cores on the machine"
    )
    header = f"{'max batch':>9} {'sessions':>8} {'frames':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'server p50 ms':>13} {'frames/call':>11}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.max_batch:>9} {row.sessions:>8} {row.frames:>6} {row.rate:>7.1f} {row.p50:>7.1f} "
            f"{row.p99:>7.1f} {row.server_p50:>13.1f} {row.mean_batch:>11.2f}"
        )


if __name__ == "__main__":
    main()
