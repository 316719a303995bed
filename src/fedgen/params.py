"""Typed component parameters, and errors that name the dotted key.

Every registered component (task, strategy, transform, partitioner, backend)
declares a pydantic ``Params`` model with ``extra="forbid"`` beside its
constructor. ``validate_params`` checks a recipe's ``params`` mapping against
it in pydantic's lax mode: the string ``"1e-1"`` (YAML reads ``1e-1``, without a
dot, as a string) becomes 0.1 while ``"abc"`` is refused. Each problem names
its dotted key: an unknown key lists the keys allowed there; a wrong value
gives the value and the expected type. ``explain`` formats any pydantic
``ValidationError`` this way (the experiment config uses it too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from fedgen.errors import ConfigError


class ParamsError(ConfigError):
    """Parameters are invalid; ``problems`` holds one line per key, each naming it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid config:\n  " + "\n  ".join(self.problems))


def params_model(cls: type) -> type[BaseModel]:
    """The ``Params`` model that component class ``cls`` declares.

    Raises:
        TypeError: ``cls`` declares none (a bug in the component, not in a recipe).
    """
    model = getattr(cls, "Params", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(
            f"{cls.__qualname__} declares no pydantic Params model; add "
            "`class Params(BaseModel)` with extra='forbid' beside its constructor"
        )
    return model


def validate_params(cls: type, params: Mapping[str, Any], where: str) -> BaseModel:
    """``params`` validated by ``cls.Params``.

    Args:
        cls: a component class declaring ``Params``.
        params: the recipe's mapping (e.g. ``cfg.strategy.params``).
        where: the dotted key holding ``params`` (e.g. ``"strategy.params"``); every
            message starts with it.

    Raises:
        ParamsError: a ``ConfigError`` listing every unknown key and wrong value.
    """
    model = params_model(cls)
    if not isinstance(params, Mapping):
        raise ParamsError([f"{where} must be a mapping of keys, got {params!r}"])
    data = dict(params)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(explain(exc, model, prefix=f"{where}.", data=data)) from None


def explain(
    exc: ValidationError, root: type[BaseModel], prefix: str = "", data: Any = None
) -> list[str]:
    """One line per invalid key of ``exc`` (raised validating ``root``), naming the key.

    ``prefix`` is prepended to every dotted key. Errors of one key (pydantic reports
    one per member of a union, or per bad item of a mapping) are merged into one
    line, which shows the key's whole value when ``data`` (what was validated) is given.
    """
    lines: list[str] = []
    merged: dict[str, tuple[list[str], Any, Any]] = {}
    for err in exc.errors():
        path, model, field_type = _locate(root, err["loc"])
        got = _value_at(data, path, default=err.get("input"))
        key = prefix + ".".join(path)
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields if model is not None else ()) or "(none)"
            lines.append(f"unknown key {key!r}; allowed keys here: {allowed}")
        elif err["type"] == "missing":
            lines.append(f"{key}: missing; give a value of type {_type_name(field_type)}")
        else:
            messages, _, _ = merged.setdefault(key, ([], got, field_type))
            if err["msg"] not in messages:
                messages.append(err["msg"])
    for key, (messages, got, field_type) in merged.items():
        expected = "" if field_type is None else f"; expected {_type_name(field_type)}"
        lines.append(f"{key or 'config'}: {'; '.join(messages)} (got {got!r}{expected})")
    return lines


def _locate(
    root: type[BaseModel], loc: Sequence[int | str]
) -> tuple[list[str], type[BaseModel] | None, Any]:
    """The dotted path an error location names, the model holding its last key, and
    that key's annotation (None when the key is unknown).

    Inside a field that is not a model, list indices are kept up to the first other
    part: a union member's tag (``int``, ``float``) or a mapping's key, which the
    line names through the value and the expected type instead.
    """
    path: list[str] = []
    model: type[BaseModel] | None = root
    holder: type[BaseModel] | None = root
    annotation: Any = None
    tagged = False
    for part in loc:
        name = str(part)
        index = isinstance(part, int) or name.isdigit()
        if model is None:
            tagged = tagged or not index
            if not tagged:
                path.append(name)
            continue
        path.append(name)
        if index:
            continue
        field = model.model_fields.get(name)
        holder = model
        if field is None:
            return path, holder, None
        annotation = field.annotation
        model = _model_in(annotation)
    return path, holder, annotation


def _value_at(data: Any, path: list[str], default: Any) -> Any:
    """The value at dotted ``path`` in nested mappings and lists, or ``default``."""
    if data is None:
        return default
    for part in path:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return default
    return data


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation holds (itself, or inside ``X | None``, ``list[X]``)."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_name(annotation: Any) -> str:
    """``float``, ``int | None``, ``Literal['fixed', 'poisson']``: as a recipe author reads it."""
    if isinstance(annotation, type) and not getattr(annotation, "__args__", ()):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")
