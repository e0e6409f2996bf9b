"""Built-in compressor plugin: eval."""
