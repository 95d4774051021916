"""Export a stroke-sequence classifier (stroke_rnn) as a SavedModel with strokes endpoints.

A sequence model takes no images, so its export has the strokes endpoints of the serving contract
only (serving.export's docstring), with the same input as the image models' strokes endpoints:

    classify_strokes(strokes float32 [N, P, 4], polarity)   probabilities [N, K], top_classes [N, T],
                                                            top_probabilities [N, T], embedding [N, D]
    embed_strokes(strokes, polarity)                         embedding [N, D]
    preprocess_strokes(strokes, polarity)                    model_input float32 [N, min(P, max_points), 3]

Rows are (x, y, t, stroke index) as serving.strokes.pack_strokes packs them, padding rows (stroke
index -1) after each drawing's points; they become (dx, dy, pen) in the graph by
data_prep.stroke_sequences.sequences_from_points, the training pipeline's own conversion, truncated
to the run's max_points. `polarity` is accepted (and ignored) so that callers of the image models'
endpoints call these the same way. `serving_default` is classify_strokes. A non-finite coordinate or
a drawing without points is refused (InvalidArgumentError), as by the image models' strokes endpoints.
"""

from __future__ import annotations

import pathlib

from data_prep.stroke_sequences import PAD_STROKE, sequences_from_points
from serving import export

INPUT_KIND = "strokes"


def packed_to_sequences(strokes, max_points: int):
    """Packed strokes float32 [N, P, 4] -> the model's (dx, dy, pen) [N, min(P, max_points), 3]."""
    import tensorflow as tf

    valid = strokes[..., 3] >= 0  # padding rows, and a NaN index, are not points
    stroke_ids = tf.cast(tf.where(valid, strokes[..., 3], float(PAD_STROKE)), tf.int32)
    return sequences_from_points(strokes[..., :2], stroke_ids, max_points)


def checked_strokes(strokes):
    """`strokes` after asserting every drawing has a point and finite x, y, t (export.STROKES_MESSAGE)."""
    import tensorflow as tf

    valid = strokes[..., 3] >= 0
    finite = tf.reduce_all(tf.math.is_finite(strokes[..., :3]), axis=-1)
    usable = tf.logical_and(tf.reduce_all(tf.logical_or(finite, tf.logical_not(valid))),
                            tf.reduce_all(tf.reduce_any(valid, axis=1)))
    with tf.control_dependencies([tf.debugging.Assert(usable, [export.STROKES_MESSAGE])]):
        return tf.identity(strokes)


def build_sequence_servable(model, *, class_names, max_points: int, features_layer: str = "features"):
    """A tf.Module with classify_strokes, embed_strokes and preprocess_strokes around `model`, and
    the signatures of the same names; returns (servable, signatures, embedding width)."""
    import keras
    import tensorflow as tf

    try:
        features = model.get_layer(features_layer).output
    except ValueError:
        raise export.ExportError(f"a classifier needs a layer named {features_layer!r} to embed with.") from None
    network = keras.Model(model.inputs, [model.outputs[0], features], name=f"{model.name}_serving")
    num_classes = int(model.outputs[0].shape[-1])
    if class_names is None or len(class_names) != num_classes:
        raise export.ExportError(f"a classifier with {num_classes} outputs needs {num_classes} class_names.")
    names = tf.constant([str(c) for c in class_names])
    top = min(export.TOP, num_classes)
    dim = int(features.shape[-1])

    def run_network(sequences):
        """Logits and features; an empty batch skips the network for empty outputs."""
        def empty():
            return tf.zeros([0, num_classes]), tf.zeros([0, dim])

        def full():
            logits, embedding = network(sequences, training=False)
            return tf.cast(logits, tf.float32), tf.cast(embedding, tf.float32)

        return tf.cond(tf.shape(sequences)[0] > 0, full, empty)

    def classify(sequences):
        logits, embedding = run_network(sequences)
        probabilities = tf.nn.softmax(logits, axis=-1)
        values, indices = tf.math.top_k(probabilities, k=top)
        return {"probabilities": probabilities, "top_classes": tf.gather(names, indices),
                "top_probabilities": values, "embedding": embedding}

    heads = {"classify": classify,
             "embed": lambda sequences: {"embedding": run_network(sequences)[1]},
             "preprocess": lambda sequences: {"model_input": sequences}}
    spec = tf.TensorSpec([None, None, 4], tf.float32, name="strokes")
    policy_spec = tf.TensorSpec([], tf.string, name="polarity")
    servable = tf.Module()
    servable.network = network
    servable.model_variables = list(model.variables)  # dropout seed states too, which the graph captures
    signatures = {}
    for head, head_fn in heads.items():
        function = tf.function(_endpoint(head_fn, max_points))
        function.get_concrete_function(spec, policy_spec)
        setattr(servable, f"{head}_strokes", function)
        signatures[f"{head}_strokes"] = tf.function(
            lambda strokes, f=function: f(strokes, tf.constant("auto")), input_signature=[spec]).get_concrete_function()
    signatures["serving_default"] = signatures["classify_strokes"]
    return servable, signatures, dim


def _endpoint(head_fn, max_points: int):
    """The endpoint's Python function: checked packed strokes -> sequences -> `head_fn`."""
    def endpoint(strokes, polarity="auto"):
        return head_fn(packed_to_sequences(checked_strokes(strokes), max_points))
    return endpoint


def export_sequence_model(model, export_dir, *, class_names, max_points: int,
                          features_layer: str = "features") -> dict:
    """Write the SavedModel, the .keras file and model_meta.json of a stroke-sequence classifier;
    returns the meta dict (inputs 'strokes', image_size and channels None: it reads no images)."""
    import keras
    import tensorflow as tf

    servable, signatures, dim = build_sequence_servable(model, class_names=class_names, max_points=max_points,
                                                        features_layer=features_layer)
    export_dir = pathlib.Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(servable, str(export_dir / export.SAVED_MODEL), signatures=signatures)
    model.save(export_dir / export.KERAS_FILE)
    top = min(export.TOP, len(class_names))
    described = ("strokes float32 [N, P, 4]: rows (x, y, t, stroke index) in drawing order, padding rows (stroke "
                 f"index -1) after each drawing's points (serving.strokes.pack_strokes); the first {max_points} "
                 "points of a drawing are used")
    meta = {
        "format_version": export.FORMAT_VERSION,
        "kind": "classifier",
        "inputs": INPUT_KIND,
        "image_size": None,
        "channels": None,
        "max_points": int(max_points),
        "class_names": [str(c) for c in class_names],
        "embedding_dim": dim,
        "bits": None,
        "polarity": "as_is",
        "raster": None,
        "features_layer": features_layer,
        "outputs_are_logits": True,
        "serving_default": "classify_strokes",
        "endpoints": {
            "classify_strokes": {"inputs": described, "outputs": {
                "probabilities": f"float32 [N, {len(class_names)}]", "top_classes": f"string [N, {top}]",
                "top_probabilities": f"float32 [N, {top}]", "embedding": f"float32 [N, {dim}]"}},
            "embed_strokes": {"inputs": described, "outputs": {"embedding": f"float32 [N, {dim}]"}},
            "preprocess_strokes": {"inputs": described, "outputs": {
                "model_input": f"float32 [N, min(P, {max_points}), 3] (dx, dy, pen; padding rows pen -1)"}},
        },
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
    export.write_meta(export_dir, meta)
    return meta
