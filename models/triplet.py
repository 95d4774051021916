"""`triplet`: an embedding network for in-batch metric losses (triplet with a miner, on P x K batches).

image -> backbone (models/embedding.py: 'sknet' by default, 'skresnet', 'siamese_cnn') -> linear
`embedding_dim` layer -> optional L2 normalisation; the last layer is `features`. No classifier:
`num_classes` is accepted (the registry passes it) and checked, but unused. Train it with
`models.embedding.make_loss(config, "triplet")` (TripletLoss, or the in-batch ContrastiveLoss)
on x = images, y = labels arranged P x K (see models/embedding.py for the layout).
"""

from __future__ import annotations

import keras

from models.embedding import build_embedding_network
from models.registry import register


@register("triplet")
def build_triplet(
    input_size: int,
    channels: int,
    num_classes: int,
    *,
    embedding_dim: int = 128,
    backbone: str = "sknet",
    l2_normalize: bool = True,
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    name: str = "triplet",
) -> keras.Model:
    """Embedding network image -> `features` [embedding_dim] (unit norm when `l2_normalize`)."""
    return build_embedding_network(
        "triplet", input_size, channels, num_classes, embedding_dim=embedding_dim, backbone=backbone,
        l2_normalize=l2_normalize, bn_momentum=bn_momentum, dropout=dropout, name=name,
    )
