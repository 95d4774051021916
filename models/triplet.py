"""`triplet`: an embedding network for metric losses on P x K batches (proxy-anchor by default, triplet with a miner).

image -> backbone (models/embedding.py: 'sknet' by default, 'skresnet', 'siamese_cnn') -> linear
`embedding_dim` layer -> optional L2 normalisation; the layer `features` is the embedding. Train it
with `models.embedding.make_loss(config, "triplet")` (ProxyAnchorLoss at -loss auto, TripletLoss, the
in-batch ContrastiveLoss or another proxy loss) on x = images, y = labels arranged P x K (see models/embedding.py for the layout). With
`proxies=True` (the proxy losses) the model's training output is the cosines [B, num_classes] of
`features` to one learned proxy per class (models.proxies.CosineProxies, layer `proxies`); without,
`num_classes` is checked but unused; with `with_features` too (-loss softmax_triplet) the output is
[B, embedding_dim + num_classes]: `features` and those cosines side by side. Either way
`models.embedding.branch` gives image -> `features`.
"""

from __future__ import annotations

import keras

from models.embedding import PROXY_LAYER, build_embedding_network
from models.proxies import CosineProxies
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
    proxies: bool = False,
    proxy_lr_multiplier: float = 1.0,
    with_features: bool = False,
    name: str = "triplet",
) -> keras.Model:
    """Embedding network image -> `features` [embedding_dim] (unit norm when `l2_normalize`), then
    with `proxies` -> cosines to the class proxies [num_classes]."""
    network = build_embedding_network(
        "triplet", input_size, channels, num_classes, embedding_dim=embedding_dim, backbone=backbone,
        l2_normalize=l2_normalize, bn_momentum=bn_momentum, dropout=dropout, name=name,
    )
    if not isinstance(proxies, bool):
        raise ValueError(f"Invalid value for argument `proxies` of model 'triplet'. Received: {proxies!r}. Expected True or False.")
    if not proxies:
        return network
    cosines = CosineProxies(num_classes, proxy_lr_multiplier, name=PROXY_LAYER)(network.output)
    if with_features:
        cosines = keras.layers.Concatenate(name="features_and_cosines")([network.output, cosines])
    return keras.Model(network.input, cosines, name=name)
