"""`siamese`: twin embedding networks trained on pairs with the contrastive loss (Sketchy's Siamese baseline).

The model takes a pair (image_a, image_b) and outputs both embeddings stacked, [B, 2, D], for
`PairContrastiveLoss` (y = same [B], 1.0 for a same-class pair), the batches of
data_prep.metric_pipelines.pair_batches. Each twin is image -> backbone -> linear `embedding_dim`
layer (no softmax) -> optional L2 normalisation, its last layer named `features`
(models/embedding.py); the Sketchy baseline is backbone 'siamese_cnn' at 100 px, grey.

- shared_weights=True: one network (layer `embedding_net`) embeds both images.
- shared_weights=False: two networks of the same architecture and their own weights, for
  cross-domain retrieval: `sketch_branch` embeds image_a (the sketch), `photo_branch` image_b
  (the photo).

Export and feature extraction take a single-input network: `models.embedding.branch(model,
'sketch')` for queries and `branch(model, 'photo')` for the gallery (the same network when shared).
"""

from __future__ import annotations

import keras

from models.embedding import DOMAIN_BRANCHES, SHARED_BRANCH, build_embedding_network, check_bool
from models.registry import register


@register("siamese")
def build_siamese(
    input_size: int,
    channels: int,
    num_classes: int,
    *,
    embedding_dim: int = 128,
    backbone: str = "sknet",
    l2_normalize: bool = True,
    shared_weights: bool = True,
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    name: str = "siamese",
) -> keras.Model:
    """Twin model (image_a, image_b) -> `pair_embeddings` [B, 2, embedding_dim]."""
    check_bool("siamese", "shared_weights", shared_weights)
    args = dict(embedding_dim=embedding_dim, backbone=backbone, l2_normalize=l2_normalize,
                bn_momentum=bn_momentum, dropout=dropout)
    if shared_weights:
        net = build_embedding_network("siamese", input_size, channels, num_classes, name=SHARED_BRANCH, **args)
        nets = (net, net)
    else:
        nets = tuple(build_embedding_network("siamese", input_size, channels, num_classes, name=DOMAIN_BRANCHES[d], **args)
                     for d in ("sketch", "photo"))
    shape = (input_size, input_size, channels)
    inputs = [keras.Input(shape, name="image_a"), keras.Input(shape, name="image_b")]
    rows = [keras.layers.Reshape((1, embedding_dim), name=f"{side}_row")(net(x))
            for side, net, x in zip(("a", "b"), nets, inputs)]
    pair = keras.layers.Concatenate(axis=1, dtype="float32", name="pair_embeddings")(rows)
    return keras.Model(inputs, pair, name=name)
