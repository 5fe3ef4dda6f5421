"""A settings model (``training.settings``) as a flow's parameters, as command-line arguments and as docs.

``takes(Model)`` gives a flow function the model's fields as its signature, so Prefect's run form, its
validation and `prefect deploy`'s parameter schema all come from the model; the function receives the
validated model. ``parse_args`` reads ``key=value`` pairs forgivingly (make's shell eats quotes);
``help_text`` and ``markdown_table`` describe every setting from the same fields.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import re
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from training.errors import ConfigError
from training.settings import Settings


def signature(model: type[BaseModel], returns: Any = inspect.Signature.empty) -> inspect.Signature:
    """Keyword-only parameters, one per field: its type and bounds, and its default."""
    parameters = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=field.get_default(call_default_factory=True),
            annotation=field.rebuild_annotation(),
        )
        for name, field in model.model_fields.items()
    ]
    return inspect.Signature(parameters, return_annotation=returns)


def docstring(model: type[BaseModel], summary: str) -> str:
    """``summary`` with a Google-style ``Args:`` section: Prefect reads the parameters' descriptions there."""
    args = "".join(f"\n    {name}: {field.description}" for name, field in model.model_fields.items())
    return f"{inspect.cleandoc(summary)}\n\nArgs:{args}\n"


def takes(model: type[Settings]) -> Callable[[Callable], Callable]:
    """Decorate ``fn(settings)``: callers (Prefect included) pass the model's fields as keyword arguments.

    Cross-field rules (``model_validator``) run when the model is built, inside the flow run, and fail it
    with a ``ConfigError`` naming the setting.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(**params: Any) -> Any:
            return fn(model.parse(params))

        del wrapper.__wrapped__  # inspect.signature must stop here, at the model's fields
        wrapper.__signature__ = signature(model, inspect.signature(fn, eval_str=True).return_annotation)
        wrapper.__doc__ = docstring(model, fn.__doc__ or "")
        return wrapper

    return decorate


def _readings(raw: str) -> list[Any]:
    """What ``raw`` may mean: JSON, YAML (a space put after each colon, then as is), a list, the text."""
    readings: list[Any] = []
    spaced = re.sub(r":(?=\S)", ": ", raw)  # {"momentum":0.9} arrives as {momentum:0.9}
    for loads, text in ((json.loads, raw), (yaml.safe_load, spaced), (yaml.safe_load, raw)):
        with contextlib.suppress(ValueError, yaml.YAMLError):
            readings.append(loads(text))
    return [*readings, [p.strip().strip("'\"") for p in raw.strip("[] ").split(",") if p.strip()], raw]


def parse_value(field: FieldInfo, raw: str) -> Any:
    """Read one command-line value for ``field``: the first reading of it that the field accepts.

    Forgiving because make's shell removes quotes: ``variants=["optimizer"]`` arrives as
    ``variants=[optimizer]`` (YAML reads it), ``optimizer_options={"momentum":0.9}`` as ``{momentum:0.9}``;
    a list may also be written ``a,b``. A value no reading fits is passed on for the model to refuse.
    """
    accepts = TypeAdapter(field.rebuild_annotation())
    readings = _readings(raw)
    for value in readings:
        try:
            accepts.validate_python(value, strict=not isinstance(value, str))
            return value
        except ValidationError:
            continue
    return readings[0]


def parse_args(model: type[BaseModel], pairs: list[str]) -> dict[str, Any]:
    """Turn ``["epochs=100", "variants=optimizer,manual"]`` into parameters for ``model``'s fields.

    Raises:
        ConfigError: for a pair without ``=`` or an unknown name (listing the known ones).
    """
    fields = model.model_fields
    params = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {pair!r}")
        if key not in fields:
            raise ConfigError(f"unknown parameter {key!r}; the parameters are: {', '.join(fields)}")
        params[key] = parse_value(fields[key], raw)
    return params


def _described(model: type[BaseModel]) -> list[tuple[str, str, str]]:
    """``(name, default as JSON, description)`` of every field."""
    return [
        (
            name,
            json.dumps(to_jsonable_python(field.get_default(call_default_factory=True))),
            field.description,
        )
        for name, field in model.model_fields.items()
    ]


def help_text(model: type[BaseModel]) -> str:
    """Every parameter with its default and description, for ``--help``."""
    return "\n".join(f"  {name}={default}\n      {meaning}" for name, default, meaning in _described(model))


def markdown_table(model: type[BaseModel]) -> str:
    """The README's table of parameters: name, default, meaning."""
    rows = [f"| `{name}` | `{default}` | {meaning} |" for name, default, meaning in _described(model)]
    return "\n".join(["| parameter | default | meaning |", "|---|---|---|", *rows])
