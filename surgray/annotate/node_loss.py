"""After a lost actor: keep the fresh pool of the re-run off the node that was lost.

When a worker node dies, the driver may hear of its lost actor before the GCS has marked the
node dead: the GCS decides that by health checks of the node's raylet, and a node counts as
dead only after `health_check_failure_threshold` checks in a row failed, one every
`health_check_period_ms`, each allowed `health_check_timeout_ms` (Ray's system config, set
with `RAY_health_check_*` environment variables on the head node; 5 x 3 s, 10 s by default).
Until then the scheduler still places actors on it, and a fresh pool started at once could
put an actor there and lose it again (seen once: it cost one of the job's `LOSS_ATTEMPTS`).

So before the re-run the driver
1. finds the nodes it lost actors on: the actor id in Ray's error (and in its causes), looked
   up in the GCS actor table, gives the node the actor was placed on;
2. waits, at most `health_check_window_s()`, until each of those nodes is either listed dead
   by the GCS or proven alive: a task that needs no CPU, pinned to the node
   (`NodeAffinitySchedulingStrategy(soft=False)`), returned from it. A worker that died on a
   live node (a crash, the OOM killer) is proven alive in a second or two and costs no wait;
3. excludes the nodes still unsure after that from the re-run's placement, by a label
   selector on Ray's built-in `ray.io/node-id` label (`DataContext.execution_options.
   label_selector`, which Ray Data merges into every operator's remote args, actor pool
   included), so a node that is only slow to be declared dead gets no new actor; never all
   the nodes with CPUs, which would leave the re-run nowhere to go;
4. sizes the fresh pool to the nodes left (`fit_pool`): actors that do not fit would wait
   for CPUs that are gone.

Everything here only reads cluster state; none of it raises (a lookup that fails finds no
node, and the re-run starts as before).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from surgray.annotate.config import AnnotateConfig
from surgray.annotate.logsafe import logger

NODE_ID_LABEL = "ray.io/node-id"  # every Ray node carries its id as this label
POLL_S = 0.5
# Ray's defaults for the GCS's health checks of a node (ray/_private/ray_config_def.h)
HEALTH_CHECK_DEFAULTS_MS = {"period": 3000, "timeout": 10000, "failure_threshold": 5}
MARGIN_S = 5.0  # the GCS publishes the death after its last failed check


def health_check_window_s(environ: Mapping[str, str] | None = None) -> float:
    """How long the GCS may take to mark a dead node dead: `failure_threshold` checks one
    `period` apart, the last allowed its `timeout`, plus a margin. Read from the same
    `RAY_health_check_*` variables Ray reads (meaningful when the driver runs with the head's
    environment, as under `ray job submit`), else Ray's defaults: 3 s x 5 + 10 s + 5 s = 30 s."""
    environ = os.environ if environ is None else environ

    def value(name: str) -> float:
        raw = environ.get(
            f"RAY_health_check_{name}" + ("_ms" if name != "failure_threshold" else "")
        )
        try:
            return float(raw) if raw else float(HEALTH_CHECK_DEFAULTS_MS[name])
        except ValueError:
            return float(HEALTH_CHECK_DEFAULTS_MS[name])

    period_s, timeout_s = value("period") / 1000, value("timeout") / 1000
    return value("failure_threshold") * period_s + timeout_s + MARGIN_S


