"""The `shapes` toy world and the small Wan2.1 model trained on it (the `shapes` preset)."""
