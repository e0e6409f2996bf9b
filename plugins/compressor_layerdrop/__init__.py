"""Built-in compressor plugin: layerdrop."""
