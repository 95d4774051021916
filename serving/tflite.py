"""TensorFlow Lite export of the serving contract's pixel endpoint, and a loader that runs it.

`write_tflite` converts, with TensorFlow's converter, the SavedModel's `classify_images`
(classifiers) or `embed_images` (embedding and hash models) with polarity 'auto', traced for
uint8 images [N, S, S, C] at the model's own size S: the same preprocessing ops and outputs
(probabilities, top_classes, top_probabilities, embedding; embedding and codes), in one
signature, 'serving_default'. TFLite cannot resize in the graph, so the caller sends images at
the model's size; N is free (the interpreter resizes its input).

    float32  model.tflite        the float graph as it is
    int8     model_int8.tflite   dynamic-range quantization: int8 weights, float activations
                                 (tf.lite.Optimize.DEFAULT, no representative data set)
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

from serving.export import ExportError

QUANTIZATIONS = ("float32", "int8")
FILES = {"float32": "model.tflite", "int8": "model_int8.tflite"}
SIGNATURE = "serving_default"
# The float32 file must give the endpoint's outputs on a check batch within this (else ExportError).
CHECK_IMAGES = 8
CHECK_TOLERANCE = 1e-4
ENDPOINTS = {"classifier": "classify_images", "embedding": "embed_images", "hash": "embed_images"}


def endpoint_function(servable, *, kind: str, image_size: int, channels: int):
    """`servable`'s pixel endpoint for `kind` with polarity 'auto', as a tf.function of uint8 images
    [N, image_size, image_size, channels]: the endpoint's own Python code traced at the fixed size, so
    without resizing ops or the SavedModel graph's shape-dependent branches."""
    import tensorflow as tf

    endpoint = getattr(servable, ENDPOINTS[kind])
    spec = tf.TensorSpec([None, image_size, image_size, channels], tf.uint8, name="images")
    return tf.function(lambda images: endpoint.python_function(images, "auto"), input_signature=[spec])


def convert(servable, function, quantization: str) -> bytes:
    """The TFLite flatbuffer of `function` (endpoint_function), whose variables are `servable`'s."""
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"Invalid value for argument `quantization`. Received: {quantization!r}. "
                          f"Expected one of {QUANTIZATIONS}.")
    # The converter saves its trackable to a temporary SavedModel and freezes the variables it finds
    # there. Keras 3 variables must be listed as the tf.Variables under them (as Keras' own export
    # does): tracked through the Keras model they stayed READ_VARIABLE ops that read garbage in the
    # interpreter. The whole servable (20 more functions) also made conversion 10x slower.
    holder = tf.Module()
    holder.weights = [variable.value for variable in servable.network.variables]
    holder.function = function
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], holder)
    if quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # The converter's error class has no public name (tf.lite exports none).
    from tensorflow.lite.python.convert_phase import ConverterError

    try:
        return converter.convert()
    except ConverterError as err:
        raise ExportError(f"TensorFlow Lite cannot convert this model: {converter_reason(str(err))}") from None


def converter_reason(message: str) -> str:
    """The converter's first 'error: ...' in its (many-line, MLIR-laden) message, else its first line."""
    for line in message.splitlines():
        if "error: " in line:
            return line.rsplit("error: ", 1)[1].strip()
    return message.strip().splitlines()[0] if message.strip() else "no reason given"


