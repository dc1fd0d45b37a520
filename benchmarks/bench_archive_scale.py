"""Archive scale (issue 23, item 5): what the annotate job's driver costs per video, and how
long a job over N videos takes to track its first frame, for N = 1,000, 10,000, 100,000.

    python benchmarks/bench_archive_scale.py                  # N = 1,000 / 10,000 / 100,000
    python benchmarks/bench_archive_scale.py --quick          # N = 100 / 1,000
    python benchmarks/bench_archive_scale.py --sizes 1000,5000 --json results.json

Everything lives on a real S3 server (moto, on a free loopback port, served from a thread of
this process): two real MP4 clips (synthetic, 64 px, 6 frames), a random-weight micro
checkpoint, and for each N a JSONL manifest of N videos (N objects, copies of the two clips,
since a manifest names each video once; one box prompt on frame 0, checked against each video
by a probe). Per N, each phase in a fresh process that talks to moto over HTTP.

How the store is filled (not measured): the clips, checkpoint, manifests and the `_index/`
files go over HTTP; the N video objects and the 3 x N objects of the complete videos are
written straight into moto's in-memory backend (`devtools.loopback.InProcessMoto`), 300,000
HTTP PUTs being more than 30 minutes on 2 cores. Each is written as moto's PUT handler would
write the same bytes (same key, body, ETag, storage class, checksum algorithm and value;
`tests/test_loopback_moto.py` compares listings and HEADs against real PUTs), so listings,
fingerprints and the `_index/` files are those of a real job. moto 5 builds every LIST page
from a scan and sort of the whole bucket (quadratic in N: 100 pages x 300,000 keys); S3 pages
in time per page, so this process's moto answers ListObjectsV2 with the same pages from the
prefix's sorted names (`devtools.loopback.use_paged_listing`; `--stock-listing` for moto's
own), and the table gives both per-page costs. The complete videos sit in a bucket of their
own per N (an output bucket, as a real job may have).

- plan: `prepare_job` over a fresh output prefix (manifest read, provenance, rerun check,
  work rows): seconds, microseconds per video, the process's peak RSS;
- first frame: `surgray annotate` as a user runs it (local Ray, 2 CPUs), from the command's
  start until the first video's completion marker is on the store (a 6-frame clip, so this
  is the first tracked frame plus 5 more and the video's finalization), and the driver's
  peak RSS (VmHWM) at that moment; then it is stopped. Probing (every video here has a box
  prompt to check against its video) runs in the pipeline, streamed;
- rerun: `prepare_job` over a prefix that holds N complete videos (one real video's outputs,
  written by the first-frame phase, copied under every id, with the `_index/` files a job
  writes for them, built from one listing): seconds per video, and whether any work would
  reach an actor (it must not); "rerun check per video" is the rerun check alone
  (`surgray.annotate.rerun.prepare_rerun`) divided by N, with the process's CPU seconds
  meanwhile (`time.process_time`, all threads: the driver's own work; the rest of the wall
  time is waiting on LIST/GET answers). `--no-index` leaves the index out (outputs of a run
  before the index existed: the per-video content check); `--rerun-max` skips the rerun phase
  above a size;
- rerun by the CLI: `surgray annotate` over the same complete prefix, as a user runs it: its
  exit status, time, report, and whether Ray was started at all (its `--ray-temp-dir` stays
  empty, so no actor can have been); `--cli-max` skips it above a size.

Cells that were not measured read 'not measured'.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_repo_paths,
    fmt,
    fmt_mb,
    machine_line,
    peak_rss,
    print_table,
)

add_repo_paths()

from devtools.loopback import (  # noqa: E402  (after add_repo_paths)
    InProcessMoto,
    stock_list_objects_v2,
)

SIZE = 64
FRAMES = 6
CLIPS = 2
BUCKET = "archive"
FIRST_FRAME_TIMEOUT_S = 900
CLI_RERUN_TIMEOUT_S = 1800
REGION = "us-west-2"
PLAIN = dict(leave_and_return=False, occlusion=False, smoke=False, motion_blur=False)


# ------------------------------------------------------------------ the store
def bench_storage(endpoint: str):
    from surgray.io.storage import Storage

    return Storage(
        {
            "key": "bench",
            "secret": "bench",
            "endpoint_url": endpoint,
            "client_kwargs": {"region_name": REGION},
        }
    )


def filesystem(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(**bench_storage(endpoint).options, skip_instance_cache=True)


def config_dict(endpoint: str, manifest: str, out: str) -> dict:
    return {
        "inputs": {"manifest": manifest},
        "output": {"prefix": out},
        "storage": {"endpoint_url": endpoint, "region": REGION},
        "model": {"variant": "micro", "checkpoint": f"s3://{BUCKET}/micro.pt", "image_size": SIZE},
        "actors": {"count": 1, "num_cpus": 1, "torch_threads": 1},
        "privacy": {"hash_video_ids": False},
        "exports": ["parquet"],
    }


def setup_store(endpoint: str) -> None:
    from surgray.data.synthetic import SyntheticClipConfig, generate_clip
    from surgray.data.synthetic_writers import write_clip_video
    from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

    filesystem(endpoint).mkdir(BUCKET)
    storage = bench_storage(endpoint)
    for n in range(CLIPS):
        cfg = SyntheticClipConfig(num_frames=FRAMES, height=SIZE, width=SIZE, **PLAIN)
        write_clip_video(
            generate_clip(cfg, seed=n), f"s3://{BUCKET}/clips/clip{n}.mp4", storage=storage
        )
    save_checkpoint(
        build_model("micro", image_size=SIZE),
        f"s3://{BUCKET}/micro.pt",
        storage=storage,
    )


def write_archive(moto: InProcessMoto, count: int) -> str:
    """N video objects (copies of the clips: a manifest names each video once), seeded into
    moto's backend as HTTP PUTs of the same bytes would leave them, and a JSONL manifest of
    them (over HTTP); returns the manifest's URI."""
    fs = filesystem(moto.endpoint)
    clips = [fs.cat_file(f"{BUCKET}/clips/clip{n}.mp4") for n in range(CLIPS)]
    prompts = json.dumps({"objects": [{"obj_id": 1, "frame": 0, "box": [8, 8, 40, 40]}]})
    lines: list[str] = []
    batches: list[dict[str, bytes]] = [{} for _ in range(CLIPS)]
    for n in range(count):
        key = f"{BUCKET}/videos-{count}/case{n:06d}.mp4"
        batches[n % CLIPS][key] = clips[n % CLIPS]
        lines.append(
            json.dumps({"video_uri": f"s3://{key}", "video_id": f"case{n:06d}", "prompts": prompts})
        )
    for n, batch in enumerate(batches):
        moto.put_objects(batch, like=f"{BUCKET}/clips/clip{n}.mp4")
    uri = f"s3://{BUCKET}/manifests/n{count}.jsonl"
    fs.pipe_file(uri[5:], ("\n".join(lines) + "\n").encode())
    return uri


