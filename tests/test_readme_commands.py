"""The README is executed: every shell block and Python snippet runs, in order, in a copy of
the checkout (see tests/_readme_runner.py for which blocks and how). A README command that
does not work fails this test, with the README line and the command's output.

The blocks a user runs: the demo, `surgray eval` on its outputs, the Python snippets (shipped
demo checkpoints), `surgray annotate --config configs/annotate_demo.yaml`, the Serve demo
server with `/docs` and an API request, a short `surgray train`, `surgray synth` and
`surgray eval` on the annotate job's masks. The Ray cluster sequence (`ray start --head`,
`ray job submit`) runs in tests/test_job_submit.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _local_http import free_port
from _readme_runner import (
    REPO,
    ReadmeCommandFailed,
    parse_blocks,
    plan_steps,
    run_readme,
    timing_table,
    venv_is_set_up,
)

README = REPO / "README.md"

pytestmark = pytest.mark.skipif(
    not venv_is_set_up(), reason="the checkout's .venv is not set up (run ./scripts/setup.sh)"
)


def test_every_runnable_block_is_known():
    """The README's runnable blocks, and the ones it marks skipped, say why."""
    blocks = parse_blocks(README.read_text())
    steps = plan_steps(blocks)
    commands = "\n".join(step.code for step in steps)
    for expected in (
        "surgray demo",
        "surgray annotate --config configs/annotate_demo.yaml",
        "surgray train --config configs/train_demo.yaml --max-steps",
        "serve run serve.app:app",
        "/docs",
        "surgray eval --gt out/annotations/demo_inputs/ground_truth --pred out/annotations/masks",
        "build_model(",
    ):
        assert expected in commands, expected
    assert "pytest" not in commands  # the suite never runs itself
    for block in blocks:
        if block.skip is not None:
            assert block.skip != "marked", f"line {block.line}: say why it is skipped"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_commands_run(tmp_path):
    results = run_readme(README.read_text(), tmp_path, free_port())
    print("\n" + timing_table(results), file=sys.stderr)
    outputs = tmp_path / "checkout" / "out"
    assert (outputs / "demo" / "text" / "masks").is_dir()
    assert (outputs / "annotations" / "_summary.json").is_file()
    assert (outputs / "eval" / "eval_results.csv").is_file()
    assert "GET /docs: 200" in "".join(r.output for r in results)


def test_a_broken_command_fails(tmp_path):
    """The runner is able to fail: a README whose command does not work stops at it, naming
    the line, after running the blocks before it."""
    text = "\n".join(
        [
            "# demo",
            "```bash",
            "surgray --help > /dev/null",
            "```",
            "<!-- readme-test: skip (never runs) -->",
            "```bash",
            "exit 3",
            "```",
            "```bash",
            "surgray annotate --config configs/no_such_config.yaml",
            "```",
            "```bash",
            "touch never-reached",
            "```",
        ]
    )
    with pytest.raises(ReadmeCommandFailed, match=r"README.md line 9 \(bash\) exited 2"):
        run_readme(text, tmp_path, free_port())
    assert not (Path(tmp_path) / "checkout" / "never-reached").exists()
