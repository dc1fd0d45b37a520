"""Property-based fuzzing of config loading (hypothesis, bounded).

Properties: any bytes as a config file, and any YAML mapping of plausible sections, give a
config or the command's own error (`ConfigError`, `TrainConfigError`, `ServeConfigError`:
all `UserError`s, so the CLI prints one line and exits 2); no other exception escapes.
"""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgray.annotate.config import AnnotateConfig, ConfigError
from surgray.errors import UserError
from surgray.serving.config import ServeConfig, ServeConfigError
from surgray.train.config import TrainConfig, TrainConfigError

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
LOADERS = [
    (AnnotateConfig.from_yaml, ConfigError),
    (TrainConfig.from_yaml, TrainConfigError),
    (ServeConfig.from_yaml, ServeConfigError),
]

scalars = st.none() | st.booleans() | st.integers(-2, 10**6) | st.floats() | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
SECTIONS = ["inputs", "output", "model", "actors", "batching", "privacy", "data", "schedule",
            "sessions", "limits", "auth", "http", "prompts", "exports", "frames"]  # fmt: skip
mappings = st.dictionaries(st.sampled_from(SECTIONS), values, max_size=4)


def _load_each(path) -> None:
    for load, error in LOADERS:
        try:
            load(path)
        except error as exc:
            assert isinstance(exc, UserError) and str(exc)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_as_a_config_file(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(payload)
    _load_each(path)


@FUZZ
@given(mappings)
def test_any_mapping_of_sections(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    _load_each(path)