def clone_complete_video(
    moto: InProcessMoto, source_prefix: str, target_prefix: str, count: int
) -> str:
    """Copy the first complete video under `source_prefix` to every id case000000.. under
    `target_prefix` (its marker, status and parts; ids substituted in the JSON files), seeded
    into moto's backend as the job's own PUTs of those bytes would leave them (each object
    like the job-written one it copies: same ETag rule, storage class, checksum algorithm).
    Returns the id that was copied."""
    fs = filesystem(moto.endpoint)
    done = sorted(fs.ls(f"{source_prefix[5:]}/_done", detail=False))
    source_id = done[0].rsplit("/", 1)[-1].removesuffix(".json")
    root = source_prefix[5:]
    files = {
        "_done/{id}.json": f"{root}/_done/{source_id}.json",
        "status/video_id={id}.json": f"{root}/status/video_id={source_id}.json",
    }
    for part in fs.ls(f"{root}/masks/video_id={source_id}", detail=False):
        files["masks/video_id={id}/" + part.rsplit("/", 1)[-1]] = part
    payloads = {pattern: fs.cat_file(path) for pattern, path in files.items()}
    for pattern, payload in payloads.items():
        batch: dict[str, bytes] = {}
        for n in range(count):
            video_id = f"case{n:06d}"
            body = payload
            if pattern.endswith(".json"):
                body = payload.replace(source_id.encode(), video_id.encode())
            batch[f"{target_prefix[5:]}/{pattern.format(id=video_id)}"] = body
        moto.put_objects(batch, like=files[pattern])
    return source_id


