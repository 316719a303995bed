"""Every component's params are typed: one matrix runs every registered task, strategy,
transform, partitioner and backend through the same checks."""

from __future__ import annotations

import inspect
import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from fedgen.config import load_config
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment
from fedgen.params import ParamsError, params_model, validate_params
from fedgen.registry import (
    ADVERSARIES,
    BACKENDS,
    PARTITIONERS,
    SAMPLERS,
    STRATEGIES,
    TASKS,
    TRANSFORMS,
    Registry,
)

#: kind -> (its registry, the dotted key of its params in a recipe, constructor arguments
#: the experiment builder passes itself, which are never recipe keys; None for tasks,
#: whose constructor takes the validated Params object itself).
KINDS: dict[str, tuple[Registry[type], str, dict[str, object] | None]] = {
    "task": (TASKS, "task.params", None),
    "strategy": (STRATEGIES, "strategy.params", {"root_seed": 0}),
    "sampler": (SAMPLERS, "strategy.params", {}),
    "adversary": (ADVERSARIES, "attack.params", {}),
    "transform": (TRANSFORMS, "transforms[0].params", {}),
    "partitioner": (PARTITIONERS, "data.partition.params", {}),
    "backend": (BACKENDS, "backend.params", {}),
}


def accepts_float(annotation: object) -> bool:
    """Whether a field's annotation is ``float`` or a union holding it."""
    if annotation is float:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return float in typing.get_args(annotation)
    return False


#: Params a component needs to be built (keys without a default, or needed together).
EXAMPLES: dict[tuple[str, str], dict[str, object]] = {
    ("transform", "clip"): {"max_norm": 1.0},
    ("transform", "client_dp"): {"noise_multiplier": 1.0},
    ("partitioner", "dirichlet"): {"alpha": 0.5},
    ("partitioner", "quantity"): {"alpha": 0.5},
    ("partitioner", "table_vertical"): {"columns": [["age"], ["educ"]]},
}

COMPONENTS = [(kind, name) for kind, (registry, _, _) in KINDS.items() for name in registry.names()]
#: The components built as ``cls(**params, **injected)``.
KEYWORD_BUILT = [(kind, name) for kind, name in COMPONENTS if KINDS[kind][2] is not None]


def declared_fields(kind: str, name: str) -> dict[str, typing.Any]:
    """``Params`` fields of a component (none if it declares no model: another test fails)."""
    model = getattr(KINDS[kind][0].get(name), "Params", None)
    return dict(model.model_fields) if isinstance(model, type) else {}


FIELDS = [(kind, name, field) for kind, name in COMPONENTS for field in declared_fields(kind, name)]
FLOAT_FIELDS = [
    (kind, name, field)
    for kind, name, field in FIELDS
    if accepts_float(declared_fields(kind, name)[field].annotation)
]


def component(kind: str, name: str) -> tuple[type, str, dict[str, object] | None]:
    registry, where, injected = KINDS[kind]
    return registry.get(name), where, injected


def test_every_kind_has_components():
    # Prepare / Execute: the matrix as collected. Assert: nothing silently missing.
    assert {kind for kind, _ in COMPONENTS} == set(KINDS)
    assert ("strategy", "fedavg") in COMPONENTS and ("transform", "secagg") in COMPONENTS
    assert ("partitioner", "class_drop") in COMPONENTS and ("backend", "split") in COMPONENTS
    assert ("task", "cgan") in COMPONENTS


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_params_are_a_strict_model_declared_on_the_class(kind, name):
    cls, _, _ = component(kind, name)
    model = params_model(cls)
    assert issubclass(model, BaseModel)
    assert model.model_config.get("extra") == "forbid"


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_defaults_validate_and_a_missing_key_is_named(kind, name):
    # Prepare
    cls, where, _ = component(kind, name)
    required = [f for f, info in params_model(cls).model_fields.items() if info.is_required()]
    # Execute / Assert: no params at all is valid unless a key has no default ...
    if not required:
        assert validate_params(cls, {}, where) == params_model(cls)()
        return
    with pytest.raises(ParamsError) as info:
        validate_params(cls, {}, where)
    # ... and then each such key is named.
    assert len(info.value.problems) == len(required)
    for field, line in zip(required, info.value.problems, strict=True):
        assert line.startswith(f"{where}.{field}: missing")


@pytest.mark.parametrize(("kind", "name"), KEYWORD_BUILT)
def test_params_match_the_constructor_and_build_it(kind, name):
    # Prepare
    cls, where, injected = component(kind, name)
    assert injected is not None
    model = params_model(cls)
    signature = inspect.signature(cls)
    # Assert: the constructor takes exactly the recipe keys plus what the builder injects,
    # with the same defaults, so direct Python calls and recipes agree.
    assert set(signature.parameters) == set(model.model_fields) | set(injected)
    assert not set(injected) & set(model.model_fields)
    for field, info in model.model_fields.items():
        default = signature.parameters[field].default
        if info.is_required():
            assert default is inspect.Parameter.empty, field
        else:
            assert default == info.default, field
    # Execute: the builder's path (validate, then keywords) builds the component.
    params = validate_params(cls, EXAMPLES.get((kind, name), {}), where)
    assert isinstance(cls(**dict(params), **injected), cls)


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_an_unknown_key_is_refused_naming_it_and_the_allowed_keys(kind, name):
    cls, where, _ = component(kind, name)
    with pytest.raises(ParamsError) as info:
        validate_params(cls, {**EXAMPLES.get((kind, name), {}), "frction": 0.5}, where)
    [line] = info.value.problems
    assert line.startswith(f"unknown key '{where}.frction'; allowed keys here: ")
    allowed = line.split("allowed keys here: ")[1]
    assert allowed.split(", ") == (list(params_model(cls).model_fields) or ["(none)"])


