"""Model registry: one name per builder, so training code picks a model by name, not by if/elif.

A builder is a function `builder(input_size: int, channels: int, num_classes: int, **kwargs)`
returning a `keras.Model`. Register it with one line:

    @register("sknet")
    def build_sknet(input_size, channels, num_classes, *, bn_momentum=0.9): ...

Builders register when their module is imported; `import models` imports them all. A builder
registered with `inputs="strokes"` takes (dx, dy, pen) sequences instead of images
(data_prep.stroke_sequences); `input_kind(name)` tells the training tasks which pipeline to read.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras

if TYPE_CHECKING:
    from configuration_sketch import ModelConfig

Builder = Callable[..., keras.Model]

_BUILDERS: dict[str, Builder] = {}
_INPUTS: dict[str, str] = {}
INPUT_KINDS = ("images", "strokes")


def register(name: str, inputs: str = "images") -> Callable[[Builder], Builder]:
    """Decorator registering `builder` under `name`, reading `inputs` (INPUT_KINDS); a name already
    taken is an error."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"Invalid value for argument `name`. Received: {name!r}. Expected a non-empty string.")
    if inputs not in INPUT_KINDS:
        raise ValueError(f"Invalid value for argument `inputs`. Received: {inputs!r}. Expected one of {INPUT_KINDS}.")

    def decorator(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(
                f"Model name {name!r} is already registered (by {_BUILDERS[name].__module__}."
                f"{_BUILDERS[name].__qualname__}); pick another name for {builder.__qualname__}."
            )
        _BUILDERS[name] = builder
        _INPUTS[name] = inputs
        return builder

    return decorator


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_BUILDERS)


def get_builder(name: str) -> Builder:
    """The builder registered under `name`; ValueError listing the valid names otherwise."""
    try:
        return _BUILDERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown model {name!r}. Valid: {', '.join(model_names())}.") from None


def input_kind(name: str) -> str:
    """What the model registered under `name` reads: 'images' or 'strokes' (ValueError if unknown)."""
    get_builder(name)
    return _INPUTS[name]


def build_model(name: str, *, input_size: int, channels: int, num_classes: int, **kwargs: Any) -> keras.Model:
    """Build the model registered under `name` for square `input_size` images with `channels` channels."""
    return get_builder(name)(input_size=input_size, channels=channels, num_classes=num_classes, **kwargs)


def build_from_config(config: ModelConfig, num_classes: int, **kwargs: Any) -> keras.Model:
    """Build `config.model` from a ModelConfig; a negative `config.dropout` keeps the model's own default."""
    if config.dropout >= 0:
        kwargs.setdefault("dropout", config.dropout)
    kwargs.setdefault("bn_momentum", config.bn_momentum)
    return build_model(
        config.model, input_size=config.image_size, channels=config.channels, num_classes=num_classes, **kwargs
    )


def check_dimensions(
    model: str, input_size: int, channels: int, num_classes: int, min_size: int, why: str = ""
) -> None:
    """Raise ValueError naming the argument when a builder's shared arguments are out of range.

    `why` explains the smallest input size in the error message.
    """
    for arg, value, lowest in (
        ("input_size", input_size, min_size),
        ("channels", channels, 1),
        ("num_classes", num_classes, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lowest:
            raise ValueError(
                f"Invalid value for argument `{arg}` of model {model!r}. Received: {value!r}. "
                f"Expected an integer >= {lowest}{why if arg == 'input_size' else ''}."
            )


def check_fraction(model: str, arg: str, value: float) -> None:
    """Raise ValueError unless 0 <= `value` < 1 (batch-norm momenta, dropout rates)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"Invalid value for argument `{arg}` of model {model!r}. Received: {value!r}. Expected a number in [0, 1)."
        )
