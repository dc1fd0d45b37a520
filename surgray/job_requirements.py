"""Does this Python have what a surgray job needs? Checked first thing by `jobs/*.py`.

`ray job submit -- python jobs/annotate.py` runs whatever `python` the cluster's PATH gives:
on a cluster started outside surgray's environment that is a Python without surgray's
packages, and the job would fail later on the first import, blaming whatever it was doing.
This module uses the standard library only, so it can say which packages are missing and
how to give the job surgray's environment, before anything else is imported.
"""

from __future__ import annotations

import importlib.util
import sys

# import name -> the distribution to install (pyproject.toml names it)
CORE = {"torch": "torch", "numpy": "numpy", "pydantic": "pydantic", "yaml": "pyyaml"}
IO = {"av": "av", "fsspec": "fsspec", "pyarrow": "pyarrow", "PIL": "pillow"}
RAY = {"ray": "ray[data,train,serve]"}
JOBS: dict[str, dict[str, str]] = {
    "annotate": CORE | IO | RAY,
    "evaluate": CORE | IO | RAY,
    "train": CORE | IO | RAY,
}
EXIT_USER = 2
HOW_TO = (
    "run the job with surgray's environment: start the cluster from it (`source .venv/bin/"
    "activate` before `ray start`), or name its Python in the entrypoint (`-- /path/to/.venv/"
    "bin/python jobs/...`); README 'Jobs on Ray'"
)


def missing(modules: dict[str, str]) -> list[str]:
    """The distributions of `modules` (import name -> distribution) this Python cannot import."""
    return [dist for name, dist in modules.items() if importlib.util.find_spec(name) is None]


def require(job: str) -> None:
    """Exit 2 with one line naming the missing packages when this Python cannot run `job`."""
    absent = missing(JOBS[job])
    if absent:
        print(
            f"jobs/{job}.py: this Python ({sys.executable}) lacks the package"
            f"{'s' if len(absent) > 1 else ''} {', '.join(absent)}; {HOW_TO}",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_USER)
