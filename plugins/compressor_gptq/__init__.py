"""Built-in compressor plugin: gptq."""
