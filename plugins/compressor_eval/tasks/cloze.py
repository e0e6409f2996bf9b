"""Derived next-sentence cloze tasks built from the built-in corpora.

These are not published benchmarks. They exist because no multiple-choice benchmark with
a usable licence could be fetched offline, and zero-shot accuracy is still needed to see
what pruning does to a model. Each example is built as follows:

1. The documents of the source are split into sentences by a regular expression that
   skips common abbreviations. ``sotu_cloze`` uses the held-out State of the Union
   speeches (2010 onwards), and ``brown_cloze`` the Brown corpus.
2. A target sentence between ``min_words`` and ``max_words`` words is chosen, and the
   ``context_sentences`` sentences before it in the same document become the query.
3. Three distractors are drawn from other documents of the same source. Each has a word
   count within ``length_tolerance`` of the target's (at least 2 words apart are always
   allowed), so sentence length alone does not give the answer away.
4. The true sentence and the distractors are shuffled, and the examples are shuffled
   too, so lm-eval's ``limit`` (which takes the first examples) samples every document.

Every draw comes from ``random.Random(seed)``, so the same corpus and settings give the
same file. A model picks the choice with the highest log-likelihood after the context,
so accuracy above chance (0.25) measures how much the model uses the context.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from bisect import bisect_left, bisect_right
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compressor.errors import CompressorError
from compressor.recipe import TextSpec

log = logging.getLogger(__name__)

# A sentence ends at . ! or ?, optionally followed by closing quotes or brackets, then
# whitespace and the start of the next sentence.
_BOUNDARY = re.compile(r"""[.!?]["')\]]*\s+(?=["'(\[]?[A-Z0-9])""")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "gen", "gov", "sen", "rep", "no", "vs", "co", "inc", "lt", "col"}
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ClozeSettings:
    """How the examples of a cloze task are drawn; all recorded with the metrics.

    The defaults were chosen on SmolLM2-135M-Instruct (first 100 examples, 2-core CPU). One
    context sentence and targets of at most 25 words keep a request near 65 tokens. The full
    model scored acc_norm 0.48 (sotu_cloze) and 0.45 (brown_cloze), and 0.40 and 0.43 with
    layers 12-17 removed. Two context sentences make each request about 1.5x as long.
    """

    n_examples: int = 1000
    context_sentences: int = 1
    n_choices: int = 4
    min_words: int = 8
    max_words: int = 25
    length_tolerance: float = 0.2
    seed: int = 1234


@dataclass(frozen=True)
class ClozeTask:
    """A derived cloze task: its text source and a one-line description."""

    name: str
    source: TextSpec
    description: str


CLOZE_TASKS: dict[str, ClozeTask] = {
    task.name: task
    for task in (
        ClozeTask(
            name="sotu_cloze",
            source=TextSpec(source="sotu", split="heldout"),
            description="next-sentence choice on held-out State of the Union speeches (2010 onwards); "
            "3 distractors of similar length from other held-out speeches",
        ),
        ClozeTask(
            name="brown_cloze",
            source=TextSpec(source="brown"),
            description="next-sentence choice on the Brown corpus; 3 distractors of similar length "
            "from other Brown files",
        ),
    )
}


def split_sentences(document: str) -> list[str]:
    """Split ``document`` into sentences with whitespace collapsed to single spaces."""
    text = _SPACE.sub(" ", document).strip()
    sentences = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.start() + 1
        last_word = text[start:end].rsplit(" ", 1)[-1].rstrip(".").lower()
        # "Mr. Speaker" and initials such as "U.S. Army" do not end a sentence.
        if last_word in _ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)*[a-z]", last_word):
            continue
        sentences.append(text[start:match.end()].strip())
        start = match.end()
    if text[start:].strip():
        sentences.append(text[start:].strip())
    return sentences


def _word_count(sentence: str) -> int:
    return len(sentence.split())


