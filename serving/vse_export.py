"""Export a visual-semantic embedding (-model vse) with text endpoints beside the image ones.

`export_vse_model` writes what serving.export.export_model writes for an embedding model (kind
'embedding': embed_images, embed_encoded, ... give the unit `semantic` vector [N, D]) and adds:

    embed_text(words string [N])        embedding float32 [N, D] (unit; zeros when not known),
                                        known bool [N], match string [N] ('whole', 'average' or 'none')
    label_images(images uint8 [N, H, W, C], class_names string [K], polarity='auto')
                                        top_classes string [N, T], top_scores float32 [N, T], T = min(5, K),
                                        scores float32 [N, K] (cosines; -inf for a class name with no known
                                        word), class_known bool [K]

A text becomes a vector in the graph, from the vocabulary saved with the model (the run's
vocabulary.npz: the first -vse_vocabulary words of the vectors file and every class name's words), by
the rules of data_prep.word_vectors.class_vector for a lower-case vocabulary: lower-cased, split on `_`,
`-` and white space, punctuation stripped from each word's ends; the words joined by `_`, then joined
with nothing, then by `-`, looked up whole ('whole'); else the mean of the words found ('average');
then L2-normalised. A text with no known word gives `known` False, match 'none' and a zero vector,
never an arbitrary one; label_images scores such a class -inf, so it is never the nearest of a known one.
"""

from __future__ import annotations

import numpy as np

from data_prep import word_vectors as wv
from serving import export

TEXT_SPEC_NAME = "words"
_SEPARATORS = r"[\s_\-]+"


def _edge_punctuation_pattern() -> str:
    chars = "".join("\\" + c if c.isascii() else c for c in wv._EDGE_PUNCTUATION)  # RE2 escapes ASCII only
    return f"^[{chars}]+|[{chars}]+$"


def make_text_embedder(words, vectors):
    """A tf.Module whose `embed(texts string [N])` gives {'embedding', 'known', 'match'} (module docstring)."""
    import tensorflow as tf

    words = [str(w) for w in words]
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or len(words) != len(vectors) or not words:
        raise export.ExportError(f"a text vocabulary needs one vector per word; received {len(words)} words and "
                                 f"vectors of shape {vectors.shape}.")
    punctuation = _edge_punctuation_pattern()

    class TextEmbedder(tf.Module):
        def __init__(self):
            super().__init__(name="text_embedder")
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(words), tf.range(len(words), dtype=tf.int64)), -1)
            self.vectors = tf.Variable(vectors, trainable=False, name="word_vectors")
            self.dim = int(vectors.shape[1])

        def tokens(self, texts):
            """Ragged [N, None] words of each text, as data_prep.word_vectors.name_tokens makes them."""
            spaced = tf.strings.regex_replace(tf.strings.lower(texts, encoding="utf-8"), _SEPARATORS, " ")
            parts = tf.strings.split(spaced)
            stripped = tf.ragged.map_flat_values(tf.strings.regex_replace, parts, punctuation, "")
            return tf.ragged.boolean_mask(stripped, tf.strings.length(stripped) > 0)

        def embed(self, texts):
            tokens = self.tokens(texts)
            whole = tf.stack([self.table.lookup(tf.strings.reduce_join(tokens, axis=1, separator=sep))
                              for sep in ("_", "", "-")], axis=1)  # [N, 3]
            has_whole = tf.reduce_any(whole >= 0, axis=1)
            first = tf.gather(whole, tf.argmax(tf.cast(whole >= 0, tf.int32), axis=1), batch_dims=1)
            whole_vectors = tf.gather(self.vectors, tf.maximum(first, 0))
            ids = tf.ragged.map_flat_values(self.table.lookup, tokens)
            found = tf.ragged.boolean_mask(ids, ids >= 0)
            counts = tf.cast(found.row_lengths(), tf.float32)[:, None]
            summed = tf.reduce_sum(tf.ragged.map_flat_values(tf.gather, self.vectors, found), axis=1)
            summed = tf.reshape(summed, [-1, self.dim])
            mean = tf.math.divide_no_nan(summed, counts)
            vector = tf.where(has_whole[:, None], whole_vectors, mean)
            known = tf.logical_or(has_whole, counts[:, 0] > 0)
            embedding = tf.where(known[:, None], tf.math.l2_normalize(vector, axis=1), tf.zeros_like(vector))
            match = tf.where(has_whole, "whole", tf.where(known, "average", "none"))
            return {"embedding": embedding, "known": known, "match": match}

    return TextEmbedder()


