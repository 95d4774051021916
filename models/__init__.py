"""Model builders and their registry, losses and miners.

Importing the package registers every builder: `models.build_model("sknet", input_size=28, channels=1,
num_classes=345)`; `models.model_names()` lists the names.
"""

from models.deephash import build_deephash, codes_from_outputs
from models.embedding import branch, builder_kwargs, loss_callbacks, make_loss
from models.registry import build_from_config, build_model, get_builder, input_kind, model_names, register
from models.siamese import build_siamese
from models.sketch_a_net import build_sketch_a_net
from models.sknet import build_sknet
from models.skresnet import build_skresnet
from models.stroke_rnn import build_stroke_rnn
from models.triplet import build_triplet
from models.vse import build_vse

__all__ = [
    "branch",
    "build_deephash",
    "build_from_config",
    "build_model",
    "build_siamese",
    "build_sketch_a_net",
    "build_sknet",
    "build_skresnet",
    "build_stroke_rnn",
    "build_triplet",
    "build_vse",
    "builder_kwargs",
    "codes_from_outputs",
    "get_builder",
    "input_kind",
    "loss_callbacks",
    "make_loss",
    "model_names",
    "register",
]