def build_cloze_records(documents: list[str], settings: ClozeSettings = ClozeSettings()) -> list[dict[str, Any]]:
    """Build up to ``settings.n_examples`` records ``{"query", "choices", "label", "document"}``.

    ``document`` is the index of the document the context and true sentence come from.
    Raises CompressorError when the documents are too few or too short to draw from.
    """
    if len(documents) < 2:
        raise CompressorError(
            f"a cloze task needs at least 2 documents to draw distractors from other documents, got {len(documents)}"
        )
    rng = random.Random(settings.seed)
    split = [split_sentences(document) for document in documents]

    # Candidate sentences of every document, sorted by word count for length matching.
    pool = sorted(
        (_word_count(sentence), doc, sentence)
        for doc, sentences in enumerate(split)
        for sentence in sentences
        if settings.min_words <= _word_count(sentence) <= settings.max_words
    )
    pool_lengths = [entry[0] for entry in pool]

    positions = [
        (doc, index)
        for doc, sentences in enumerate(split)
        for index in range(settings.context_sentences, len(sentences))
        if settings.min_words <= _word_count(sentences[index]) <= settings.max_words
    ]
    rng.shuffle(positions)

    records = []
    for doc, index in positions:
        if len(records) == settings.n_examples:
            break
        target = split[doc][index]
        length = _word_count(target)
        slack = max(2, round(settings.length_tolerance * length))
        low = bisect_left(pool_lengths, length - slack)
        high = bisect_right(pool_lengths, length + slack)
        candidates = sorted({entry[2] for entry in pool[low:high] if entry[1] != doc and entry[2] != target})
        if len(candidates) < settings.n_choices - 1:
            continue

        choices = [target, *rng.sample(candidates, settings.n_choices - 1)]
        rng.shuffle(choices)
        context = " ".join(split[doc][index - settings.context_sentences:index])
        records.append({"query": context, "choices": choices, "label": choices.index(target), "document": doc})

    if not records:
        raise CompressorError(
            f"no cloze example could be drawn from {len(documents)} documents with settings {asdict(settings)}; "
            "the documents may be too short, or min_words/max_words too narrow"
        )
    if len(records) < settings.n_examples:
        log.warning("only %d of %d cloze examples could be drawn", len(records), settings.n_examples)
    return records


def build_cloze_task(task: ClozeTask, out_dir: Path, settings: ClozeSettings = ClozeSettings()) -> tuple[str, dict[str, Any]]:
    """Write ``<task>.jsonl`` and ``<task>.yaml`` into ``out_dir``; return the lm-eval name and a description.

    The description (construction, settings, source, example count, data sha256) is meant
    to be stored with the metrics. Files are rebuilt only when the documents or settings changed.
    """
    from compressor.data.sources import load_documents
    from compressor_eval.tasks import TEMPLATE, write_task

    documents = load_documents(task.source)
    digest = hashlib.sha256()
    for document in documents:
        digest.update(hashlib.sha256(document.encode()).digest())
    digest.update(json.dumps(asdict(settings), sort_keys=True).encode())
    digest.update(TEMPLATE.read_bytes())
    stamp_value = digest.hexdigest()[:16]

    name = task.name
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / f"{name}.jsonl"
    stamp = out_dir / f"{name}.sha256"
    info_path = out_dir / f"{name}.info.json"
    fresh = stamp.is_file() and stamp.read_text() == stamp_value
    if not (fresh and data_path.is_file() and (out_dir / f"{name}.yaml").is_file() and info_path.is_file()):
        records = build_cloze_records(documents, settings)
        write_task(name, records, out_dir)
        info = {
            "kind": "derived next-sentence cloze task (not a published benchmark)",
            "description": task.description,
            "source": task.source.source,
            "split": task.source.split,
            "n_documents": len(documents),
            "n_examples": len(records),
            "chance_accuracy": 1 / settings.n_choices,
            "settings": asdict(settings),
            "data_sha256": hashlib.sha256(data_path.read_bytes()).hexdigest(),
        }
        info_path.write_text(json.dumps(info, indent=1))
        stamp.write_text(stamp_value)
        log.info("built cloze task %s (%d examples from %d documents) in %s", name, len(records), len(documents), out_dir)
    return name, json.loads(info_path.read_text())