def add_text_endpoints(servable, signatures, words, vectors, channels: int) -> dict:
    """Attach embed_text and label_images to `servable` (and their signatures); returns meta entries."""
    import tensorflow as tf

    embedder = make_text_embedder(words, vectors)
    servable.text_embedder = embedder
    text_spec = tf.TensorSpec([None], tf.string, name=TEXT_SPEC_NAME)
    images_spec = tf.TensorSpec([None, None, None, channels], tf.uint8, name="images")
    names_spec = tf.TensorSpec([None], tf.string, name="class_names")
    embed_images = servable.embed_images

    @tf.function(input_signature=[text_spec])
    def embed_text(words):
        return embedder.embed(words)

    def label(images, class_names, polarity):
        image_embedding = embed_images(images, polarity)["embedding"]
        text = embedder.embed(class_names)
        scores = tf.matmul(image_embedding, text["embedding"], transpose_b=True)
        scores = tf.where(text["known"][None, :], scores, tf.fill(tf.shape(scores), -np.inf))
        top = tf.minimum(export.TOP, tf.shape(class_names)[0])
        values, indices = tf.math.top_k(scores, k=top)
        return {"top_classes": tf.gather(class_names, indices), "top_scores": values, "scores": scores,
                "class_known": text["known"]}

    @tf.function
    def label_images(images, class_names, polarity="auto"):
        return label(images, class_names, polarity)

    label_images.get_concrete_function(images_spec, names_spec, tf.TensorSpec([], tf.string, name="polarity"))
    servable.embed_text = embed_text
    servable.label_images = label_images
    signatures["embed_text"] = embed_text.get_concrete_function()
    signatures["label_images"] = tf.function(
        lambda images, class_names: label_images(images, class_names, tf.constant("auto")),
        input_signature=[images_spec, names_spec]).get_concrete_function()
    dim = int(np.asarray(vectors).shape[1])
    return {
        "text": {"vocabulary": len(words), "dim": dim,
                 "rules": "lower-case; split on _, -, spaces; punctuation stripped from word ends; the words joined "
                          "by _, then by nothing, then by - looked up whole, else the mean of the words found; "
                          "L2-normalised; no known word: known False, zero vector"},
        "endpoints": {
            "embed_text": {"inputs": "words string [N]: class names or short texts",
                           "outputs": {"embedding": f"float32 [N, {dim}] (unit; zeros when not known)",
                                       "known": "bool [N]", "match": "string [N]: whole, average or none"}},
            "label_images": {"inputs": f"images uint8 [N, H, W, {channels}] (any H, W), class_names string [K]",
                             "polarity": "auto|as_is|invert (default auto)",
                             "outputs": {"top_classes": "string [N, min(5, K)]", "top_scores": "float32 [N, min(5, K)]",
                                         "scores": "float32 [N, K] (cosine; -inf for unknown class names)",
                                         "class_known": "bool [K]"}}},
    }


def export_vse_model(model, export_dir, *, class_names, image_size: int, channels: int, polarity: str,
                     words, word_vectors, raster: dict | None = None, tflite: str | None = None) -> dict:
    """serving.export.export_model of kind 'embedding' plus embed_text and label_images; returns the meta dict."""
    return export.export_model(
        model, export_dir, class_names=class_names, image_size=image_size, channels=channels, kind="embedding",
        polarity=polarity, raster=raster, tflite=tflite,
        extend=lambda servable, signatures: add_text_endpoints(servable, signatures, words, word_vectors, channels))


def python_text_vector(text: str, words, vectors) -> np.ndarray | None:
    """The vector embed_text gives `text`, computed in Python (for checks): None when no word is known."""
    index = {w: i for i, w in enumerate(words)}
    tokens = wv.name_tokens(text)
    for token in ("_".join(tokens), "".join(tokens), "-".join(tokens)):
        if token and token in index:
            v = np.asarray(vectors[index[token]], np.float64)
            return v / np.linalg.norm(v)
    used = [np.asarray(vectors[index[t]], np.float64) for t in tokens if t in index]
    if not used:
        return None
    mean = np.mean(used, axis=0)
    return mean / np.linalg.norm(mean)


__all__ = ["add_text_endpoints", "export_vse_model", "make_text_embedder", "python_text_vector"]