@pytest.mark.parametrize(("kind", "name", "field"), FIELDS)
def test_a_wrong_type_is_refused_naming_the_key_the_value_and_the_type(kind, name, field):
    # Prepare: a mapping of words is of no field's type (numbers, strings, flags,
    # choices, lists, tuples, mappings of integers).
    cls, where, _ = component(kind, name)
    wrong = {"many": "abc"}
    # Execute
    with pytest.raises(ParamsError) as info:
        validate_params(cls, {**EXAMPLES.get((kind, name), {}), field: wrong}, where)
    # Assert
    [line] = info.value.problems
    assert line.startswith(f"{where}.{field}: ")
    assert f"got {wrong!r}; expected " in line


@pytest.mark.parametrize(("kind", "name", "field"), FLOAT_FIELDS)
def test_a_number_read_as_a_string_is_a_number_and_a_word_is_not(kind, name, field):
    # YAML reads 1e-1 (no dot) as the string "1e-1".
    cls, where, _ = component(kind, name)
    example = EXAMPLES.get((kind, name), {})
    assert getattr(validate_params(cls, {**example, field: "1e-1"}, where), field) == 0.1
    with pytest.raises(ConfigError, match=rf"{re.escape(where)}\.{field}: .*got 'abc'; exp"):
        validate_params(cls, {**example, field: "abc"}, where)


def test_constraints_are_named_with_the_value():
    with pytest.raises(ParamsError) as info:
        validate_params(STRATEGIES.get("fedavg"), {"fraction": 0, "min_clients": 0}, "s.params")
    assert info.value.problems == [
        "s.params.fraction: Input should be greater than 0 (got 0; expected float)",
        "s.params.min_clients: Input should be greater than or equal to 1 (got 0; expected int)",
    ]


def test_a_union_is_one_line_and_keeps_integers_integers():
    cls = TRANSFORMS.get("secagg")
    # An integer threshold is a count of shares, a float a fraction: lax mode keeps them.
    assert validate_params(cls, {"threshold": 5}, "t").threshold == 5
    assert validate_params(cls, {"threshold": "5"}, "t").threshold == 5
    with pytest.raises(ParamsError) as info:
        validate_params(cls, {"threshold": "most"}, "t")
    [line] = info.value.problems
    assert line.startswith("t.threshold: Input should be a valid integer")
    assert line.endswith("(got 'most'; expected int | float)")


def test_params_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"backend\.params must be a mapping"):
        validate_params(BACKENDS.get("inprocess"), [1, 2], "backend.params")


def test_an_injected_argument_is_not_a_recipe_key():
    with pytest.raises(ConfigError, match=r"unknown key 'strategy.params.root_seed'"):
        validate_params(STRATEGIES.get("fedavg"), {"root_seed": 3}, "strategy.params")


# -- the experiment builder ------------------------------------------------------


def raw_config(data_dir: Path, *items: str):
    """The tiny federation's config without the recipe-level key check (``load_config``'s),
    so that every params problem reaches the builder."""
    base = [
        "data.sources=[mnist]",
        f"data.data_dir={data_dir}",
        "data.num_clients=4",
        "data.partition.kind=iid",
        "data.partition.params={}",
        "task.params={batch_size: 16, generator_width: 8, discriminator_width: 8}",
        "federation.rounds=1",
        "backend.name=inprocess",
    ]
    return load_config(None, [*base, *items], validate_components=False)


def test_bad_params_of_several_components_are_reported_together(mnist_dir):
    # Prepare: a mistyped strategy param, transform param and backend key.
    cfg = raw_config(
        mnist_dir,
        "strategy.params={server_lr: abc, min_clients: 2}",
        "transforms=[{name: clip, params: {max_norm: big}}]",
        "backend.params={workers: 2}",
    )
    # Execute
    with pytest.raises(ConfigError) as info:
        build_experiment(cfg)
    # Assert: one error, one line per problem, each naming its key.
    text = str(info.value)
    assert "strategy.params.server_lr: " in text and "got 'abc'; expected float" in text
    assert "transforms[0].params.max_norm: " in text and "got 'big'; expected float" in text
    assert "unknown key 'backend.params.workers'; allowed keys here: (none)" in text


def test_a_numeric_string_reaches_the_strategy_as_a_number(mnist_dir):
    # A recipe may hold a number as text (quoted, or read by a YAML 1.1 reader).
    cfg = raw_config(mnist_dir, "strategy.params={server_lr: '1e-1', min_clients: 2}")
    assert cfg.strategy.params["server_lr"] == "1e-1"
    strategy = build_experiment(cfg).federation.strategy
    assert strategy.server_lr == 0.1


def test_bad_partitioner_or_task_params_fail_before_any_data_is_loaded(tmp_path):
    # Prepare: no data where the config points, so loading it would fail differently.
    cfg = raw_config(
        tmp_path / "no-data",
        "data.partition.kind=dirichlet",
        "data.partition.params={alpha: -1}",
        "task.params.lr=fast",
        "strategy.params.fraction=2",
    )
    # Execute
    with pytest.raises(ParamsError) as info:
        build_experiment(cfg)
    # Assert: every params problem, and no data error.
    assert info.value.problems == [
        "data.partition.params.alpha: Input should be greater than 0 (got -1; expected float)",
        "task.params.lr: Input should be a valid number, unable to parse string as a number "
        "(got 'fast'; expected float)",
        "strategy.params.fraction: Input should be less than or equal to 1 (got 2; expected float)",
    ]
