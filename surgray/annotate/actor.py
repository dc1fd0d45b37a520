"""`SegmentAnnotator`: the callable class of the annotation job's actor pool.

It loads the model once (checkpoint through fsspec), then takes work items in batches of K
(`batching.videos_per_step`) and tracks the K videos together: each round reads the next
frame of every video still running and steps them all with one `Tracker.step_many` call (one
batched image-encoder forward). A video that fails (unreadable, corrupt mid-way, a prompt that
does not fit) drops out with an error result; the others go on.

Concurrent calls (`actors.concurrent_videos` = N > 1). Ray Data then calls `__call__` from N
threads at once (`surgray.annotate.pipeline.build_dataset`), each with its own batch, all on
the actor's one model: torch ops release the GIL, so on CPU N videos on one torch thread each
go faster than one video on N threads (benchmarks/README.md). What the calls share is made
safe here: each call sets its own thread's torch thread count (OpenMP's count is per calling
thread; `threads_per_call`); the lazy text-encoder load takes a lock (text encoding has its
own, `surgray.model.text.encoder`), and so does the user's skip hook unless it declares itself
thread-safe (`surgray.annotate.hooks.is_thread_safe`).
Everything else a call mutates is its own: `VideoRun`, the tracker's `VideoState`, the
writers. The model is read-only in inference mode; its cached position and RoPE tables are
filled with a check-then-set that at worst builds the same table twice. A failed video is a
failed result of its own call, as with N = 1; a lost actor loses all N calls, which the driver
runs again (`surgray.annotate.pipeline`).

Ray-free: Ray Data constructs it with `fn_constructor_kwargs` and calls it with a pyarrow
Table of work rows, but it works the same when called directly (tests, `annotate_rows`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from surgray.annotate.config import AnnotateConfig
from surgray.annotate.logsafe import logger, video_label
from surgray.annotate.outputs import OutputLayout, SegmentResult
from surgray.annotate.rows import results_table
from surgray.annotate.session import RunContext, VideoRun
from surgray.io.storage import Storage


def _torch_threads(config: AnnotateConfig) -> int:
    if config.actors.torch_threads is not None:
        return config.actors.torch_threads
    # Ray sets OMP_NUM_THREADS from num_cpus, but a reused worker keeps the thread count of
    # its first task, so the count is set explicitly.
    return max(1, int(config.actors.num_cpus))


def threads_per_call(config: AnnotateConfig) -> int:
    """Torch threads of each of the actor's concurrent calls: the actor's total split over
    `actors.concurrent_videos`, at least 1 each."""
    return max(1, _torch_threads(config) // config.actors.concurrent_videos)


def _serialized(function: Callable[..., Any], lock: threading.Lock) -> Callable[..., Any]:
    @functools.wraps(function)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return function(*args, **kwargs)

    return locked


def _is_referring(model: Any) -> bool:
    from surgray.model.referring.resurgsam2 import ReSurgSAM2

    return isinstance(model, ReSurgSAM2)


def load_model(config: AnnotateConfig, device: str, *, storage: Storage) -> Any:
    """The tracker's network (`surgray.model.checkpoints.network_loading.load_network`, as Serve builds
    it): a `ReSurgSAM2` for a referring checkpoint, else a `SAM2Model`.

    `model.text_encoder` overrides the checkpoint's text-encoder folder; the encoder itself
    is loaded only when a text prompt arrives (`SegmentAnnotator._ensure_text_encoder`).
    """
    from surgray.model.checkpoints.network_loading import load_network

    model = load_network(
        config.model.checkpoint,
        config.model.variant,
        image_size=config.model.image_size,
        text_encoder=config.model.text_encoder,
        storage=storage,
    )
    return model.to(device).eval()


class SegmentAnnotator:
    """Tracks work items; `__call__(batch) -> results` (see the module docstring).

    postprocess: the tracker's `PostprocessConfig` fields (the evaluation job sets
    `non_overlap_masks`); device: "cuda" when the actor has a GPU, else "cpu" by default.
    """

    def __init__(
        self,
        config: AnnotateConfig,
        *,
        postprocess: Mapping[str, Any] | None = None,
        device: str | None = None,
    ) -> None:
        import torch

        from surgray.annotate.hooks import is_thread_safe, load_skip_hook
        from surgray.tracking.tracker import Tracker

        logging.getLogger("surgray").setLevel(logging.INFO)
        self.config = config
        self.concurrent = config.actors.concurrent_videos
        self._call_threads = threads_per_call(config)
        self._text_lock = threading.Lock()
        torch.set_num_threads(_torch_threads(config))
        if device is None:
            device = "cuda" if config.actors.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        storage = config.storage.build()
        model = load_model(config, device, storage=storage)
        self._text_encoder_loaded = False
        skip_hook = load_skip_hook(config.frames.skip_hook)
        if skip_hook is not None and self.concurrent > 1 and not is_thread_safe(skip_hook):
            skip_hook = _serialized(skip_hook, threading.Lock())
        tracker = Tracker(
            model,
            {"name": config.model.policy, **config.model.policy_options},
            postprocess=dict(postprocess or {}),
            precision=config.model.precision,  # surgray.tracking.precision: fp32, fast, ...
        )
        self.context = RunContext(
            tracker=tracker,
            layout=OutputLayout(config.output.prefix, storage=storage),
            storage=storage,
            stride=config.frames.stride,
            target_fps=config.frames.target_fps,
            skip_hook=skip_hook,
            rows_per_part=config.output.rows_per_part,
            text_ready=self._ensure_text_encoder if _is_referring(model) else None,
        )
        logger.info(
            "annotator ready in process %d on %s (%d concurrent videos)",
            os.getpid(),
            device,
            self.concurrent,
        )

    def _ensure_text_encoder(self) -> None:
        """Load the CLIP text encoder on the first text-prompted work item, once per actor
        (under a lock: concurrent calls may ask at the same time)."""
        if self._text_encoder_loaded:
            return
        with self._text_lock:
            if self._text_encoder_loaded:
                return
            model = self.context.tracker.model
            if model.text_encoder is None:
                if model.referring_cfg.text_encoder is None:
                    raise ValueError(
                        "text prompts need a CLIP text encoder: set model.text_encoder in the "
                        "config (the checkpoint names none)"
                    )
                model.load_text_encoder(storage=self.context.storage)
            self._text_encoder_loaded = True

    def __call__(self, batch: Any) -> Any:
        """A pyarrow Table (or list of row dicts) of work rows -> a Table of result rows."""
        rows = batch.to_pylist() if hasattr(batch, "to_pylist") else list(batch)
        return results_table(self.annotate_rows(rows))

    def annotate_rows(self, rows: Iterable[Mapping[str, Any]]) -> list[SegmentResult]:
        """Track the work items of `rows` together; one result per row, in row order."""
        if self.concurrent > 1:
            import torch

            # Per calling thread: Ray runs concurrent calls on threads of its own pool.
            torch.set_num_threads(self._call_threads)
        runs: list[VideoRun] = []
        results: dict[int, SegmentResult] = {}
        for position, row in enumerate(rows):
            run = VideoRun.from_row(dict(row), self.context)
            runs.append(run)
            try:
                run.open()
            except Exception as exc:  # one bad video must not stop the others
                results[position] = run.fail(exc)
        active = [p for p in range(len(runs)) if p not in results]
        while active:
            frames, still = [], []
            for position in active:
                run = runs[position]
                try:
                    frame = run.next_frame()
                except Exception as exc:
                    results[position] = run.fail(exc)
                    continue
                if frame is None:
                    results[position] = self._finish(run)
                    continue
                frames.append(frame)
                still.append(position)
            self._step([runs[p] for p in still], frames, still, results)
            active = [p for p in still if p not in results]
        return [results[p] for p in range(len(runs))]

    def _finish(self, run: VideoRun) -> SegmentResult:
        try:
            result = run.finish()
        except Exception as exc:
            return run.fail(exc)
        logger.info(
            "%s segment %d: %d frames in %.1f s",
            video_label(run.item.video_id),
            run.item.segment_index,
            result.frames,
            result.wall_s,
        )
        return result

    def _step(
        self,
        runs: list[VideoRun],
        frames: list[Any],
        positions: list[int],
        results: dict[int, SegmentResult],
    ) -> None:
        """One frame of each run: prompts queued, one batched step, rows written."""
        tracker = self.context.tracker
        ready: list[tuple[int, VideoRun, Any, Any]] = []
        for position, run, frame in zip(positions, runs, frames):
            try:
                ready.append((position, run, frame, run.prepare(frame)))
            except Exception as exc:
                results[position] = run.fail(exc)
        if not ready:
            return
        before = [state.frames_stepped for _, _, _, state in ready]
        try:
            outputs = tracker.step_many(
                [state for *_, state in ready], [frame.image for _, _, frame, _ in ready]
            )
        except Exception as exc:
            advanced = any(s.frames_stepped != b for (*_, s), b in zip(ready, before))
            if advanced or len(ready) == 1:
                for position, run, _, _ in ready:
                    results[position] = run.fail(exc)
                return
            # step_many checks every frame before running any: find the culprit alone.
            outputs = []
            for position, run, frame, state in ready:
                try:
                    outputs.append(tracker.step(state, frame.image))
                except Exception as single:
                    results[position] = run.fail(single)
                    outputs.append(None)
        for (position, run, frame, _), output in zip(ready, outputs):
            if output is None or position in results:
                continue
            try:
                run.record(frame, output)
            except Exception as exc:
                results[position] = run.fail(exc)
