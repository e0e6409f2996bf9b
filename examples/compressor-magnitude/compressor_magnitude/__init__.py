"""Example compressor plugin: a layer-importance estimator based on weight magnitudes."""
