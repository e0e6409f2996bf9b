"""The store on SQLite and PostgreSQL: idempotent schema, transactional stage records, mask cache."""

import pytest
from sqlalchemy import text

from compressor.errors import CompressorError
from compressor.store import Store


def test_schema_creation_is_idempotent(db_url):
    Store(db_url)
    store = Store(db_url)  # a second open must keep the tables and their rows
    store.start_run("r1", "recipe", {"a": 1}, "out")
    assert [r.name for r in Store(db_url).list_runs()] == ["r1"]


def test_stage_records_keep_results_metrics_and_artifacts(db_url):
    store = Store(db_url)
    run = store.start_run("r1", "recipe", {}, "out")
    stage_id = store.begin_stage(run.id, 0, "ppl", "evaluator", "perplexity", {"x": 1}, "h0")
    store.finish_stage(stage_id, {"selected": [1, 2]}, {"ppl_token": 12.5, "bad": float("nan")}, {"plot": "a.png"}, 1.5)

    (record,) = store.stage_records(run.id)
    assert record.status == "finished"
    assert record.result == {"selected": [1, 2]}
    assert {m.name: m.value for m in record.metrics} == {"ppl_token": 12.5, "bad": None}
    assert [(a.label, a.path) for a in record.artifacts] == [("plot", "a.png")]


def test_begin_stage_resets_later_stages(db_url):
    store = Store(db_url)
    run = store.start_run("r1", "recipe", {}, "out")
    for index in range(3):
        sid = store.begin_stage(run.id, index, f"s{index}", "evaluator", "p", {}, f"h{index}")
        store.finish_stage(sid, {}, {}, {}, 0.1)

    store.begin_stage(run.id, 1, "s1", "evaluator", "p", {}, "new")

    records = store.stage_records(run.id)
    assert [(r.index, r.status) for r in records] == [(0, "finished"), (1, "running")]


def test_failed_stage_keeps_error(db_url):
    store = Store(db_url)
    run = store.start_run("r1", "recipe", {}, "out")
    sid = store.begin_stage(run.id, 0, "s0", "quantizer", "gptq", {}, "h")
    store.fail_stage(sid, "Cholesky failed", 2.0)
    (record,) = store.stage_records(run.id)
    assert (record.status, record.error) == ("failed", "Cholesky failed")


def test_mask_evaluations_insert_once(db_url):
    store = Store(db_url)
    rows = [
        {"mask": "1101", "nll": 2.5, "n_tokens": 100, "status": "ok", "seconds": 0.1},
        {"mask": "0111", "nll": float("inf"), "n_tokens": 100, "status": "nonfinite", "seconds": 0.1},
    ]
    store.add_mask_evaluations("model", "data", rows)
    store.add_mask_evaluations("model", "data", [dict(rows[0], nll=9.9)])  # a second worker's duplicate

    stored = store.load_mask_evaluations("model", "data")
    assert set(stored) == {"1101", "0111"}
    assert stored["1101"].nll == 2.5
    assert stored["0111"].status == "nonfinite"
    assert stored["0111"].nll is None
    assert store.count_mask_evaluations("model") == 2
    assert store.load_mask_evaluations("model", "other-data") == {}


def test_sqlite_store_uses_wal(sqlite_url):
    store = Store(sqlite_url)
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000


def test_invalid_url_gets_clear_error():
    with pytest.raises(CompressorError, match="cannot use database URL 'nosuchdb://x'"):
        Store("nosuchdb://x")
