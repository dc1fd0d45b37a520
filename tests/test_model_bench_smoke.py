"""Smoke test of the model-level benchmarks' `--quick` modes: bench_rope (our RoPE against the
reference's), bench_int8_attention (fast mode's attention kernel), bench_load_memory (an actor's resident memory step by step, per heap setting) and
profile_fast_mode (self time per network part, exact and fast)."""

from __future__ import annotations

from test_benchmarks_smoke import run_quick


def rows(text: str) -> dict[str, list[str]]:
    found = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|--"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            found[cells[0]] = cells[1:]
    return found


def test_bench_rope_quick_matches_the_reference():
    table = rows(run_quick("bench_rope.py"))
    for side in ("surgray", "surgray, in place (inference)", "reference (sam2)"):
        ms, _, diff = table[side]
        assert float(ms) > 0
        assert float(diff) <= 1e-5


def test_bench_int8_attention_quick_times_both_kernels():
    table = rows(run_quick("bench_int8_attention.py"))
    for name in ("self 8x8", "cross 8x8", "self 12x12", "cross 12x12"):
        scores, fused_ms, int8_ms, speed, runs, error = table[name]
        assert float(fused_ms) > 0 and float(int8_ms) > 0 and speed.endswith("x")
        assert runs == "fused"  # maps this small stay below the threshold
        assert 0 < float(error) < 0.05  # quantized, yet close


def test_bench_load_memory_quick_samples_every_step_under_each_heap_setting():
    # As README's command: both precisions, 2 videos at once, two heap settings.
    out = run_quick(
        "bench_load_memory.py", "--videos", "2", "--heap-envs", "default;MALLOC_ARENA_MAX=1"
    )
    steps, summary_text = out.split("Time and peak per run")
    for precision in ("fp32", "fast"):
        for heap in ("default", "MALLOC_ARENA_MAX=1"):
            title = f"precision {precision}, heap {heap} (MB)"
            assert steps.count(title) == 1
            table = rows(steps.split(title)[1].split("###")[0])
            for step in ("import torch + surgray", "load_network", "tracked frame 1", "end"):
                rss, peak = (float(v) for v in table[step])
                assert 0 < rss <= peak
    summary = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in summary_text.splitlines()
        if line.startswith(("| fp32", "| fast"))
    ]
    assert [row[:2] for row in summary] == [
        ["fp32", "default"], ["fp32", "MALLOC_ARENA_MAX=1"],
        ["fast", "default"], ["fast", "MALLOC_ARENA_MAX=1"],
    ]  # fmt: skip
    assert summary[0][3] == summary[2][3] == "1.00x" and summary[0][5] == summary[2][5] == "+0"
    assert all(float(row[2]) > 0 and float(row[4]) > 0 for row in summary)


def test_profile_fast_mode_quick_times_both_sides():
    out = run_quick("profile_fast_mode.py")
    table = rows(out)
    # Many rows share a part name (rows() keeps the last of each): read the module types whole.
    module_types = {
        line.strip().strip("|").split("|")[1].strip()
        for line in out.splitlines()
        if line.startswith("| ") and line.count("|") >= 4
    }
    assert "RoPEAttention" in module_types
    exact, fast = table["whole step"][1], table["whole step"][2]
    assert float(exact) > 0 and float(fast.split()[0]) > 0
