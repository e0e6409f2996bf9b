"""Built-in compressor plugin: shapley."""
