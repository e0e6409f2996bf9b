"""Built-in compressor plugin: baseline layer-importance estimators (ShortGPT block influence, angular distance, SLEB, perplexity criterion, reverse order, random, oracle)."""
