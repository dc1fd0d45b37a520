"""What the driver does between a lost actor and the re-run (`surgray.annotate.node_loss`):
the lost node found from Ray's error, the wait bounded by the GCS's health-check window, the
node kept out of placement by a label selector that Ray really honours, and the fresh pool
sized to the CPUs left. The whole path with a real node killed is in
`tests/test_annotate_cluster.py`."""

from __future__ import annotations

import pytest

from surgray.annotate.config import AnnotateConfig
from surgray.annotate.node_loss import (
    NODE_ID_LABEL,
    await_marked_dead,
    exclusion_selector,
    fit_pool,
    health_check_window_s,
    lost_actor_ids,
    placement_excluding,
)

FAKE_NODE = "ab" * 28  # a well-formed node id no node has


def _config(count: int, num_cpus: float) -> AnnotateConfig:
    return AnnotateConfig.from_dict(
        {
            "inputs": {"manifest": "m.jsonl"},
            "output": {"prefix": "out"},
            "model": {"variant": "micro", "checkpoint": "c.pt"},
            "actors": {"count": count, "num_cpus": num_cpus},
        }
    )


def test_health_check_window_follows_rays_settings():
    assert health_check_window_s({}) == pytest.approx(5 * 3 + 10 + 5)
    custom = {
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "2000",
        "RAY_health_check_failure_threshold": "3",
    }
    assert health_check_window_s(custom) == pytest.approx(3 * 1 + 2 + 5)
    assert health_check_window_s({"RAY_health_check_period_ms": "junk"}) == pytest.approx(30)


def test_lost_actor_ids_come_from_the_error_and_its_causes():
    from ray.exceptions import RayActorError

    inner = RayActorError(actor_id="a1" * 16, error_msg="gone")
    try:
        try:
            raise inner
        except RayActorError as exc:
            raise RayActorError(actor_id="b2" * 16, error_msg="wrapped") from exc
    except RayActorError as outer:
        assert lost_actor_ids(outer) == ["b2" * 16, "a1" * 16]
    assert lost_actor_ids(ValueError("no actor")) == []


def test_fit_pool_sizes_the_pool_to_the_cpus_left():
    config = _config(count=2, num_cpus=1.0)
    assert fit_pool(config, 1.0).actors.count == 1  # a node of 1 CPU left
    assert fit_pool(config, 2.0) is config  # room enough
    assert fit_pool(config, None) is config  # unknown: as configured
    assert fit_pool(config, 0.5).actors.count == 1  # never none
    assert fit_pool(_config(count=4, num_cpus=0.5), 1.5).actors.count == 3


def test_exclusion_selector_names_the_nodes():
    assert exclusion_selector(set()) == {}
    assert exclusion_selector({"b", "a"}) == {NODE_ID_LABEL: "!in(a,b)"}


@pytest.mark.ray
def test_ray_keeps_work_off_an_excluded_node(ray_cluster):  # noqa: F811
    import ray
    from ray.data import DataContext

    node = ray.get_runtime_context().get_node_id()

    def one() -> int:
        return 1

    # Excluding a node no one has changes nothing; excluding the only node leaves the task
    # unplaced (Ray honours the selector, so a dead node that is still listed gets nothing).
    elsewhere = ray.remote(num_cpus=0, label_selector=exclusion_selector({FAKE_NODE}))(one)
    assert ray.get(elsewhere.remote(), timeout=60) == 1
    nowhere = ray.remote(num_cpus=0, label_selector=exclusion_selector({node}))(one).remote()
    ready, _ = ray.wait([nowhere], timeout=3)
    assert ready == []
    ray.cancel(nowhere, force=True)

    # Ray Data takes the selector from its context, and the context is restored after.
    before = DataContext.get_current().execution_options.label_selector
    with placement_excluding({FAKE_NODE}):
        assert DataContext.get_current().execution_options.label_selector == {
            NODE_ID_LABEL: f"!in({FAKE_NODE})"
        }
        assert ray.data.range(4).map_batches(lambda b: b).count() == 4
    assert DataContext.get_current().execution_options.label_selector == before

    # A live node is proven alive by a probe task at once (a worker died, not the node: no
    # wait, no exclusion); a node the GCS does not list alive is settled without a probe.
    alive, unsure, waited = await_marked_dead({node}, 60.0, poll_s=0.2)
    assert (alive, unsure) == ({node}, set()) and waited < 30
    assert await_marked_dead({FAKE_NODE}, 60.0)[:2] == (set(), set())
