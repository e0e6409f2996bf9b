"""Built-in compressor plugin: baselines."""
