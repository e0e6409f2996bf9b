"""Data: text sources, token windows and their fingerprints."""

from compressor.data.batches import TokenBatches, build_batches, resolve_bos, token_stream
from compressor.data.sources import load_documents

__all__ = ["TokenBatches", "build_batches", "load_documents", "resolve_bos", "token_stream"]
