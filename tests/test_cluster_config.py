"""cluster.yaml passes the Ray cluster launcher's own schema (what `ray up` checks first)."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_a_valid_launcher_config():
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    util.validate_config(util.prepare_config(config))
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    assert any("pip install" in cmd and ".[all]" in cmd for cmd in config["setup_commands"])


def test_cluster_yaml_missing_field_is_rejected():
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    del config["provider"]
    with pytest.raises(Exception, match="provider"):
        util.validate_config(util.prepare_config(config))
