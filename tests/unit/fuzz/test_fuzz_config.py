"""Fuzzing the config boundary: recipes, raw mappings and ``--set`` overrides.

Whatever comes in, ``load_config``/``parse_config`` return a config that can be
written back and read again, or raise ``ConfigError`` naming the key at fault.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from strategies import config_keys, fuzz, mutated_config, nested, only_raises, yaml_like

from fedgen.config import (
    ExperimentConfig,
    apply_override,
    load_config,
    parse_config,
    read_yaml,
)
from fedgen.errors import ConfigError
from fedgen.registry import PARTITIONERS, SOURCES, STRATEGIES, TASKS, TRANSFORMS

B = "config"
KEYS = config_keys()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recipes")


def write(folder: Path, data: str | bytes) -> Path:
    path = folder / f"{uuid.uuid4().hex}.yaml"
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8", errors="surrogatepass")
    return path


def assert_round_trips(cfg: ExperimentConfig) -> None:
    """A valid config is written to the run folder and read back on resume: both must work."""
    for read in (yaml.safe_load, lambda text: read_yaml(text, "config.yaml")):
        again = parse_config(read(cfg.to_yaml()))
        assert again == cfg
        assert again.fingerprint() == cfg.fingerprint()


def names_a_key(message: str, raw: Any) -> bool:
    if not isinstance(raw, dict) or not raw:
        return "config" in message or (isinstance(raw, list) and "0" in message)
    return any(str(k) in message or repr(k) in message for k in raw)


# -- recipes ---------------------------------------------------------------------------


@given(text=st.one_of(yaml_like(), st.text(max_size=200)))
@example(text="[" * 5000)
@example(text="a: &a [*a, *a]\nb: *a")
@example(text="task: {params: &p {x: [*p]}}")
@example(text="seed: !!python/object/apply:os.system ['true']")
@example(text="federation: {rounds: 1e1}")
@fuzz(B, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_recipe_text_loads_or_names_the_problem(folder: Path, text: str) -> None:
    path = write(folder, text)
    with only_raises(B, ConfigError) as err:
        cfg = load_config(path, validate_components=False)
    if not err:
        assert_round_trips(cfg)
    else:
        assert str(path) in str(err[0]) or str(err[0]).startswith("invalid config")


@given(data=st.binary(max_size=200))
@example(data=b"\xff\xfe\x00seed: 1")
@example(data=b"seed: 1\n\x80\x81")
@fuzz(B, max_examples=100)
def test_any_recipe_bytes_load_or_name_the_problem(folder: Path, data: bytes) -> None:
    path = write(folder, data)
    with only_raises(B, ConfigError) as err:
        cfg = load_config(path, validate_components=False)
    if not err:
        assert_round_trips(cfg)


@given(raw=st.one_of(mutated_config(), nested(st.sampled_from([*KEYS, "x", 1, None]))))
@example(raw={"federation": {"local_epochs": math.inf, "local_steps": None}})
@example(raw={"task": {"params": {"lr": math.nan}}})
@example(raw={1: 2})
@example(raw={"name": "1e5", "task": {"params": {"day": "2024-05-01", "big": 2**64}}})
@example(raw={"name": "1e5", "task": {"params": {"day": "2024-05-01", "lr": "1.0e-3"}}})
@example(raw=[1, 2])
@fuzz(B, max_examples=300)
def test_any_mapping_parses_or_names_the_key(raw: Any) -> None:
    with only_raises(B, ConfigError) as err:
        cfg = parse_config(raw)
    if err:
        assert names_a_key(str(err[0]), raw), str(err[0])
    else:
        assert_round_trips(cfg)


@given(raw=mutated_config())
@fuzz(B, max_examples=150)
def test_any_mapping_through_yaml_loads_or_names_the_key(folder: Path, raw: Any) -> None:
    path = write(folder, yaml.safe_dump(raw))
    with only_raises(B, ConfigError) as err:
        cfg = load_config(path, validate_components=False)
    if err:
        assert names_a_key(str(err[0]), raw), str(err[0])
    else:
        assert_round_trips(cfg)


# -- overrides -------------------------------------------------------------------------

override_keys = st.one_of(
    st.sampled_from(KEYS),
    st.lists(
        st.one_of(st.sampled_from([k.rsplit(".", 1)[-1] for k in KEYS]), st.text(max_size=5)),
        min_size=1,
        max_size=4,
    ).map(".".join),
    st.sampled_from(["transforms.0.name", "transforms.9.params.x", "data.sources.0"]),
)


@given(
    items=st.lists(
        st.one_of(
            st.tuples(override_keys, st.one_of(yaml_like(), st.text(max_size=30))).map("=".join),
            st.text(max_size=30),
        ),
        min_size=1,
        max_size=3,
    ),
    recipe=st.sampled_from([None, "configs/mnist_cgan_dp_secagg.yaml", "configs/mnist_cvae.yaml"]),
)
@example(items=["name=" + "[" * 3000], recipe=None)
@example(items=["task.params=" + "{a: " * 600 + "1" + "}" * 600], recipe=None)
@example(items=["seed={[1]: 2}"], recipe=None)
@example(items=["eval.every=\x00"], recipe=None)
@example(items=["seed=!!python/name:os.system"], recipe=None)
@example(items=["a..b=1"], recipe=None)
@example(items=["transforms.0.params.max_norm=2"], recipe="configs/mnist_cgan_dp_secagg.yaml")
@fuzz(B, max_examples=300)
def test_any_override_applies_or_names_the_key(items: list[str], recipe: str | None) -> None:
    with only_raises(B, ConfigError) as err:
        cfg = load_config(recipe, items, validate_components=False)
    if not err:
        assert_round_trips(cfg)
        return
    message = str(err[0])
    keys = [item.partition("=")[0] for item in items]
    # The key itself, or the section of it that is at fault ('federation.rounds' for
    # 'federation.rounds.x'), as written or as repr shows it (control characters).
    prefixes = [".".join(k.split(".")[:i]) for k in keys for i in range(1, k.count(".") + 2)]
    assert any(p in message or repr(p) in message for p in prefixes) or any(
        repr(item) in message for item in items
    ), message


@given(x=st.floats(min_value=1e-300, max_value=1e300))
@fuzz(B, max_examples=150)
def test_exponent_numbers_in_overrides_are_floats(x: float) -> None:
    for text in (f"{x:e}", f"{x:E}", f"{x:.3e}".replace("e+", "e"), repr(x)):
        raw: dict[str, Any] = {}
        apply_override(raw, f"strategy.params.lr={text}")
        value = raw["strategy"]["params"]["lr"]
        assert isinstance(value, float) and value == float(text), (text, value)
        cfg = load_config(None, [f"federation.max_update_norm={text}"], validate_components=False)
        assert cfg.federation.max_update_norm == float(text)


def test_overrides_parse_scalars_as_documented() -> None:
    raw: dict[str, Any] = {}
    for item in (
        "a.int=7",
        "a.exp=1e-1",
        "a.neg=-2.5E+3",
        "a.dot=1.",
        "a.text='1e-1'",
        "a.hex=0x10",
    ):
        apply_override(raw, item)
    assert raw["a"] == {"int": 7, "exp": 0.1, "neg": -2500.0, "dot": 1.0, "text": "1e-1", "hex": 16}
    cfg = load_config(
        None, ["transforms=[{name: clip}]", "transforms.0.params.max_norm=1e-1"], False
    )
    assert cfg.transforms[0].params == {"max_norm": 0.1}
    with pytest.raises(ConfigError, match=r"transforms\.3 is not an item of the 1-item list"):
        load_config(None, ["transforms=[{name: clip}]", "transforms.3.x=1"], False)
    with pytest.raises(ConfigError, match=r"transforms: Input should be a valid list"):
        load_config(None, ["transforms.3.params.max_norm=1"], validate_components=False)


# -- components ------------------------------------------------------------------------


@given(
    names=st.fixed_dictionaries(
        {
            "task.name": st.sampled_from([*TASKS.names(), "nope"]),
            "strategy.name": st.sampled_from([*STRATEGIES.names(), "nope"]),
            "data.partition.kind": st.sampled_from([*PARTITIONERS.names(), "nope"]),
            "data.sources": st.lists(st.sampled_from([*SOURCES.names(), "nope"]), max_size=2),
            "transforms": st.lists(
                st.sampled_from(TRANSFORMS.names()).map(lambda n: {"name": n}), max_size=2
            ),
        }
    ),
    params=st.dictionaries(
        st.sampled_from(["task", "strategy", "data.partition", "backend"]),
        st.dictionaries(
            st.sampled_from(["alpha", "fraction", "lr", "latent_dim", "widht", "ema_decay"]),
            nested(),
            max_size=3,
        ),
        max_size=3,
    ),
)
@fuzz(B, max_examples=150)
def test_any_component_params_validate_or_name_the_key(
    names: dict[str, Any], params: dict[str, dict[str, Any]]
) -> None:
    items = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in names.items()]
    items += [
        f"{section}.params={yaml.safe_dump(p, default_flow_style=True).strip()}"
        for section, p in params.items()
    ]
    with only_raises(B, ConfigError) as err:
        load_config(None, items, validate_components=True)
    if err:
        assert "invalid config" in str(err[0])
