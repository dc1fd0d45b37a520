"""Checks the driver runs before Ray starts, so that a mistake of the user's making is one
line and exit 2 within seconds, not a traceback from inside an actor half a minute later.

- the checkpoint: read and built exactly as the actors build it
  (`surgray.model.checkpoints.network_loading.load_network`), so an unreadable file, random bytes, a
  variant that does not fit or a text-encoder folder the checkpoint refuses fail here;
- text prompts: they need a referring checkpoint, and a text encoder (an embedded text tower,
  or a CLIP folder that exists);
- the output prefix: a test object is written and removed.

A Python package missing from the job's environment is named as such, never blamed on the
checkpoint or the output folder. Errors of Ray workers that pass these checks stay internal
errors with their traceback (`surgray --debug`).
"""

from __future__ import annotations

import time
from typing import Any

from surgray.errors import UserError
from surgray.io.storage import Storage

# Messages of torch.load name a flag that would unpickle arbitrary code: never pass it on.
_UNSAFE_ADVICE = "weights_only"


class PreflightError(UserError, ValueError):
    """The job cannot start; the message names the setting and what is wrong with it."""


class MissingPackageError(PreflightError):
    """The job's Python lacks a package surgray needs (a different environment than surgray's)."""


def missing_package(exc: BaseException) -> MissingPackageError | None:
    """A `MissingPackageError` naming the package when `exc` (or its cause) is an import failure."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ImportError):
            import sys

            name = getattr(seen, "name", None) or str(seen)
            return MissingPackageError(
                f"this Python ({sys.executable}) lacks the package {name!r}: run the job with "
                "surgray's environment (README 'Jobs on Ray': an activated .venv, or "
                "runtime_env py_executable)"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def safe_message(exc: object) -> str:
    """The exception's (or message's) text without advice to load checkpoints unsafely."""
    kept = [
        part
        for part in str(exc).replace("\n", " ").split(". ")
        if _UNSAFE_ADVICE not in part and "WeightsUnpickler" not in part
    ]
    return ". ".join(kept).strip() or type(exc).__name__


def check_output_writable(layout: Any) -> None:
    """Write and remove `<prefix>/_write_check`; a failure names the prefix and the cause."""
    uri = f"{layout.prefix}/_write_check"
    try:
        layout.put_bytes(uri, b"ok")
        layout.remove(uri)
    except Exception as exc:  # every store fails in its own way; all mean "cannot write"
        missing = missing_package(exc)
        if missing is not None:
            raise missing from exc
        raise PreflightError(
            f"output.prefix {layout.prefix}: cannot write there ({type(exc).__name__}: {exc})"
        ) from exc


def load_checked_network(model: Any, *, storage: Storage) -> Any:
    """The network of `model` (an annotate config's `ModelSection`), loaded as the actors load
    it; raises `PreflightError` naming model.checkpoint or model.variant."""
    from surgray.model.checkpoints.network_loading import load_network
    from surgray.model.checkpoints.sam2_checkpoint import CheckpointError

    try:
        return load_network(
            model.checkpoint,
            model.variant,
            image_size=model.image_size,
            text_encoder=model.text_encoder,
            storage=storage,
        )
    except CheckpointError as exc:
        raise PreflightError(f"model.checkpoint: {safe_message(exc)}") from exc
    except (KeyError, ValueError) as exc:  # unknown variant, bad image size
        missing = missing_package(exc)
        if missing is not None:
            raise missing from exc
        # A KeyError's str() is the repr of its message; show the message itself.
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise PreflightError(f"model.variant {model.variant!r}: {safe_message(reason)}") from exc
    except ImportError as exc:
        raise missing_package(exc) from exc


def check_text_support(network: Any, model: Any, *, storage: Storage) -> None:
    """Raise `PreflightError` unless `network` can read text prompts."""
    from surgray.model.referring.resurgsam2 import ReSurgSAM2

    if not isinstance(network, ReSurgSAM2):
        raise PreflightError(
            f"model.checkpoint {model.checkpoint}: text prompts need a referring (ReSurgSAM2) "
            "checkpoint, e.g. demo:referring; this one is a SAM2 network, which takes points, "
            "boxes and masks"
        )
    if network.text_encoder is not None:  # an embedded text tower
        return
    folder = network.referring_cfg.text_encoder
    if folder is None:
        raise PreflightError(
            "model.text_encoder: text prompts need a CLIP text encoder folder and the "
            f"checkpoint {model.checkpoint} names none"
        )
    if not _exists(folder, storage=storage):
        raise PreflightError(f"model.text_encoder {folder}: no such folder")


def _exists(uri: str, *, storage: Storage) -> bool:
    try:
        return storage.exists(uri)
    except Exception:  # unreachable store: the actors would fail the same way
        return False


def check_model(model: Any, *, storage: Storage, needs_text: bool) -> float:
    """Check the checkpoint (and text support when `needs_text`); returns the seconds taken."""
    started = time.monotonic()
    network = load_checked_network(model, storage=storage)
    if needs_text:
        check_text_support(network, model, storage=storage)
    del network  # the driver does not keep a copy of the weights
    return time.monotonic() - started


def check_paths_exist(named: list[tuple[str, str]], *, storage: Storage) -> None:
    """Raise one `PreflightError` naming every (setting, path) whose path does not exist;
    `demo:` checkpoints are shipped and always exist."""
    missing = [
        f"{setting} {uri}"
        for setting, uri in named
        if not uri.startswith("demo:") and not _exists(uri, storage=storage)
    ]
    if missing:
        raise PreflightError(
            f"not found: {'; '.join(missing)} (edit the paths in the config to point at your data)"
        )


def check_evaluate_job(config: Any) -> None:
    """The evaluation job's checks before Ray starts: its datasets' roots and its checkpoint
    exist, and the checkpoint builds the configured network (`config`: an EvaluateConfig)."""
    storage = config.storage.build()
    named = [(f"datasets.{d.name}.root", d.root) for d in config.datasets]
    check_paths_exist([*named, ("model.checkpoint", config.model.checkpoint)], storage=storage)
    check_model(config.model, storage=storage, needs_text=False)
