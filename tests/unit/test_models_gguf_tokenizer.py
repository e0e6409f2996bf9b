"""Merges derived from a SentencePiece BPE vocabulary stored in a GGUF file."""

from __future__ import annotations

from tokenizers import Tokenizer, models

from compressor.models.loading import sentencepiece_bpe_merges

NORMAL, CONTROL, BYTE = 1, 3, 6


def test_merges_follow_scores():
    tokens = ["<unk>", "a", "b", "c", "ab", "bc", "abc", "<0x41>"]
    scores = [0.0, -10.0, -11.0, -12.0, -1.0, -2.0, -3.0, 0.0]
    types = [CONTROL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, BYTE]

    merges = sentencepiece_bpe_merges(tokens, scores, types)

    # "ab" ranks first, then "bc", then both splits of "abc" ordered by the ids of their halves.
    assert merges == [("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]


def test_merges_encode_like_sentencepiece_bpe():
    tokens = ["<unk>", "▁", "t", "h", "e", "th", "▁the", "▁th", "the"]
    scores = [0.0, -20.0, -21.0, -22.0, -23.0, -1.0, -3.0, -2.0, -4.0]
    types = [CONTROL] + [NORMAL] * 8
    merges = sentencepiece_bpe_merges(tokens, scores, types)
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))

    assert tokenizer.encode("▁the").tokens == ["▁the"]
    assert tokenizer.encode("the").tokens == ["the"]


def test_special_and_duplicate_pieces_get_no_merges():
    tokens = ["<unk>", "a", "b", "ab", "ab", "<ab>"]
    scores = [0.0, -5.0, -6.0, -1.0, -0.5, 0.0]
    types = [CONTROL, NORMAL, NORMAL, NORMAL, NORMAL, CONTROL]

    merges = sentencepiece_bpe_merges(tokens, scores, types)

    assert merges == [("a", "b")]