def index_clones(endpoint: str, target_prefix: str) -> int:
    """The `_index/` files a job writes for the videos under `target_prefix`, built from one
    flat listing of `masks/` and one of `_done/` (the clones share one provenance, read from
    one marker). Returns the number of entries."""
    from surgray.annotate.output_scan import fingerprint, flat_entries
    from surgray.annotate.outputs import Marker, OutputLayout
    from surgray.annotate.run_index import (
        FLUSH_EVERY,
        IndexEntry,
        IndexWriter,
        provenance_key,
    )

    layout = OutputLayout(target_prefix, storage=bench_storage(endpoint))
    markers = layout.entries_in("_done")
    parts: dict[str, dict] = {}
    for path, info in flat_entries(layout, "masks").items():  # not find: quadratic in folders
        folder, _, name = path.partition("/")
        parts.setdefault(folder.removeprefix("video_id="), {})[name] = fingerprint(info)
    first = sorted(markers)[0].removesuffix(".json")
    key = provenance_key(Marker.from_json(layout.read_bytes(layout.marker_uri(first))).provenance)
    writer = IndexWriter(layout, flush_every=FLUSH_EVERY)
    for name, info in sorted(markers.items()):
        video_id = name.removesuffix(".json")
        found = tuple(sorted(parts.get(video_id, {}).items()))
        writer.add_entry(IndexEntry(video_id, key, fingerprint(info), found))
    writer.flush()
    return len(markers)


# ------------------------------------------------------------------ measured phases
def worker(args: argparse.Namespace) -> None:
    """One `prepare_job` in this fresh process: time, peak RSS, what it planned."""
    import surgray.annotate.driver as driver
    from surgray.annotate.config import AnnotateConfig
    from surgray.annotate.driver import prepare_job

    # The rerun check alone, without the fixed costs around it (checkpoint digest, model
    # check): its wall time and this process's CPU time meanwhile (all threads), so what is
    # the driver's own work and what is waiting on the store's answers can be told apart.
    check_seconds: list[float] = []
    check_cpu: list[float] = []
    check = driver.prepare_rerun

    def timed_check(*args, **kwargs):
        began, cpu = time.perf_counter(), time.process_time()
        try:
            return check(*args, **kwargs)
        finally:
            check_seconds.append(time.perf_counter() - began)
            check_cpu.append(time.process_time() - cpu)

    driver.prepare_rerun = timed_check
    config = AnnotateConfig.from_dict(json.loads(Path(args.config).read_text()))
    started, cpu = time.perf_counter(), time.process_time()
    plan = prepare_job(config)
    seconds = time.perf_counter() - started
    result = {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
        "check_seconds": sum(check_seconds),
        "check_cpu_seconds": sum(check_cpu),
        "peak_rss": peak_rss(),
        "rows": len(plan.rows),
        "skipped": len(plan.skipped),
    }
    Path(args.result).write_text(json.dumps(result))


def run_prepare(endpoint: str, manifest: str, out: str, work: Path, name: str) -> dict:
    config = work / f"{name}.json"
    config.write_text(json.dumps(config_dict(endpoint, manifest, out)))
    result = work / f"{name}.result.json"
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", "--config", str(config), "--result", str(result)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(result.read_text())


