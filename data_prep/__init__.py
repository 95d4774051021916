"""Data preparation: readers for Quick, Draw! and Sketchy, rasterizer, sharded TFRecords."""
