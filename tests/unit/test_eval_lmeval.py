"""lm_eval evaluator: cloze and BIG-bench task building, local tasks, in-memory scoring that matches a reload."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from compressor.errors import CompressorError
from compressor.recipe import TextSpec
from compressor_eval.lmeval import LmEvalConfig, LmEvalEvaluator, TaskRef, find_task_json, resolve_tasks, run_lm_eval
from compressor_eval.tasks import build_bigbench_task, convert_examples, lm_eval_task_name, write_task
from compressor_eval.tasks.cloze import CLOZE_TASKS, ClozeSettings, ClozeTask, build_cloze_records, build_cloze_task, split_sentences
from conftest import make_tiny_llama

N_DOCS = 16


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return make_tiny_llama(len(tiny_tokenizer), num_layers=2, seed=2)


@pytest.fixture(scope="module")
def records(tiny_corpus) -> list[dict]:
    rng = random.Random(5)
    words = tiny_corpus.lower().replace(".", "").split()
    docs = []
    for _ in range(N_DOCS):
        query = " ".join(rng.choice(words) for _ in range(6))
        choices = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 3))) for _ in range(3)]
        docs.append({"query": query, "choices": choices, "label": rng.randrange(3)})
    return docs


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, records):
    folder = tmp_path_factory.mktemp("tasks")
    write_task("toy_mc", records, folder)
    return folder


def manual_accuracy(model, tokenizer, records) -> tuple[float, float]:
    """Accuracy by summed log-likelihood of " " + choice, and by that sum per byte of the choice."""
    hits = 0
    hits_norm = 0
    for doc in records:
        context = tokenizer(doc["query"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in doc["choices"]:
            whole = tokenizer(doc["query"] + " " + choice, add_special_tokens=False)["input_ids"]
            continuation = whole[len(context):]
            with torch.no_grad():
                log_probs = model(input_ids=torch.tensor([whole])).logits[0].float().log_softmax(-1)
            offset = len(whole) - len(continuation)
            total = sum(log_probs[offset + j - 1, token].item() for j, token in enumerate(continuation))
            scores.append((total, total / len((" " + choice).encode())))
        hits += max(range(len(scores)), key=lambda k: scores[k][0]) == doc["label"]
        hits_norm += max(range(len(scores)), key=lambda k: scores[k][1]) == doc["label"]
    return hits / len(records), hits_norm / len(records)


def test_local_task_matches_manual_scoring(model, tiny_tokenizer, task_dir, records):
    result = run_lm_eval(model, tiny_tokenizer, [TaskRef("toy", "toy_mc")], [task_dir], batch_size=4)
    acc, acc_norm = manual_accuracy(model, tiny_tokenizer, records)

    metrics = result["metrics"]
    assert set(metrics) == {"toy.acc", "toy.acc_stderr", "toy.acc_norm", "toy.acc_norm_stderr"}
    assert metrics["toy.acc"] == pytest.approx(acc)
    assert metrics["toy.acc_norm"] == pytest.approx(acc_norm)
    assert result["tasks"]["toy"]["n_examples"] == N_DOCS


def test_batch_size_does_not_change_scores(model, tiny_tokenizer, task_dir):
    unbatched = run_lm_eval(model, tiny_tokenizer, [TaskRef("toy", "toy_mc")], [task_dir], batch_size=1)
    batched = run_lm_eval(model, tiny_tokenizer, [TaskRef("toy", "toy_mc")], [task_dir], batch_size=8)
    assert unbatched["metrics"] == batched["metrics"]


def test_in_memory_matches_saved_and_reloaded(model, tiny_tokenizer, task_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)

    in_memory = run_lm_eval(model, tiny_tokenizer, [TaskRef("toy", "toy_mc")], [task_dir], batch_size=8)
    from_disk = run_lm_eval(reloaded, reloaded_tokenizer, [TaskRef("toy", "toy_mc")], [task_dir], batch_size=8)
    assert in_memory["metrics"] == from_disk["metrics"]


def test_limit_caps_examples(model, tiny_tokenizer, task_dir):
    result = run_lm_eval(model, tiny_tokenizer, [TaskRef("toy", "toy_mc")], [task_dir], limit=5, batch_size=8)
    assert result["tasks"]["toy"]["n_examples"] == 5
    assert result["tasks"]["toy"]["n_examples_total"] == N_DOCS


BIGBENCH_TASK = {
    "name": "toy",
    "task_prefix": "Answer the question.\n",
    "examples": [
        {"input": "Where is the nation?", "target_scores": {"here": 0, "there": 1, "nowhere": 0}},
        {"input": "Who makes law?", "target_scores": {"congress": 1, "energy": 0}},
        {"input": "What is trade?", "target_scores": {"work": 1, "peace": 1, "power": 0}},
    ],
}


def test_convert_examples_picks_best_choice():
    records = convert_examples(BIGBENCH_TASK)
    assert [r["label"] for r in records] == [1, 0, 0]
    assert records[2]["labels"] == [0, 1]
    assert records[0]["choices"] == ["here", "there", "nowhere"]
    assert records[0]["query"] == "Answer the question.\nQ: Where is the nation?\nA:"


def test_convert_examples_uses_task_prefixes():
    task = {**BIGBENCH_TASK, "example_input_prefix": "Question: ", "example_output_prefix": "\nAnswer: "}
    assert convert_examples(task)[1]["query"] == "Answer the question.\nQuestion: Who makes law?\nAnswer:"


def test_convert_rejects_generative_task():
    task = {"examples": [{"input": "2+2=", "target": "4"}]}
    with pytest.raises(CompressorError, match="multiple-choice"):
        convert_examples(task, source="arithmetic/task.json")


def test_task_name_avoids_lm_eval_names():
    assert lm_eval_task_name("social_iqa") == "bigbench_social_iqa_mc"
    assert lm_eval_task_name("abstract_narrative_understanding/4_distractors") == (
        "bigbench_abstract_narrative_understanding_4_distractors_mc"
    )


def test_resolve_tasks_maps_short_names():
    refs = resolve_tasks(["social_iqa", "bigbench:winowhy", "hellaswag"])
    assert [(r.key, r.bigbench_task) for r in refs] == [
        ("social_iqa", "social_iqa"), ("winowhy", "winowhy"), ("hellaswag", None)
    ]
    assert refs[2].lm_eval_name == "hellaswag"


def test_evaluator_runs_bigbench_task_offline(model, tiny_tokenizer, tmp_path, monkeypatch):
    task_json = tmp_path / "toy" / "task.json"
    task_json.parent.mkdir()
    task_json.write_text(json.dumps(BIGBENCH_TASK))
    requested = []

    def fake_asset_path(name):
        requested.append(name)
        return task_json

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("compressor.assets.asset_path", fake_asset_path)

    config = LmEvalConfig(tasks=["bigbench:toy"], limit=2, batch_size=2, seed=3)
    handle = SimpleNamespace(model=model, tokenizer=tiny_tokenizer, device="cpu")
    result = LmEvalEvaluator(config).run(handle, SimpleNamespace(seed=0))

    assert requested == ["bigbench:toy"]
    assert set(result.metrics) == {"toy.acc", "toy.acc_stderr", "toy.acc_norm", "toy.acc_norm_stderr"}
    assert 0.0 <= result.metrics["toy.acc"] <= 1.0
    assert result.data["limit"] == 2
    assert result.data["seed"] == 3
    assert result.data["tasks"]["toy"]["lm_eval_task"] == "bigbench_toy_mc"
    assert result.data["tasks"]["toy"]["n_examples"] == 2
    assert (tmp_path / "cache" / "lm_eval_tasks" / "bigbench_toy_mc.jsonl").is_file()


def test_build_bigbench_task_writes_absolute_data_path(tmp_path):
    task_json = tmp_path / "task.json"
    task_json.write_text(json.dumps(BIGBENCH_TASK))
    name = build_bigbench_task(task_json, "toy", tmp_path / "out")

    import yaml

    config = yaml.safe_load((tmp_path / "out" / f"{name}.yaml").read_text())
    data_file = config["dataset_kwargs"]["data_files"]["test"]
    assert config["task"] == "bigbench_toy_mc"
    assert data_file.startswith("/")
    assert len((tmp_path / "out" / f"{name}.jsonl").read_text().splitlines()) == 3


def test_unknown_local_task_is_an_error(model, tiny_tokenizer, task_dir):
    with pytest.raises(CompressorError, match="no_such_task_xyz"):
        run_lm_eval(model, tiny_tokenizer, [TaskRef("x", "no_such_task_xyz")], [task_dir])


def test_config_rejects_duplicate_tasks():
    with pytest.raises(ValidationError, match="twice"):
        LmEvalConfig(tasks=["social_iqa", "social_iqa"])


def test_bigbench_dir_replaces_asset(tmp_path, monkeypatch):
    def no_asset(name):
        raise AssertionError(f"asset {name} requested although bigbench_dir is set")

    monkeypatch.setattr("compressor.assets.asset_path", no_asset)
    task_json = tmp_path / "toy" / "task.json"
    task_json.parent.mkdir()
    task_json.write_text(json.dumps(BIGBENCH_TASK))

    assert find_task_json("toy", str(tmp_path)) == task_json
    with pytest.raises(CompressorError, match="missing_task"):
        find_task_json("missing_task", str(tmp_path))


def test_bigbench_without_checkout_explains_pypi(monkeypatch):
    def unavailable(name):
        raise CompressorError(f"asset {name!r} cannot be pulled")

    monkeypatch.setattr("compressor.assets.asset_path", unavailable)
    with pytest.raises(CompressorError, match="bigbench_dir") as error:
        find_task_json("social_iqa", None)
    assert "not on PyPI" in str(error.value)
    assert "sotu_cloze" in str(error.value)


def test_default_tasks_are_offline_cloze_tasks():
    config = LmEvalConfig()
    assert config.tasks == ["sotu_cloze", "brown_cloze"]
    refs = resolve_tasks(config.tasks)
    assert [r.cloze_task for r in refs] == ["sotu_cloze", "brown_cloze"]
    assert CLOZE_TASKS["sotu_cloze"].source == TextSpec(source="sotu", split="heldout")


# --------------------------------------------------------------------------- cloze tasks

TOPICS = ["river", "budget", "school", "harbor", "army", "farm", "court", "railway"]


def make_documents(n_documents: int = 4, n_sentences: int = 12) -> list[str]:
    """Documents whose sentences name their document and position, with lengths of 8 to 15 words."""
    documents = []
    for doc in range(n_documents):
        sentences = []
        for index in range(n_sentences):
            filler = " ".join(TOPICS[(doc + k) % len(TOPICS)] for k in range(index % 8))
            sentences.append(f"Document {doc} sentence {index} talks about the {filler} today.".replace("  ", " "))
        documents.append("\n\n".join(" ".join(sentences[i:i + 3]) for i in range(0, n_sentences, 3)))
    return documents


def test_split_sentences_keeps_abbreviations():
    text = "Mr. Speaker, the U.S. Army is here. We thank Dr. Smith!  Is it done? \"Yes,\" he said.\nNew line 2 begins."
    assert split_sentences(text) == [
        "Mr. Speaker, the U.S. Army is here.",
        "We thank Dr. Smith!",
        "Is it done?",
        '"Yes," he said.',
        "New line 2 begins.",
    ]


def test_cloze_records_hold_true_next_sentence():
    documents = make_documents()
    settings = ClozeSettings(n_examples=20, context_sentences=2, min_words=8, max_words=15, seed=3)
    records = build_cloze_records(documents, settings)
    split = [split_sentences(d) for d in documents]

    assert len(records) == 20
    for record in records:
        doc = record["document"]
        true_sentence = record["choices"][record["label"]]
        index = split[doc].index(true_sentence)
        assert record["query"] == " ".join(split[doc][index - 2:index])
        assert len(record["choices"]) == 4
        assert len(set(record["choices"])) == 4


def test_cloze_distractors_from_other_documents_of_similar_length():
    documents = make_documents()
    settings = ClozeSettings(n_examples=30, context_sentences=1, min_words=8, max_words=15, length_tolerance=0.1)
    for record in build_cloze_records(documents, settings):
        true_sentence = record["choices"][record["label"]]
        length = len(true_sentence.split())
        for number, choice in enumerate(record["choices"]):
            if number == record["label"]:
                continue
            assert not choice.startswith(f"Document {record['document']} ")
            # The slack is 10 % of the length, but at least 2 words.
            assert abs(len(choice.split()) - length) <= 2


def test_cloze_records_are_deterministic_per_seed():
    documents = make_documents()
    first = build_cloze_records(documents, ClozeSettings(n_examples=10, seed=7))
    again = build_cloze_records(documents, ClozeSettings(n_examples=10, seed=7))
    other = build_cloze_records(documents, ClozeSettings(n_examples=10, seed=8))
    assert first == again
    assert first != other


def test_cloze_labels_are_spread_over_positions():
    records = build_cloze_records(make_documents(6, 20), ClozeSettings(n_examples=80, context_sentences=1))
    counts = [sum(r["label"] == position for r in records) for position in range(4)]
    assert min(counts) >= 8


def test_cloze_needs_two_documents():
    with pytest.raises(CompressorError, match="at least 2 documents"):
        build_cloze_records(make_documents(1), ClozeSettings())


def test_cloze_rejects_documents_without_eligible_sentences():
    with pytest.raises(CompressorError, match="min_words"):
        build_cloze_records(["Too short. Far too short.", "Also short. Very short."], ClozeSettings())


@pytest.fixture()
def toy_cloze(tmp_path, monkeypatch):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_documents()))
    task = ClozeTask(name="toy_cloze", source=TextSpec(source=f"file:{corpus}"), description="toy documents")
    monkeypatch.setitem(CLOZE_TASKS, "toy_cloze", task)
    return task


def test_build_cloze_task_writes_files_and_info(toy_cloze, tmp_path):
    out = tmp_path / "out"
    name, info = build_cloze_task(toy_cloze, out, ClozeSettings(n_examples=12, max_words=15))

    assert name == "toy_cloze"
    lines = (out / "toy_cloze.jsonl").read_text().splitlines()
    assert len(lines) == 12
    assert info["n_examples"] == 12
    assert info["n_documents"] == 4
    assert info["chance_accuracy"] == 0.25
    assert info["settings"]["max_words"] == 15
    assert "not a published benchmark" in info["kind"]

    stamp = (out / "toy_cloze.sha256").read_text()
    build_cloze_task(toy_cloze, out, ClozeSettings(n_examples=12, max_words=15))
    assert (out / "toy_cloze.sha256").read_text() == stamp
    build_cloze_task(toy_cloze, out, ClozeSettings(n_examples=6, max_words=15))
    assert len((out / "toy_cloze.jsonl").read_text().splitlines()) == 6


def test_evaluator_runs_cloze_task_offline(model, tiny_tokenizer, toy_cloze, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    config = LmEvalConfig(tasks=["toy_cloze"], limit=6, batch_size=4)
    handle = SimpleNamespace(model=model, tokenizer=tiny_tokenizer, device="cpu")
    result = LmEvalEvaluator(config).run(handle, SimpleNamespace(seed=0))

    assert set(result.metrics) == {"toy_cloze.acc", "toy_cloze.acc_stderr", "toy_cloze.acc_norm", "toy_cloze.acc_norm_stderr"}
    task = result.data["tasks"]["toy_cloze"]
    assert task["lm_eval_task"] == "toy_cloze"
    assert task["n_examples"] == 6
    assert task["derived_task"]["source"].startswith("file:")
    assert task["derived_task"]["settings"]["n_choices"] == 4
    assert (tmp_path / "cache" / "lm_eval_tasks" / "toy_cloze.jsonl").is_file()