def first_frame(
    endpoint: str, manifest: str, out: str, work: Path, name: str
) -> tuple[float | None, int | None]:
    """Seconds from `surgray annotate`'s start to the first completion marker on the store,
    and the driver's peak RSS then."""
    import yaml

    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump(config_dict(endpoint, manifest, out)))
    temp = tempfile.mkdtemp(prefix="sgsc", dir="/tmp")
    log = open(work / f"{name}.log", "wb")
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    started = time.monotonic()
    job = subprocess.Popen(
        [sys.executable, "-m", "surgray.cli", "annotate", "--config", str(config),
         "--num-cpus", "2", "--ray-temp-dir", temp],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    fs = filesystem(endpoint)
    seconds = rss = None
    try:
        while job.poll() is None and time.monotonic() - started < FIRST_FRAME_TIMEOUT_S:
            fs.invalidate_cache()
            try:
                if fs.ls(f"{out[5:]}/_done", detail=False):
                    seconds = time.monotonic() - started
                    rss = _peak_rss_of(job.pid)
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.1)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(job.pid, sig)
            except ProcessLookupError:
                break
            try:
                job.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
    return seconds, rss


def _peak_rss_of(pid: int) -> int | None:
    """A running process's peak resident memory in bytes (Linux VmHWM), None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rerun_by_cli(endpoint: str, manifest: str, out: str, work: Path, name: str) -> dict:
    """`surgray annotate` as a user runs it over a prefix where every video is complete: its
    exit status, seconds, what it reported, and whether Ray was started at all (its temp dir
    stays empty when it was not, so no actor can have been)."""
    import re

    import yaml

    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump(config_dict(endpoint, manifest, out)))
    temp = Path(tempfile.mkdtemp(prefix="sgsr", dir="/tmp"))
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    started = time.monotonic()
    job = subprocess.Popen(
        [sys.executable, "-m", "surgray.cli", "annotate", "--config", str(config),
         "--num-cpus", "2", "--ray-temp-dir", str(temp)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = job.communicate(timeout=CLI_RERUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        output, _ = job.communicate(timeout=30)
    seconds = time.monotonic() - started
    text = output.decode(errors="replace")
    (work / f"{name}.log").write_text(text)
    found = re.search(r"\((\d+) done, (\d+) complete before", text)
    ray_started = any(temp.iterdir())
    shutil.rmtree(temp, ignore_errors=True)
    return {
        "rc": job.returncode,
        "seconds": seconds,
        "done": int(found.group(1)) if found else None,
        "complete_before": int(found.group(2)) if found else None,
        "ray_started": ray_started,
    }


def listing_cost(moto: InProcessMoto, prefix: str) -> dict:
    """What one 1,000-key LIST page of the store costs here: a client in this process pages
    through `<prefix>/_done/` over HTTP (client and server time), and moto's own per-page
    scan of the whole bucket (`stock_list_objects_v2`, which this run does not use) timed
    once on the same folder."""
    import boto3

    bucket, _, key = prefix[5:].partition("/")
    client = boto3.client(
        "s3",
        endpoint_url=moto.endpoint,
        region_name=REGION,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    began, pages = time.perf_counter(), 0
    for _ in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{key}/_done/"
    ):
        pages += 1
    http = (time.perf_counter() - began) / pages
    backend = moto.backend()
    began = time.perf_counter()
    stock_list_objects_v2(
        backend, backend.get_bucket(bucket), f"{key}/_done/", None, None, None, 1000
    )
    return {"page_s": http, "pages": pages, "stock_scan_s": time.perf_counter() - began}


def measure(
    moto: InProcessMoto,
    count: int,
    work: Path,
    *,
    index: bool = True,
    rerun_max: int | None = None,
    cli_max: int | None = None,
    run: int = 0,
) -> dict:
    endpoint = moto.endpoint
    manifest = write_archive(moto, count)
    name = f"{count}-{run}"  # a size measured twice must not find the first run's outputs
    fresh = f"s3://{BUCKET}/out/fresh-{name}"
    plan = run_prepare(endpoint, manifest, fresh, work, f"plan-{name}")
    started = f"s3://{BUCKET}/out/first-{name}"
    first, first_rss = first_frame(endpoint, manifest, started, work, f"first-{name}")
    rerun = cli = listing = None
    seeding = None
    if first is not None and (rerun_max is None or count <= rerun_max):
        # the complete outputs in a bucket of their own, as an output bucket of a real job
        target_bucket = f"complete-{name}"
        filesystem(endpoint).mkdir(target_bucket)
        complete = f"s3://{target_bucket}/out"
        began = time.perf_counter()
        clone_complete_video(moto, started, complete, count)
        if index:
            index_clones(endpoint, complete)
        seeding = time.perf_counter() - began
        rerun = run_prepare(endpoint, manifest, complete, work, f"rerun-{name}")
        listing = listing_cost(moto, complete)
        if cli_max is None or count <= cli_max:
            cli = rerun_by_cli(endpoint, manifest, complete, work, f"cli-{name}")
    return {
        "count": count,
        "plan": plan,
        "first_frame_s": first,
        "first_rss": first_rss,
        "rerun": rerun,
        "seeding_s": seeding,
        "listing": listing,
        "cli": cli,
        "load": os.getloadavg()[0],
    }


def _per_video(results: list[dict], index: int, seconds_of) -> float | None:
    """Marginal seconds per video between the smallest archive and this one: the fixed costs
    (imports, the checkpoint, Ray) cancel out."""
    first, this = results[0], results[index]
    a, b = seconds_of(first), seconds_of(this)
    if a is None or b is None or this["count"] == first["count"]:  # e.g. a size measured twice
        return None
    return (b - a) / (this["count"] - first["count"])


def table(results: list[dict]) -> str:
    rows = []
    base = results[0]["first_frame_s"] if results else None
    for index, r in enumerate(results):
        plan, rerun, first = r["plan"], r["rerun"], r["first_frame_s"]
        plan_slope = _per_video(results, index, lambda x: x["plan"]["seconds"])
        rerun_slope = _per_video(results, index, lambda x: x["rerun"] and x["rerun"]["seconds"])
        rows.append(
            [
                f"{r['count']:,}",
                fmt(plan["seconds"], " s", 2),
                fmt(plan_slope and plan_slope * 1e6, " us", 0),
                fmt_mb(plan["peak_rss"]),
                fmt(first, " s", 1),
                fmt(first / base if first and base else None, "x", 2),
                fmt_mb(r["first_rss"]),
                fmt(rerun["seconds"] if rerun else None, " s", 2),
                fmt(rerun_slope and rerun_slope * 1e3, " ms", 3),
                fmt(rerun and rerun["check_seconds"] / r["count"] * 1e3, " ms", 3),
                "not measured"
                if rerun is None
                else f"{rerun['rows']} ({rerun['skipped']:,} skipped)",
                f"{r['load']:.1f}",
            ]
        )
    header = [
        "videos", "plan", "plan per added video", "plan peak RSS (MB)", "first video done",
        "vs smallest", "driver RSS at first video (MB)", "rerun (prepare_job)",
        "rerun per added video", "rerun check per video", "work rows on rerun", "load (1 min)",
    ]  # fmt: skip
    return print_table("Archive scale: the annotate driver on S3 (moto)", header, rows)


def rerun_table(results: list[dict]) -> str:
    """The rerun over N complete videos in detail: wall time against the driver's own CPU
    (the rest is waiting on LIST/GET answers), the store's cost per LIST page, and the job's
    own CLI over the same prefix."""
    rows = []
    for index, r in enumerate(results):
        rerun, listing, cli = r["rerun"], r["listing"], r["cli"]
        if rerun is None:
            continue
        n = r["count"]
        wall_slope = _per_video(
            results, index, lambda x: x["rerun"] and x["rerun"]["check_seconds"]
        )
        cpu_slope = _per_video(
            results, index, lambda x: x["rerun"] and x["rerun"].get("check_cpu_seconds")
        )
        cpu = rerun.get("check_cpu_seconds")
        rows.append(
            [
                f"{n:,}",
                fmt(r["seeding_s"], " s", 1),
                fmt(rerun["seconds"], " s", 2),
                fmt(rerun.get("cpu_seconds"), " s", 2),
                fmt(rerun["check_seconds"], " s", 2),
                fmt(rerun["check_seconds"] / n * 1e3, " ms", 3),
                fmt(cpu and cpu / n * 1e3, " ms", 3),
                fmt(wall_slope and wall_slope * 1e3, " ms", 3),
                fmt(cpu_slope and cpu_slope * 1e3, " ms", 3),
                fmt(cpu and 100 * (1 - cpu / rerun["check_seconds"]), " %", 0),
                fmt(listing and listing["page_s"] * 1e3, " ms", 0),
                fmt(listing and listing["stock_scan_s"] * 1e3, " ms", 0),
                f"{rerun['rows']} ({rerun['skipped']:,} skipped)",
                fmt_mb(rerun["peak_rss"]),
                "not measured"
                if cli is None
                else f"exit {cli['rc']}, {cli['seconds']:.1f} s, "
                f"{cli['complete_before']} complete before, {cli['done']} done, "
                f"Ray {'started' if cli['ray_started'] else 'not started'}",
                f"{r['load']:.1f}",
            ]
        )
    header = [
        "videos", "seeding", "prepare_job", "prepare_job CPU", "rerun check",
        "check per video", "check CPU per video", "check per added video",
        "check CPU per added video", "waiting (not CPU)", "LIST page (HTTP)",
        "moto stock scan per page", "work rows", "driver peak RSS (MB)",
        "surgray annotate over it", "load (1 min)",
    ]  # fmt: skip
    return print_table("Rerun over N complete videos (all indexed)", header, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 100 and 1,000")
    parser.add_argument("--sizes", default=None, help="comma-separated archive sizes")
    parser.add_argument(
        "--no-index", action="store_true", help="rerun over outputs without an _index/"
    )
    parser.add_argument(
        "--rerun-max", type=int, default=None, help="skip the rerun phase above this many videos"
    )
    parser.add_argument(
        "--cli-max",
        type=int,
        default=None,
        help="run `surgray annotate` over the complete prefix only up to this many videos",
    )
    parser.add_argument(
        "--stock-listing",
        action="store_true",
        help="moto's own ListObjectsV2 (a scan of the whole bucket per page)",
    )
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    sizes = [100, 1000] if args.quick else [1000, 10_000, 100_000]
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # A stopped benchmark still stops what it started (the store, a running job).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # moto serves from a thread of this process (every measured phase is its own process and
    # talks to it over HTTP), so that the seeding can write into its backend directly.
    moto = InProcessMoto(paged_listing=not args.stock_listing)
    results: list[dict] = []
    try:
        setup_store(moto.endpoint)
        with tempfile.TemporaryDirectory(prefix="bench-scale") as work:
            for run, n in enumerate(sizes):
                results.append(
                    measure(
                        moto,
                        n,
                        Path(work),
                        index=not args.no_index,
                        rerun_max=args.rerun_max,
                        cli_max=args.cli_max,
                        run=run,
                    )
                )
                if args.json:  # what is measured so far survives a later size's failure
                    Path(args.json).write_text(json.dumps(results, indent=1))
                print(f"measured {n:,} videos (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        moto.stop()
    listing = "moto's own listing" if args.stock_listing else "paged listing"
    print(f"\n{machine_line(1)}; {FRAMES}-frame clips of {SIZE} px, one box prompt each; {listing}")
    table(results)
    rerun_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
