"""Export a trained model as a SavedModel whose endpoints form the serving contract.

`export_model` writes into `export_dir`:

    saved_model/      tf.saved_model with the functions and signatures below
    model.keras       the Keras model itself
    model_meta.json   kind, image size, channels, class names, polarity, raster, endpoints
    model.tflite      on request (serving.tflite)

Functions (callable on the loaded object; `polarity` is optional, 'auto' by default) and
signatures of the same names (TF Serving, signature runners: polarity 'auto'):

    classify_images(images uint8 [N, H, W, C])         classifiers: probabilities [N, K],
    classify_images_float(images float32 in [0, 1])        top_classes string [N, T],
    classify_encoded(encoded string [N]), classify_png     top_probabilities [N, T], embedding [N, D]
    embed_images, embed_images_float, embed_encoded, embed_png    embedding [N, D] (+ codes uint8
                                                                   [N, ceil(D / 8)] for hash models)
    preprocess_images, preprocess_images_float, preprocess_encoded   model_input [N, S, S, C]
    classify_strokes, embed_strokes, preprocess_strokes(strokes float32 [N, P, 4])   as above

`serving_default` is classify_images for classifiers, embed_images otherwise. H and W are any
size (resized in the graph by serving.preprocess); C must be the model's; N may be 0. T = min(5, K).
Each endpoint is a head (classify, embed, preprocess) over an input kind (`build_servable`'s
`inputs`). The strokes kind exists for models trained on drawings rendered from strokes (the
export records their `raster` settings): rows (x, y, t, stroke index) as serving.strokes.pack_strokes
packs them, padding rows (stroke index -1) after each drawing's points, drawn in the graph by
data_prep.raster_tf with the training data's geometry, so that a service needs TensorFlow alone. A
non-finite coordinate or a drawing without points is refused (InvalidArgumentError), not drawn.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from data_prep.atomic_files import write_json_atomic
from serving import preprocess

KINDS = ("classifier", "embedding", "hash")
SAVED_MODEL = "saved_model"
KERAS_FILE = "model.keras"
META_FILE = "model_meta.json"
FORMAT_VERSION = 2
TOP = 5
FLOAT_RANGE_MESSAGE = "images_float must hold floats in [0, 1] (uint8 pixels go to the *_images endpoint)"
STROKES_MESSAGE = ("strokes must give every drawing at least one point (rows with stroke index >= 0, padding rows "
                   "after them) and finite x, y, t")


class ExportError(ValueError):
    """A model or export folder that does not fit the export contract; the message says why."""


def _is_softmax(model) -> bool:
    """Whether the model ends in a softmax: a layer with activation='softmax' or a Softmax layer
    (which has no `activation`; it passed for logits and got a second softmax)."""
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return activation is not None and getattr(activation, "__name__", "") == "softmax"


def pack_bits(values):
    """uint8 [N, ceil(D / 8)] codes from real [N, D]: bit = value > 0, big-endian within a byte
    (np.packbits order, as retrieval.ranking.pack_codes)."""
    import tensorflow as tf

    bits = tf.cast(values > 0, tf.int32)
    dims = values.shape[-1]
    pad = (-dims) % 8
    bits = tf.pad(bits, [[0, 0], [0, pad]])
    bits = tf.reshape(bits, [-1, (dims + pad) // 8, 8])
    weights = tf.constant([128, 64, 32, 16, 8, 4, 2, 1], tf.int32)
    return tf.cast(tf.reduce_sum(bits * weights, axis=-1), tf.uint8)


def _check_args(model, kind, image_size, channels, polarity, class_names, features_layer):
    if kind not in KINDS:
        raise ExportError(f"Invalid value for argument `kind`. Received: {kind!r}. Expected one of {KINDS}.")
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ExportError(f"Invalid value for argument `image_size`. Received: {image_size!r}. "
                          "Expected a positive integer.")
    if channels not in (1, 3):
        raise ExportError(f"Invalid value for argument `channels`. Received: {channels!r}. Expected 1 or 3.")
    if polarity not in preprocess.TRAINED_POLARITIES:
        raise ExportError(f"Invalid value for argument `polarity`. Received: {polarity!r}. "
                          f"Expected one of {preprocess.TRAINED_POLARITIES}.")
    expected = (image_size, image_size, channels)
    input_shape = tuple(model.inputs[0].shape[1:]) if model.inputs else None
    if input_shape is not None and any(a is not None and a != b for a, b in zip(input_shape, expected)):
        raise ExportError(f"the model takes inputs of shape {input_shape} but image_size={image_size}, "
                          f"channels={channels} give {expected}.")
    if kind == "classifier":
        try:
            model.get_layer(features_layer)
        except ValueError:
            raise ExportError(f"a classifier needs a layer named {features_layer!r} to embed with; "
                              f"the model has {[layer.name for layer in model.layers]}.") from None
        num_classes = int(model.outputs[0].shape[-1])
        if class_names is None or len(class_names) != num_classes:
            raise ExportError(f"a classifier with {num_classes} outputs needs {num_classes} class_names; "
                              f"received {None if class_names is None else len(class_names)}.")


def build_servable(model, *, kind: str, class_names, image_size: int, channels: int, polarity: str,
                   features_layer: str = "features", outputs_are_logits: bool | None = None,
                   raster: dict | None = None):
    """A tf.Module with the contract's functions (see the module docstring) around `model`; the
    strokes endpoints when `raster` (the training data's raster settings) is given."""
    import keras
    import tensorflow as tf

    from serving import strokes as serving_strokes

    _check_args(model, kind, image_size, channels, polarity, class_names, features_layer)
    if kind == "classifier":
        network = keras.Model(model.inputs, [model.outputs[0], model.get_layer(features_layer).output],
                              name=f"{model.name}_serving")
        outputs_are_logits = not _is_softmax(model) if outputs_are_logits is None else outputs_are_logits
        names = tf.constant([str(c) for c in class_names])
        top = min(TOP, len(class_names))
    else:
        network = model
    embedding_dim = int(np.prod([d for d in (network.outputs[-1].shape[1:])]))

    def run_network(x):
        """The network on [N, S, S, C]; an empty batch skips it for empty outputs (TF's oneDNN
        convolutions fail on zero images, even on a zero batch padded to one)."""
        def empty():
            zeros = [tf.zeros([0, *out.shape[1:]], out.dtype) for out in network.outputs]
            return zeros if len(zeros) > 1 else zeros[0]

        return tf.cond(tf.shape(x)[0] > 0, lambda: network(x, training=False), empty)

    def outputs(x):
        """Model input float [N, S, S, C] -> the named outputs of this kind."""
        if kind == "classifier":
            scores, features = run_network(x)
            scores = tf.cast(scores, tf.float32)
            probabilities = tf.nn.softmax(scores, axis=-1) if outputs_are_logits else scores
            values, indices = tf.math.top_k(probabilities, k=top)
            return {"probabilities": probabilities, "top_classes": tf.gather(names, indices),
                    "top_probabilities": values,
                    "embedding": tf.reshape(tf.cast(features, tf.float32), [-1, embedding_dim])}
        embedding = tf.reshape(tf.cast(run_network(x), tf.float32), [-1, embedding_dim])
        return {"embedding": embedding, "codes": pack_bits(embedding)} if kind == "hash" else {"embedding": embedding}

    def from_pixels(images, policy):
        return preprocess.model_input(images, image_size, channels, trained=polarity, policy=policy)

    def from_floats(images, policy):
        in_range = tf.reduce_all(tf.logical_and(images >= 0.0, images <= 1.0))
        check = tf.debugging.Assert(in_range, [FLOAT_RANGE_MESSAGE + "; received values from",
                                               tf.reduce_min(images), "to", tf.reduce_max(images)])
        with tf.control_dependencies([check]):
            return from_pixels(tf.identity(images), policy)

    def from_encoded(encoded, policy):
        return preprocess.decode_encoded(encoded, image_size, channels, trained=polarity, policy=policy)

    def from_strokes(strokes, policy):
        valid = strokes[..., 3] >= 0
        finite = tf.reduce_all(tf.math.is_finite(strokes[..., :3]), axis=-1)
        usable = tf.logical_and(tf.reduce_all(tf.logical_or(finite, tf.logical_not(valid))),
                                tf.reduce_all(tf.reduce_any(valid, axis=1)))
        check = tf.debugging.Assert(usable, [STROKES_MESSAGE])
        with tf.control_dependencies([check]):
            pixels = serving_strokes.strokes_to_pixels(tf.identity(strokes), options, channels)
        return from_pixels(pixels, policy)

    specs = {
        "images": tf.TensorSpec([None, None, None, channels], tf.uint8, name="images"),
        "images_float": tf.TensorSpec([None, None, None, channels], tf.float32, name="images"),
        "encoded": tf.TensorSpec([None], tf.string, name="encoded"),
    }
    inputs = {"images": from_pixels, "images_float": from_floats, "encoded": from_encoded}
    if raster is not None:
        options = serving_strokes.raster_options({"raster": raster, "image_size": image_size})
        specs["strokes"] = tf.TensorSpec([None, None, 4], tf.float32, name="strokes")
        inputs["strokes"] = from_strokes
    heads = {"embed": lambda x: {k: v for k, v in outputs(x).items() if k in ("embedding", "codes")}
             if kind == "classifier" else outputs(x),
             "preprocess": lambda x: {"model_input": x}}
    if kind == "classifier":
        heads = {"classify": outputs, **heads}
    policy_spec = tf.TensorSpec([], tf.string, name="polarity")

    servable = tf.Module()
    servable.network = network
    signatures = {}
    for head, head_fn in heads.items():
        for suffix, input_fn in inputs.items():
            name = f"{head}_{suffix}"
            # Traced for its one spec, not bound by input_signature: an input_signature casts NumPy
            # arrays to its dtype (float pixels in [0, 1] became 0, int32 300 became 44), while a
            # restored function with a traced spec refuses them naming that spec.
            function = tf.function(_endpoint(head_fn, input_fn, specs[suffix]))
            function.get_concrete_function(specs[suffix], policy_spec)
            setattr(servable, name, function)
            signatures[name] = tf.function(_auto(function), input_signature=[specs[suffix]]).get_concrete_function()
        if head != "preprocess":
            setattr(servable, f"{head}_png", getattr(servable, f"{head}_encoded"))
            signatures[f"{head}_png"] = signatures[f"{head}_encoded"]
    signatures["serving_default"] = signatures["classify_images" if kind == "classifier" else "embed_images"]
    info = {"embedding_dim": embedding_dim, "outputs_are_logits": outputs_are_logits if kind == "classifier" else None,
            "bits": embedding_dim if kind == "hash" else None}
    return servable, signatures, info


def _endpoint(head_fn, input_fn, spec):
    """The endpoint's Python function; its first argument is named as the input (`images` or
    `encoded`, as README and the signatures name it), so `f(images=...)` works too."""
    def run(data, polarity):
        _check_spec(data, spec)
        return head_fn(input_fn(data, polarity))

    if spec.name == "encoded":
        def endpoint(encoded, polarity="auto"):
            return run(encoded, polarity)
    elif spec.name == "strokes":
        def endpoint(strokes, polarity="auto"):
            return run(strokes, polarity)
    else:
        def endpoint(images, polarity="auto"):
            return run(images, polarity)
    return endpoint


def _check_spec(data, spec) -> None:
    """At trace time, refuse another dtype, rank or channel count than the endpoint's `spec` (in
    process, a tf.function without input_signature would otherwise trace a graph for it)."""
    if data.dtype != spec.dtype or not spec.shape.is_compatible_with(data.shape):
        dims = {4: ["N", "H", "W", str(spec.shape[-1])], 3: ["N", "P", "4"]}.get(spec.shape.rank, ["N"])
        raise TypeError(f"{spec.name} must be {spec.dtype.name} [{', '.join(dims)}]; received "
                        f"{data.dtype.name} of shape {data.shape}.")


def _auto(function):
    """The endpoint with polarity 'auto', as a string tensor: the traced spec (a Python string
    would trace and save another graph)."""
    import tensorflow as tf

    def signature(data):
        return function(data, tf.constant("auto"))
    return signature


def describe_endpoints(kind: str, image_size: int, channels: int, num_classes: int | None,
                       embedding_dim: int, strokes: bool = False) -> dict:
    """What model_meta.json says of each endpoint: inputs and outputs with dtypes and shapes."""
    ins = {"images": f"images uint8 [N, H, W, {channels}] (any H, W)",
           "images_float": f"images float32 [N, H, W, {channels}] in [0, 1] (any H, W)",
           "encoded": "encoded string [N]: PNG, JPEG, GIF or BMP bytes"}
    if strokes:
        ins["strokes"] = ("strokes float32 [N, P, 4]: rows (x, y, t, stroke index) in drawing order, padding rows "
                          "(stroke index -1) after each drawing's points; t 0 when unknown "
                          "(serving.strokes.pack_strokes)")
    outs = {"embed": {"embedding": f"float32 [N, {embedding_dim}]"},
            "preprocess": {"model_input": f"float32 [N, {image_size}, {image_size}, {channels}] in [0, 1]"}}
    if kind == "hash":
        outs["embed"]["codes"] = f"uint8 [N, {-(-embedding_dim // 8)}] (bit = embedding > 0, np.packbits order)"
    if kind == "classifier":
        top = min(TOP, num_classes)
        outs["classify"] = {"probabilities": f"float32 [N, {num_classes}]", "top_classes": f"string [N, {top}]",
                            "top_probabilities": f"float32 [N, {top}]", "embedding": f"float32 [N, {embedding_dim}]"}
    endpoints = {}
    for head, out in outs.items():
        for suffix, described in ins.items():
            endpoints[f"{head}_{suffix}"] = {"inputs": described, "polarity": "auto|as_is|invert (default auto)",
                                             "outputs": out}
        if head != "preprocess":
            endpoints[f"{head}_png"] = {"alias_of": f"{head}_encoded"}
    return endpoints


def export_model(model: "keras.Model", export_dir, *, class_names: list[str] | None, image_size: int,
                 channels: int, kind: str = "classifier", polarity: str = "as_is", raster: dict | None = None,
                 features_layer: str = "features", outputs_are_logits: bool | None = None,
                 tflite: str | None = None, extend=None, photo_edges: str = "none") -> dict:
    """Write the SavedModel, the .keras file and model_meta.json (and model.tflite when `tflite` is
    'float32' or 'int8'); returns the meta dict. `polarity` is what the model was trained on
    (preprocess.TRAINED_POLARITIES; `training_polarity` measures it from training images).
    `outputs_are_logits` None decides from the last layer (softmax: probabilities, else logits).
    `extend(servable, signatures)` may add endpoints before saving (serving.vse_export's text
    endpoints); it returns meta entries: its 'endpoints' join the meta's, other keys are added.
    `photo_edges` records how the training photos looked (data_prep.edges), so that a photo gallery
    indexed later is turned into line drawings alike."""
    import keras
    import tensorflow as tf

    servable, signatures, info = build_servable(
        model, kind=kind, class_names=class_names, image_size=image_size, channels=channels, polarity=polarity,
        features_layer=features_layer, outputs_are_logits=outputs_are_logits, raster=raster)
    extra = dict(extend(servable, signatures)) if extend is not None else {}
    export_dir = pathlib.Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(servable, str(export_dir / SAVED_MODEL), signatures=signatures)
    model.save(export_dir / KERAS_FILE)
    default = "classify_images" if kind == "classifier" else "embed_images"
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "image_size": int(image_size),
        "channels": int(channels),
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "embedding_dim": info["embedding_dim"],
        "bits": info["bits"],
        "polarity": polarity,
        "input": {
            "pixels": "white strokes on black (Quick, Draw!)" if polarity == "white_on_black" else
                      "dark strokes on white" if polarity == "black_on_white" else "images as they are",
            "range": "uint8 0-255 (*_images), float32 0-1 (*_images_float), encoded bytes (*_encoded)",
            "resize": "to image_size x image_size: area averaging to shrink, OpenCV-style bicubic to enlarge",
            "polarity_policies": list(preprocess.POLICIES),
        },
        "raster": raster,
        "photo_edges": photo_edges,
        "features_layer": features_layer if kind == "classifier" else None,
        "outputs_are_logits": info["outputs_are_logits"],
        "serving_default": default,
        "endpoints": describe_endpoints(kind, image_size, channels, None if class_names is None else len(class_names),
                                        info["embedding_dim"], strokes=raster is not None),
        **{key: value for key, value in extra.items() if key != "endpoints"},
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
    meta["endpoints"].update(extra.get("endpoints", {}))
    if tflite:
        from serving import tflite as tflite_export

        meta["tflite"] = tflite_export.write_tflite(servable, export_dir, kind=kind, image_size=image_size,
                                                    channels=channels, quantization=tflite)
    write_meta(export_dir, meta)
    return meta


def write_meta(export_dir, meta: dict) -> None:
    """model_meta.json, written whole under a temporary name and renamed."""
    write_json_atomic(pathlib.Path(export_dir) / META_FILE, meta)


def read_meta(export_dir) -> dict:
    """model_meta.json of an export folder, checked to be one (no TensorFlow import)."""
    export_dir = pathlib.Path(export_dir)
    meta_path = export_dir / META_FILE
    if not meta_path.is_file() or not (export_dir / SAVED_MODEL).is_dir():
        raise ExportError(f"{str(export_dir)!r} is not an exported model folder: expected "
                          f"{META_FILE} and {SAVED_MODEL}/ inside.")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as err:
        raise ExportError(f"{str(meta_path)!r} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{str(export_dir)!r} was exported by another version of this toolkit (model_meta.json "
                          f"format_version {meta.get('format_version') if isinstance(meta, dict) else None}, "
                          f"expected {FORMAT_VERSION}); export it again with train_sketch_net.py -mode export.")
    return meta


def require_images(meta: dict, export_dir) -> None:
    """ExportError (one line) for a strokes-only export (serving.sequence_export), which the tools that
    feed a model images cannot use."""
    if meta.get("image_size") is None:
        raise ExportError(f"{str(export_dir)!r} holds a strokes-only model ({meta.get('inputs')} input): its "
                          "SavedModel's classify_strokes and embed_strokes take packed strokes; the tools that feed "
                          "it images (batch jobs, index, lookup, the web app) do not take it yet.")


def training_polarity(images) -> str:
    """What a training set shows the model (preprocess.TRAINED_POLARITIES), from float images
    [N, H, W, C] in [0, 1]: almost all borders dark, almost all light, or neither."""
    import tensorflow as tf

    border = preprocess.border_mean(tf.convert_to_tensor(images, tf.float32)).numpy()
    if len(border) == 0:
        return "as_is"
    if np.mean(border <= preprocess.DARK_BORDER) >= preprocess.POLARITY_SHARE:
        return "white_on_black"
    if np.mean(border >= 1 - preprocess.DARK_BORDER) >= preprocess.POLARITY_SHARE:
        return "black_on_white"
    return "as_is"
