"""Runs the README's commands as a user would: every shell block and Python snippet, in the
order they appear, in a copy of the checkout (tests/test_readme_commands.py).

Which blocks run: every ```bash block and every ```python block, unless the line before its
fence is an HTML comment `<!-- readme-test: skip (why) -->` (the test suite itself, the Ray
cluster sequence that tests/test_job_submit.py runs on its own ports, commands that need the
user's data or a cloud). Consecutive Python blocks run in one interpreter, like a notebook: a
snippet may use the names an earlier one defined.

How they run: each shell block is one `bash -e -o pipefail` process in the copy's root, with
the copy's `.venv/bin` first on PATH (an activated venv), `SURGRAY_README_QUICK=1` (short demo
inputs), its own HOME (so `~/.ray/auth_token` and caches are the test's) and its own Ray temp
folder (RAY_TMPDIR), RAY_AUTH_MODE unset (Ray's defaults), and port 8000 replaced by a free
port (other servers may run on this machine). Whatever a block leaves running is stopped by
the process ids of its session and of processes under the test's Ray folder.

The copy: the working tree's tracked and untracked, not ignored, files (uncommitted work
included), and a `.venv` of links into the checkout's set-up venv, stamped the way
scripts/setup.sh stamps it so that `./scripts/setup.sh` returns at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(?P<why>.*?)-->")
FENCE = re.compile(r"^```\s*(?P<lang>[\w+-]*)\s*$")
RUN_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
DEMO_PORT = "8000"
STEP_TIMEOUT_S = 420


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    skip: str | None  # the reason, when marked


@dataclass
class Step:
    lang: str  # "bash" or "python"
    code: str
    lines: list[int] = field(default_factory=list)

    @property
    def where(self) -> str:
        return "README.md line " + ", ".join(str(n) for n in self.lines)


@dataclass(frozen=True)
class StepResult:
    step: Step
    returncode: int
    seconds: float
    output: str


class ReadmeCommandFailed(AssertionError):
    pass


def parse_blocks(text: str) -> list[Block]:
    """Every fenced block of `text` with its language, line and skip marker."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        start = index
        end = start + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        previous = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = SKIP.search(previous)
        skip = (marker.group("why").strip(" ()") or "marked") if marker else None
        blocks.append(
            Block(match["lang"].lower(), "\n".join(lines[start + 1 : end]), start + 1, skip)
        )
        index = end + 1
    return blocks


def plan_steps(blocks: list[Block]) -> list[Step]:
    """The runnable blocks as steps; consecutive Python blocks share one step."""
    steps: list[Step] = []
    for block in blocks:
        lang = RUN_LANGS.get(block.lang)
        if lang is None or block.skip is not None:
            continue
        if lang == "python" and steps and steps[-1].lang == "python" and steps[-1].lines:
            steps[-1].code += "\n\n" + block.code
            steps[-1].lines.append(block.line)
            continue
        steps.append(Step(lang, block.code, [block.line]))
    return steps


def setup_stamp(root: Path) -> str:
    """The stamp file name scripts/setup.sh writes for the files under `root`."""
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt", "scripts/setup.sh"):
        digest.update((root / name).read_bytes())
    return f".surgray-setup-{digest.hexdigest()[:16]}"


def venv_is_set_up(repo: Path = REPO) -> bool:
    return any((repo / ".venv").glob(".surgray-setup-*")) and (repo / ".venv/bin/python").exists()


def copy_checkout(dest: Path, repo: Path = REPO) -> None:
    """Tracked and untracked (not ignored) files of the working tree, and a linked venv."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listing):
        source = repo / name
        if not source.is_file():  # deleted in the working tree, or a submodule
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    venv = dest / ".venv"
    venv.mkdir()
    for entry in (repo / ".venv").iterdir():
        if not entry.name.startswith(".surgray-setup-"):
            (venv / entry.name).symlink_to(entry)
    (venv / setup_stamp(dest)).touch()


def environment(root: Path, home: Path, ray_tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
    env.update(
        PATH=f"{root / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        VIRTUAL_ENV=str(root / ".venv"),
        HOME=str(home),
        RAY_TMPDIR=str(ray_tmp),
        SURGRAY_README_QUICK="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("SURGRAY_DEBUG", None)
    return env


def _stop_leftovers(session_id: int, ray_tmp: Path) -> None:
    """SIGTERM, then SIGKILL, the processes of the step's session and those whose command
    line names the test's own Ray folder (Ray's daemons leave the session)."""

    def ours() -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if os.getsid(int(proc.name)) == session_id:
                    pids.append(int(proc.name))
                    continue
                if str(ray_tmp) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except (OSError, ProcessLookupError):
                continue
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = ours()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ours():
            time.sleep(0.3)


def run_step(step: Step, root: Path, env: dict[str, str], port: int, ray_tmp: Path) -> StepResult:
    if step.lang == "bash":
        args = ["bash", "-e", "-o", "pipefail", "-c", step.code.replace(DEMO_PORT, str(port))]
    else:
        script = root / ".readme_snippets.py"
        script.write_text(step.code + "\n")
        args = [str(root / ".venv" / "bin" / "python"), str(script)]
    started = time.monotonic()
    proc = subprocess.Popen(
        args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=STEP_TIMEOUT_S)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        code = 124
    finally:
        _stop_leftovers(proc.pid, ray_tmp)
    return StepResult(step, code, time.monotonic() - started, output.decode(errors="replace"))


def run_readme(text: str, work: Path, port: int, repo: Path = REPO) -> list[StepResult]:
    """Copy the checkout under `work`, then run the steps of README `text` in order; raises
    `ReadmeCommandFailed` at the first step that fails (after the ones before it ran)."""
    root, home = work / "checkout", work / "home"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rdm", dir="/tmp"))  # short: Ray's socket paths
    home.mkdir(parents=True)
    copy_checkout(root, repo)
    env = environment(root, home, ray_tmp)
    results = []
    try:
        for step in plan_steps(parse_blocks(text)):
            result = run_step(step, root, env, port, ray_tmp)
            results.append(result)
            if result.returncode != 0:
                raise ReadmeCommandFailed(
                    f"{step.where} ({step.lang}) exited {result.returncode} after "
                    f"{result.seconds:.0f} s:\n{step.code}\n--- output (last 4000 chars) ---\n"
                    f"{result.output[-4000:]}\n--- steps so far ---\n{timing_table(results)}"
                )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return results


def timing_table(results: list[StepResult]) -> str:
    rows = [f"{'s':>6}  where / first line"]
    for result in results:
        first = result.step.code.strip().splitlines()[0][:90]
        rows.append(f"{result.seconds:6.1f}  {result.step.where}: {first}")
    rows.append(f"{sum(r.seconds for r in results):6.1f}  total")
    return "\n".join(rows)
