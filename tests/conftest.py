"""Shared fixtures: a tiny random Llama with a real (small, locally trained) tokenizer, text, and stores."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

# A corpus made here, so unit tests need no download. Words repeat with structure, which
# gives a trained tiny model something to learn and a tokenizer real merges.
_WORDS = (
    "the model layer mask value prune quant weight token text speech nation people "
    "congress year state union budget energy law trade work peace future power"
).split()


def make_corpus(n_paragraphs: int = 60, seed: int = 0) -> str:
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(n_paragraphs):
        sentences = []
        for _ in range(rng.randint(3, 6)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 12))]
            sentences.append(" ".join(words).capitalize() + ".")
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


@pytest.fixture(scope="session")
def tiny_corpus() -> str:
    return make_corpus()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_corpus):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([tiny_corpus], trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def make_tiny_llama(vocab_size: int, num_layers: int = 4, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved folder with a 4-layer random Llama (hidden 32) and the tiny tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = make_tiny_llama(len(tiny_tokenizer), num_layers=4)
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_text_file(tmp_path_factory, tiny_corpus) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(tiny_corpus)
    return path


@pytest.fixture()
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def postgres_url() -> str | None:
    """URL of the PostgreSQL server that .ci/run starts, from COMPRESSOR_TEST_PG_URL."""
    return os.environ.get("COMPRESSOR_TEST_PG_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A fresh, empty store URL on each backend.

    The PostgreSQL case needs COMPRESSOR_TEST_PG_URL (set by .ci/run and `make test`);
    without it the test fails with that instruction rather than skipping silently.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    base = postgres_url()
    if not base:
        pytest.fail(
            "COMPRESSOR_TEST_PG_URL is not set; run the tests through `make test`, which starts a "
            "local PostgreSQL server, or point the variable at one"
        )
    return _fresh_pg_database(base)


def _fresh_pg_database(base: str) -> str:
    import uuid

    from sqlalchemy import create_engine, text

    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.rsplit("/", 1)[0] + "/" + name
