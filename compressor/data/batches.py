"""Token windows for calibration and evaluation, with a fingerprint of how they were cut.

Sampling, step by step:

1. The documents of the source and split are tokenized without special tokens and
   joined into one token stream, with the tokenizer's EOS token between documents
   (two newlines when the tokenizer has no EOS token).
2. Each window takes ``body = seq_len - 1`` tokens from the stream when a BOS token is
   put first, and ``body = seq_len`` otherwise.
3. When the stream contains at least twice the ``n_samples * body`` tokens needed, the
   ``n_samples`` window starts are drawn at random with ``seed``, without overlap. A
   shorter stream is cut into consecutive windows from its start. A stream shorter than
   ``n_samples * body`` is an error.

BOS policy: ``always`` puts the tokenizer's BOS token at position 0 of every window,
``never`` does not, and ``auto`` does when the tokenizer adds a BOS token by default.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from compressor.data.sources import load_documents, source_identity
from compressor.errors import CompressorError
from compressor.recipe import TextSpec

log = logging.getLogger(__name__)

# Bumped whenever the sampling above changes, so old fingerprints stop matching.
SAMPLING_VERSION = 1
_PROBES = ("The quick brown fox jumps over the lazy dog.", "  Spaces, digits 12345 and ünïcödé\n")
_STREAM_CACHE: OrderedDict[str, torch.Tensor] = OrderedDict()
_STREAM_CACHE_SIZE = 4


@dataclass
class TokenBatches:
    """Token windows cut from one text source.

    ``input_ids`` has shape [n_samples, seq_len]. When ``bos_prepended`` is True, column
    0 contains the BOS token, which is context and not a prediction target. ``n_tokens``
    is the number of tokens in ``input_ids``. ``starts`` are the stream offsets of the
    windows' text, and ``stream_length`` the length of the whole stream.
    """

    input_ids: torch.Tensor
    fingerprint: str
    bos_prepended: bool
    n_tokens: int
    starts: list[int]
    stream_length: int


def tokenizer_identity(tokenizer) -> dict[str, Any]:
    """Describe a tokenizer by its name, vocabulary size and the ids of a few probe texts."""
    encodings = [tokenizer(text)["input_ids"] for text in _PROBES]
    digest = hashlib.sha256(json.dumps(encodings).encode()).hexdigest()[:16]
    return {"name_or_path": str(getattr(tokenizer, "name_or_path", "")), "vocab": len(tokenizer), "probes": digest}


def adds_bos_by_default(tokenizer) -> bool:
    """Return whether the tokenizer puts its BOS token first when it encodes a text."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def resolve_bos(spec: TextSpec, tokenizer) -> bool:
    """Apply ``spec.bos`` to ``tokenizer``: True when windows start with BOS."""
    if spec.bos == "never":
        return False
    if spec.bos == "auto":
        return adds_bos_by_default(tokenizer)
    if tokenizer.bos_token_id is None:
        raise CompressorError(
            f"bos is 'always' but tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no BOS token; "
            "set bos to 'never' or 'auto'"
        )
    return True


def _separator(tokenizer) -> list[int]:
    if tokenizer.eos_token_id is not None:
        return [tokenizer.eos_token_id]
    return tokenizer("\n\n", add_special_tokens=False)["input_ids"]


def token_stream(spec: TextSpec, tokenizer) -> torch.Tensor:
    """Return every token of ``spec``'s source and split as one 1-D LongTensor.

    The stream contains no BOS token. ``n_samples``, ``seq_len``, ``seed`` and ``bos`` of
    ``spec`` do not affect it. Recent streams are cached in memory.
    """
    key = json.dumps({"source": source_identity(spec), "tokenizer": tokenizer_identity(tokenizer)}, sort_keys=True)
    cached = _STREAM_CACHE.get(key)
    if cached is not None:
        _STREAM_CACHE.move_to_end(key)
        return cached

    documents = load_documents(spec)
    separator = _separator(tokenizer)
    encoded = tokenizer(documents, add_special_tokens=False, verbose=False)["input_ids"]
    ids: list[int] = []
    for index, document in enumerate(encoded):
        if index:
            ids.extend(separator)
        ids.extend(document)
    stream = torch.tensor(ids, dtype=torch.long)
    log.info("tokenized %d documents of %s (split %s): %d tokens", len(documents), spec.source, spec.split, len(ids))

    _STREAM_CACHE[key] = stream
    while len(_STREAM_CACHE) > _STREAM_CACHE_SIZE:
        _STREAM_CACHE.popitem(last=False)
    return stream


def window_starts(stream_length: int, n_samples: int, body: int, seed: int) -> list[int]:
    """Choose ``n_samples`` non-overlapping window starts in a stream (see the module docstring)."""
    needed = n_samples * body
    if stream_length < needed:
        raise CompressorError(
            f"the text has {stream_length} tokens, fewer than the {needed} needed for {n_samples} windows of "
            f"{body} text tokens; lower n_samples or seq_len, or use a larger source"
        )
    if stream_length < 2 * needed:
        return [i * body for i in range(n_samples)]

    # Spread the spare tokens at random: sorted offsets in [0, spare], plus the window
    # lengths before each window, give starts that never overlap.
    spare = stream_length - needed
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, spare + 1, (n_samples,), generator=generator).sort().values
    return [int(offset) + i * body for i, offset in enumerate(offsets)]


def build_batches(spec: TextSpec, tokenizer) -> TokenBatches:
    """Cut ``spec.n_samples`` windows of ``spec.seq_len`` tokens from ``spec``'s text."""
    bos = resolve_bos(spec, tokenizer)
    body = spec.seq_len - 1 if bos else spec.seq_len
    if body < 1:
        raise CompressorError(f"seq_len {spec.seq_len} leaves no text token after BOS; use seq_len of 2 or more")

    stream = token_stream(spec, tokenizer)
    starts = window_starts(len(stream), spec.n_samples, body, spec.seed)
    rows = []
    for start in starts:
        window = stream[start:start + body]
        if bos:
            window = torch.cat([torch.tensor([tokenizer.bos_token_id]), window])
        rows.append(window)
    input_ids = torch.stack(rows)

    fingerprint_payload = {
        "data": source_identity(spec), "tokenizer": tokenizer_identity(tokenizer),
        "n_samples": spec.n_samples, "seq_len": spec.seq_len, "seed": spec.seed,
        "bos_policy": spec.bos, "bos": bos, "sampling": SAMPLING_VERSION,
    }
    fingerprint = hashlib.sha256(json.dumps(fingerprint_payload, sort_keys=True).encode()).hexdigest()[:16]
    return TokenBatches(input_ids=input_ids, fingerprint=fingerprint, bos_prepended=bos,
                        n_tokens=input_ids.numel(), starts=starts, stream_length=len(stream))
