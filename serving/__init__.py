"""The model's way out: the one preprocessing, the SavedModel contract, loading, TFLite, batch jobs.

Layers: `preprocess` (TensorFlow ops only, shared with the training input pipeline) <- `export`
(writes the SavedModel and model_meta.json) <- `model` (loads it back and checks inputs) <-
`batch` (Apache Beam jobs). Nothing here imports `training/` or `retrieval/`.
"""
