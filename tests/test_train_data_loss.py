"""A corrupt shard met while training (tf.errors.DataLossError mid-fit) is one line naming the shard
and `data_prep.verify`, not a traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from data_prep import verify
from training import trainer


@pytest.mark.slow
def test_a_corrupt_shard_met_mid_fit_is_named(quickdraw_28px, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(quickdraw_28px, data)
    info = json.loads((data / "dataset_info.json").read_text())
    shard = info["splits"]["train"]["shards"][1]["file"]
    assert shard == "train-00001-of-00002.tfrecord"
    raw = bytearray((data / shard).read_bytes())
    raw[12 + 40] ^= 0xFF  # a byte inside the first record's data: its CRC no longer matches, sizes do
    (data / shard).write_bytes(bytes(raw))
    with pytest.raises(trainer.ToolError) as error:
        trainer.run_mode(*trainer.resolve("smoke", {"mode": "train", "data_path": str(data),
                                                    "model_dir": str(tmp_path / "run")}))
    message = str(error.value)
    assert "\n" not in message and error.value.exit_code == trainer.EXIT_ERROR
    assert f"shard {shard}: sha256" in message and "python -m data_prep.verify" in message
    assert "corrupted record" in message  # TensorFlow's own words, kept
    with pytest.raises(verify.VerificationError, match=shard):
        verify.verify(data)
