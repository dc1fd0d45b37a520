"""`demo:` inputs of the annotation job: the demo's synthetic clip, written on first use.

    inputs:
      manifest: demo:text      # or demo:mask

so that `surgray annotate --config configs/annotate_demo.yaml` runs right after setup, with
nothing to download or prepare. The first run writes, under `<output.prefix>/demo_inputs/`,
the clip `surgray demo` segments (MP4), its ground truth (DAVIS-style folder `ground_truth/`,
what `surgray eval --gt` reads) and a one-row manifest prompting its objects by their
referring expressions (`demo:text`) or by their first-frame masks (`demo:mask`); later runs
reuse them. The clip and manifest are made by `surgray.demo_inputs`, as the demo makes them.

`SURGRAY_README_QUICK=1` makes the clip short and small (the README test runs every README
command with it, on a 2-core CI machine).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from surgray.annotate.config import AnnotateConfig
from surgray.errors import UserError

DEMO_SCHEME = "demo:"
KINDS = ("text", "mask")
FOLDER = "demo_inputs"
QUICK_ENV = "SURGRAY_README_QUICK"
SEED = 7  # the clip `surgray demo` segments by default
FULL_CLIP = (48, 256)  # frames, side: `surgray demo`'s clip
QUICK_CLIP = (12, 128)  # short enough for CI; the clip still has every object

log = logging.getLogger("surgray.annotate")


class DemoInputError(UserError, ValueError):
    """A `demo:` input that cannot be made (unknown kind, output not on this machine)."""


def quick_mode(environ: dict[str, str] | None = None) -> bool:
    """Whether SURGRAY_README_QUICK asks for reduced sizes (any value but '', '0', 'false')."""
    value = (os.environ if environ is None else environ).get(QUICK_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no")


def is_demo_input(config: AnnotateConfig) -> bool:
    manifest = config.inputs.manifest
    return manifest is not None and manifest.startswith(DEMO_SCHEME)


def demo_folder(config: AnnotateConfig) -> Path:
    """Where a `demo:` input's clip, ground truth and manifest are written (a local folder)."""
    from surgray.io.storage import is_local, local_path

    prefix = config.output.prefix
    if not is_local(prefix):
        raise DemoInputError(
            f"inputs.manifest {config.inputs.manifest}: demo inputs are written next to the "
            f"outputs, which must be a local folder (output.prefix is {prefix})"
        )
    return local_path(prefix) / FOLDER


def resolve_demo_inputs(
    config: AnnotateConfig, environ: dict[str, str] | None = None
) -> AnnotateConfig:
    """`config` with a `demo:<kind>` manifest replaced by the manifest file it stands for
    (written first when missing); any other config unchanged."""
    if not is_demo_input(config):
        return config
    kind = config.inputs.manifest[len(DEMO_SCHEME) :]
    if kind not in KINDS:
        raise DemoInputError(
            f"inputs.manifest {config.inputs.manifest!r}: unknown demo input; use "
            + " or ".join(DEMO_SCHEME + k for k in KINDS)
        )
    folder = demo_folder(config)
    manifest = folder / f"manifest_{kind}.jsonl"
    if not manifest.is_file():
        from surgray.demo_inputs import write_clip, write_manifest

        frames, size = QUICK_CLIP if quick_mode(environ) else FULL_CLIP
        clip = write_clip(folder, frames, size, SEED)
        partial = manifest.with_suffix(".partial")
        write_manifest(partial, clip, kind)
        os.replace(partial, manifest)  # a crash mid-way never leaves a manifest without a clip
        log.info(
            "wrote the demo clip (%d frames, %d px), its ground truth and a %s-prompt manifest "
            "under %s",
            frames,
            size,
            kind,
            folder,
        )
    inputs = config.inputs.model_copy(update={"manifest": str(manifest.resolve())})
    return config.model_copy(update={"inputs": inputs})