def check_batch(image_size: int, channels: int) -> np.ndarray:
    """uint8 [CHECK_IMAGES, S, S, C]: a blank image, a white one, and seeded noise."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (CHECK_IMAGES, image_size, image_size, channels), dtype=np.uint8)
    images[0], images[1] = 0, 255
    return images


def compare(function, runner, images: np.ndarray) -> dict[str, float]:
    """Largest absolute difference of each numeric output between the TFLite runner and the
    TensorFlow `function` it was converted from, on `images`."""
    expected = function(images)
    got = run_tflite(runner, images)
    return {name: float(np.max(np.abs(got[name].astype(np.float64) - value.numpy().astype(np.float64))))
            for name, value in sorted(expected.items()) if name in got and value.dtype.is_numeric}


def write_tflite(servable, export_dir, *, kind: str, image_size: int, channels: int, quantization: str) -> dict:
    """Write FILES[quantization] into `export_dir`, checked against the endpoint in TensorFlow (a float32
    file that differs by more than CHECK_TOLERANCE is refused); returns its description for model_meta.json."""
    function = endpoint_function(servable, kind=kind, image_size=image_size, channels=channels)
    data = convert(servable, function, quantization)
    path = pathlib.Path(export_dir) / FILES[quantization]
    path.write_bytes(data)
    runner = signature_runner(path)
    outputs = runner.get_output_details()
    specs = function.get_concrete_function().structured_outputs
    try:
        differences = compare(function, runner, check_batch(image_size, channels))
    except RuntimeError as err:  # the interpreter's own failure (an op it cannot run at this batch size)
        path.unlink()
        raise ExportError(f"the converted TFLite model fails on {CHECK_IMAGES} check images: "
                          f"{str(err).splitlines()[0]}; no {path.name} written.") from None
    if quantization == "float32" and max(differences.values()) > CHECK_TOLERANCE:
        path.unlink()
        raise ExportError(f"the TFLite conversion does not reproduce the model (largest differences from "
                          f"{ENDPOINTS[kind]} on {CHECK_IMAGES} check images: {differences}); no {path.name} written.")
    return {
        "file": path.name,
        "bytes": len(data),
        "quantization": quantization,
        "quantization_note": "int8 weights (dynamic range), float32 activations and outputs" if quantization == "int8"
                             else "float32 weights and activations",
        "signature": SIGNATURE,
        "equivalent_to": f"{ENDPOINTS[kind]} of the SavedModel with polarity 'auto', at the model's size",
        "inputs": {"images": f"uint8 [N, {image_size}, {image_size}, {channels}] (the model's size: no resizing "
                             "in TFLite; N is free)"},
        "outputs": {name: f"{_dtype_name(detail['dtype'])} [N, {', '.join(str(d) for d in specs[name].shape[1:])}]"
                    for name, detail in sorted(outputs.items())},
        # Outputs of the SavedModel endpoint the converter could not keep (string ones may be refused).
        "left_out": sorted(set(specs) - set(outputs)),
        "check": {"images": f"{CHECK_IMAGES} at the model's size (blank, white, seeded noise)",
                  "against": f"{ENDPOINTS[kind]} in TensorFlow", "max_abs_difference": differences},
    }


def _dtype_name(dtype) -> str:
    return "string" if np.dtype(dtype).kind in "SOU" else np.dtype(dtype).name


def signature_runner(path):
    """The 'serving_default' signature runner of the .tflite file at `path`."""
    import tensorflow as tf

    # TensorFlow 2.21 still ships tf.lite.Interpreter (pinned), but warns on every construction that it
    # moves to the ai_edge_litert package, which has the same API.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    return interpreter.get_signature_runner(SIGNATURE)


def run_tflite(model, images) -> dict[str, np.ndarray]:
    """The TFLite model's outputs (dict of NumPy arrays) for uint8 images [N, S, S, C] at its size.
    `model`: a .tflite path or a runner from `signature_runner`; ServingInputError names the spec."""
    from serving.model import ServingInputError

    runner = signature_runner(model) if isinstance(model, (str, pathlib.Path)) else model
    expected = runner.get_input_details()["images"]["shape_signature"][1:]
    spec = f"uint8 [N, {', '.join(str(d) for d in expected)}]"
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(expected):
        raise ServingInputError(f"the TFLite model takes images {spec} (the model's size: resize first, or use the "
                                f"SavedModel); received {images.dtype} {list(images.shape)}.")
    if len(images) == 0:  # one blank image cut back to none: the outputs' shapes and dtypes, whatever the graph
        return {name: value[:0] for name, value in runner(images=np.zeros((1, *expected), np.uint8)).items()}
    return runner(images=images)