def _errors_in(exc: BaseException | None) -> Iterator[BaseException]:
    """The error and its causes (Ray Data may wrap the actor's error), each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def lost_actor_ids(exc: BaseException) -> list[str]:
    ids = []
    for error in _errors_in(exc):
        actor_id = getattr(error, "actor_id", None)
        if isinstance(actor_id, str) and actor_id and actor_id not in ids:
            ids.append(actor_id)
    return ids


def lost_nodes(exc: BaseException) -> set[str]:
    """Node ids (hex) of the actors the error says were lost, from the GCS actor table."""
    import ray

    nodes = set()
    for actor_id in lost_actor_ids(exc):
        try:
            info: Any = ray._private.state.actors(actor_id=actor_id)
        except Exception as exc_lookup:  # a lookup that fails finds nothing, never raises
            logger.debug("actor %s not looked up: %s", actor_id, type(exc_lookup).__name__)
            continue
        node = ((info or {}).get("Address") or {}).get("NodeID")
        if node and set(node) != {"f"}:  # not the nil id of an actor never placed
            nodes.add(node)
    return nodes


def alive_nodes() -> set[str]:
    """Node ids the GCS lists as alive now."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def _probe(node: str) -> Any:
    """A task that needs no CPU, on `node` only: it returns when the node's raylet runs it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def here() -> bool:
        return True

    strategy = NodeAffinitySchedulingStrategy(node, soft=False)
    return (
        ray.remote(here).options(num_cpus=0, max_retries=0, scheduling_strategy=strategy).remote()
    )


def _answered(refs: Mapping[str, Any]) -> set[str]:
    """The nodes whose probe has returned (a probe that failed proves nothing)."""
    import ray

    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=0)
    answered = set()
    for node, ref in refs.items():
        if ref in ready:
            try:
                if ray.get(ref, timeout=1):
                    answered.add(node)
            except Exception:
                pass
    return answered


def await_marked_dead(
    nodes: set[str], timeout_s: float, *, poll_s: float = POLL_S
) -> tuple[set[str], set[str], float]:
    """Wait until each of `nodes` is listed dead by the GCS or proven alive by a probe, at
    most `timeout_s`; returns (the nodes proven alive, those still unsure, seconds waited)."""
    import ray

    start = time.monotonic()
    unsure, alive = set(nodes), set()
    probes: dict[str, Any] = {}
    try:
        while unsure:
            unsure &= alive_nodes()  # the ones listed dead are settled
            for node in unsure - set(probes):
                probes[node] = _probe(node)
            answered = _answered({n: probes[n] for n in unsure}) if unsure else set()
            alive |= answered
            unsure -= answered
            if not unsure or time.monotonic() - start >= timeout_s:
                break
            time.sleep(poll_s)
    except Exception as exc:  # the GCS not answering: nothing more to learn
        logger.debug("node liveness not read: %s", type(exc).__name__)
    finally:
        for ref in probes.values():
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
    return alive, unsure, time.monotonic() - start


def exclusion_selector(nodes: set[str]) -> dict[str, str]:
    """A label selector that keeps tasks and actors off `nodes` (empty: no constraint)."""
    if not nodes:
        return {}
    return {NODE_ID_LABEL: "!in(" + ",".join(sorted(nodes)) + ")"}


@contextmanager
def placement_excluding(nodes: set[str]) -> Iterator[None]:
    """Within the block, Ray Data places no task or actor on `nodes` (restored after)."""
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    before = options.label_selector
    if nodes:
        options.label_selector = {**(before or {}), **exclusion_selector(nodes)}
    try:
        yield
    finally:
        options.label_selector = before


@dataclass(frozen=True)
class LossVerdict:
    """What the driver learnt of the nodes it lost actors on."""

    lost: frozenset[str]  # nodes of the lost actors
    alive: frozenset[str]  # proven alive (a worker died, not its node)
    unsure: frozenset[str]  # neither listed dead nor proven alive within the wait
    waited_s: float

    @property
    def dead(self) -> frozenset[str]:
        return self.lost - self.alive - self.unsure

    @property
    def exclude(self) -> set[str]:
        """The unsure nodes to keep the re-run off, unless they are all the CPUs left."""
        if not self.unsure:
            return set()
        left = cpus_left(set(self.unsure))
        return set(self.unsure) if left is None or left > 0 else set()


def settle_after_loss(exc: BaseException, timeout_s: float | None = None) -> LossVerdict:
    """Find the nodes `exc` lost actors on and wait (bounded) until each is listed dead or
    proven alive (see the module docstring)."""
    lost = lost_nodes(exc)
    if not lost:
        return LossVerdict(frozenset(), frozenset(), frozenset(), 0.0)
    window = health_check_window_s() if timeout_s is None else timeout_s
    alive, unsure, waited = await_marked_dead(lost, window)
    return LossVerdict(frozenset(lost), frozenset(alive), frozenset(unsure), waited)


def cpus_left(excluded: set[str]) -> float | None:
    """CPUs of the nodes the GCS lists alive, less `excluded`; None if unknown."""
    import ray

    try:
        nodes = ray.nodes()
    except Exception:
        return None
    return sum(
        float((n.get("Resources") or {}).get("CPU", 0.0))
        for n in nodes
        if n.get("Alive") and n["NodeID"] not in excluded
    )


def fit_pool(config: AnnotateConfig, cpus: float | None) -> AnnotateConfig:
    """`config` with at most as many actors as `cpus` hold (at least one actor; unchanged
    when the CPUs are unknown or the actors ask for none). The rest of the pipeline asks for
    no CPU (`surgray.annotate.pipeline`)."""
    need = config.actors.num_cpus
    if cpus is None or need <= 0:
        return config
    fits = max(1, int(cpus // need))
    if fits >= config.actors.count:
        return config
    actors = config.actors.model_copy(update={"count": fits})
    return config.model_copy(update={"actors": actors})
