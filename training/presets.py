"""Named training recipes as plain data, and the override order that applies them.

A preset is a dict of config field names (of TrainConfig, ModelConfig, PipelineConfig,
AugmentConfig, ...) to values. `resolve_configs` builds each config from its dataclass
defaults, then the preset, then the flags given on the command line, in that order.

- `original`: the original skNet tool's recipe, to compare with ours in the same run: Adam at a
  constant 1e-4 (no warm-up), batch 10, no augmentation, 128 px images (needs a data set built at
  128 px).
- `default`: our recipe, which is the dataclass defaults: AdamW 1e-3 with weight decay 0.05, a linear
  warm-up over the first tenth of the steps, then cosine decay, batch 256, no augmentation (-augment
  turns it on), batch-norm momentum 0.9 (short runs evaluate correctly; see ModelConfig.bn_momentum);
  the image classifiers change three of them (Task.recipe: batch 128, peak rate 2e-3, label smoothing
  0.1; training/tasks/classification.py).
- `demo`: what `make demo` trains: skNet on the embedded 28 px doodles, 3 epochs of 80 steps of 64
  (15,360 images seen), 2 to 3 minutes on 2 CPU cores; no label smoothing (the page's shape study in
  BENCHMARKS.md was measured on that model).
- `smoke`: the tiniest run the tests reuse: 2 epochs of 3 steps of 16 images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "original": {
        "optimizer": "adam", "learning_rate": 1e-4, "lr_schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0,
        "batch_size": 10, "augment": False, "image_size": 128,
    },
    "default": {},
    "demo": {
        "model": "sknet", "image_size": 28, "epochs": 3, "steps_per_epoch": 80, "batch_size": 64,
        "learning_rate": 2e-3, "label_smoothing": 0.0, "augment": False, "verbose": 2,
    },
    "smoke": {
        "epochs": 2, "steps_per_epoch": 3, "batch_size": 16, "augment": False, "verbose": 2,
    },
}


class PresetError(ValueError):
    """An unknown preset, or a preset or flag naming a field no config has."""


def preset_values(name: str) -> dict[str, Any]:
    """The field values of preset `name` ('' is no preset); PresetError listing the valid names."""
    if not name:
        return {}
    if name not in PRESETS:
        raise PresetError(f"Invalid value for argument `preset`. Received: {name!r}. "
                          f"Expected one of: {', '.join(PRESETS)} (or empty for none).")
    return dict(PRESETS[name])


def resolve_configs(classes: Iterable[type], preset: str, command_line: Mapping[str, Any]
                    ) -> tuple[dict[type, Any], set[str]]:
    """Build one instance per dataclass: defaults, then `preset`, then `command_line` values.

    Returns the configs by class and the names set explicitly (by the preset or the command
    line), so callers can tell a chosen value from a default (e.g. image size taken from the data).
    """
    classes = list(classes)
    values = preset_values(preset)
    values.update(command_line)
    known = {f.name for cls in classes for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PresetError(f"Preset {preset!r} or the command line sets {', '.join(unknown)}, which no "
                          f"configuration of this tool has.")
    configs = {
        cls: cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})
        for cls in classes
    }
    return configs, set(values)
