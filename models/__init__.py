"""Model builders and their registry, losses and miners.

Importing the package registers every builder: `models.build_model("sknet", input_size=28, channels=1,
num_classes=345)`; `models.model_names()` lists the names.
"""

from models.registry import build_from_config, build_model, get_builder, model_names, register
from models.sketch_a_net import build_sketch_a_net
from models.sknet import build_sknet
from models.skresnet import build_skresnet

__all__ = [
    "build_from_config",
    "build_model",
    "build_sketch_a_net",
    "build_sknet",
    "build_skresnet",
    "get_builder",
    "model_names",
    "register",
]
