"""Training: strategies, augmentation, callbacks, export."""
