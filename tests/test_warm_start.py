"""-init_from: an embedding network starts from a classifier's trunk; other trunks and sizes are refused."""

from __future__ import annotations

import numpy as np
import pytest

import models
from training import trainer
from training.warm_start import WarmStartError, copy_matching_layers


def randomised(model):
    """The model with every weight drawn afresh (seeded), so copied weights are recognisable."""
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def test_a_classifier_trunk_goes_into_a_triplet_network_layer_by_layer():
    classifier = randomised(models.build_model("sknet", input_size=28, channels=1, num_classes=6))
    triplet = models.build_model("triplet", input_size=28, channels=1, num_classes=9, embedding_dim=16, proxies=True)
    fresh_embedding = triplet.get_layer("embedding").get_weights()
    done = copy_matching_layers(classifier, triplet)
    convs = [layer.name for layer in classifier.layers if layer.name.endswith(("_conv", "_bn"))]
    assert set(done["copied"]) == {*convs, "fc"} and set(done["kept_fresh"]) == {"embedding", "proxies"}
    for name in convs:
        for got, want in zip(triplet.get_layer(name).get_weights(), classifier.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(triplet.get_layer("fc").get_weights(), classifier.get_layer("features").get_weights()):
        np.testing.assert_array_equal(got, want)  # the classifier's 1024-unit features layer is the fc
    for got, want in zip(triplet.get_layer("embedding").get_weights(), fresh_embedding):
        np.testing.assert_array_equal(got, want)


def test_another_image_size_or_trunk_is_refused_naming_both_sides():
    classifier = models.build_model("sknet", input_size=28, channels=1, num_classes=6)
    with pytest.raises(WarmStartError, match=r"takes images of \(28, 28, 1\), the new model \(32, 32, 1\)"):
        copy_matching_layers(classifier, models.build_model("triplet", input_size=32, channels=1, num_classes=6))
    resnet = models.build_model("triplet", input_size=28, channels=1, num_classes=6, backbone="skresnet")
    with pytest.raises(WarmStartError, match=r"layer '.+' \(weights \[.+\]\) cannot come from the source model"):
        copy_matching_layers(classifier, resnet)


@pytest.mark.parametrize("source_channels, target_channels", [(1, 3), (3, 1)])
def test_grey_and_colour_models_warm_start_each_other_with_the_same_response_to_grey_images(
        source_channels, target_channels):
    """A Quick, Draw! (grey) trunk into a Sketchy (colour) model and back: the first convolution is
    adapted so that a grey image (repeated into colour) gives the same features, layer for layer."""
    import keras

    source = randomised(models.build_model("sknet", input_size=28, channels=source_channels, num_classes=6))
    target = models.build_model("sknet", input_size=28, channels=target_channels, num_classes=6)
    done = copy_matching_layers(source, target)
    assert "block1_1_conv" in done["copied"] and done["kept_fresh"] == []
    grey = np.random.default_rng(1).random((4, 28, 28, 1)).astype(np.float32)

    def features(model, channels):
        net = keras.Model(model.inputs, model.get_layer("features").output)
        return net(np.repeat(grey, channels, axis=3), training=False).numpy()

    np.testing.assert_allclose(features(target, target_channels), features(source, source_channels), rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(WarmStartError, match=r"takes images of \(28, 28, 1\), the new model \(28, 28, 2\)"):
        copy_matching_layers(models.build_model("sknet", input_size=28, channels=1, num_classes=6),
                             models.build_model("sknet", input_size=28, channels=2, num_classes=6))


def test_training_starts_from_a_classifier_run_or_its_keras_file(trained_bitmap_export, quickdraw_28px, tmp_path,
                                                                 capsys):
    common = {"mode": "train", "data_path": str(quickdraw_28px), "epochs": 1, "steps_per_epoch": 2, "verbose": 0,
              "bn_recalibration": 0}
    trainer.run_mode(*trainer.resolve("", {**common, "model_dir": str(tmp_path / "cls"), "model": "sknet",
                                           "batch_size": 16}))
    run, task = trainer.prepare_run(*trainer.resolve("", {"mode": "test", "model_dir": str(tmp_path / "cls")}))
    classifier, _ = trainer.load_weights_for(run, task)
    capsys.readouterr()

    triplet = {**common, "model": "triplet", "classes_per_batch": 4, "per_class": 4, "embedding_dim": 16}
    for name, source in (("a", tmp_path / "cls"), ("b", tmp_path / "cls" / "best.keras")):
        trainer.run_mode(*trainer.resolve("", {**triplet, "model_dir": str(tmp_path / name), "init_from": str(source)}))
        assert "starting from 17 layers of" in capsys.readouterr().out  # 8 conv, 8 batch norm, fc
    run, task = trainer.prepare_run(*trainer.resolve("", {"mode": "test", "model_dir": str(tmp_path / "a")}))
    model, _ = trainer.load_weights_for(run, task)
    kernel = model.get_layer("block1_1_conv").kernel.numpy()
    source_kernel = classifier.get_layer("block1_1_conv").kernel.numpy()
    fresh = models.build_model("triplet", input_size=28, channels=1, num_classes=8).get_layer("block1_1_conv")
    assert np.abs(kernel - source_kernel).max() < 0.01 < np.abs(fresh.kernel.numpy() - source_kernel).mean()

    refused = (
        (str(trained_bitmap_export.export_dir / "model.keras"), "layer 'block1_1_conv' .* cannot come from .*its trunk differs"),
        (str(tmp_path), "is a folder without train_config.json"),
        (str(tmp_path / "nothing.keras"), "neither a run folder nor a .keras file"),
    )
    for value, message in refused:
        with pytest.raises(trainer.ToolError, match=message):
            trainer.run_mode(*trainer.resolve("", {**triplet, "model_dir": str(tmp_path / "c"), "init_from": value}))
    with pytest.raises(trainer.ToolError, match="-ckpt and -init_from both name starting weights"):
        trainer.run_mode(*trainer.resolve("", {**triplet, "model_dir": str(tmp_path / "d"),
                                               "init_from": str(tmp_path / "cls"),
                                               "ckpt": str(tmp_path / "cls" / "best.keras")}))

