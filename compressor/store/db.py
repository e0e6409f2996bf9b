"""Engine and session handling for the store (SQLite by default, PostgreSQL supported)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

from sqlalchemy import create_engine, event, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from compressor.errors import CompressorError
from compressor.store.schema import Artifact, Base, MaskEvaluation, Metric, Run, StageRecord

DEFAULT_DB_URL = "sqlite:///compressor.db"
DB_ENV = "COMPRESSOR_DB"
SQLITE_BUSY_TIMEOUT_S = 60


def resolve_db_url(cli_value: str | None = None, recipe_value: str | None = None) -> str:
    """Pick the database URL: the `--db` option, then the recipe, then COMPRESSOR_DB, then the default."""
    return cli_value or recipe_value or os.environ.get(DB_ENV) or DEFAULT_DB_URL


def _set_sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (the dashboard, a second worker) proceed while one writer commits.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            event.listen(engine, "connect", _set_sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ModuleNotFoundError) as exc:
        raise CompressorError(
            f"cannot use database URL {url!r}: {exc}. Use sqlite:///PATH, or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB with `pip install 'compressor[postgres]'`."
        ) from None
    return engine


class Store:
    """Access to the store's tables. Each write happens in its own transaction."""

    def __init__(self, url: str | None = None):
        self.url = resolve_db_url(url)
        self.engine = make_engine(self.url)
        try:
            Base.metadata.create_all(self.engine)  # idempotent: existing tables are kept
        except OperationalError as exc:
            raise CompressorError(f"cannot open the store at {self.url!r}: {exc.orig}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # ----------------------------------------------------------------- runs and stages

    def get_run(self, name: str) -> Run | None:
        with self.session() as session:
            return session.scalar(select(Run).where(Run.name == name))

    def start_run(self, name: str, recipe_name: str, recipe: dict[str, Any], output_dir: str) -> Run:
        with self.session() as session:
            run = session.scalar(select(Run).where(Run.name == name))
            if run is None:
                run = Run(name=name, recipe_name=recipe_name, recipe=recipe, output_dir=output_dir)
                session.add(run)
            else:
                run.recipe = recipe
                run.output_dir = output_dir
                run.status = "running"
                run.error = None
                run.finished_at = None
            session.flush()
            return run

    def finish_run(self, run_id: int, status: str, error: str | None = None) -> None:
        with self.session() as session:
            run = session.get(Run, run_id)
            run.status = status
            run.error = error
            run.finished_at = datetime.now(timezone.utc)

    def stage_records(self, run_id: int) -> list[StageRecord]:
        with self.session() as session:
            rows = session.scalars(
                select(StageRecord).where(StageRecord.run_id == run_id).order_by(StageRecord.index)
            ).all()
            for row in rows:
                _ = row.metrics, row.artifacts  # load while the session is open
            return list(rows)

    def begin_stage(self, run_id: int, index: int, name: str, kind: str, plugin: str, config: dict, config_hash: str) -> int:
        """Create (or reset) the record of stage ``index`` and every later stage of the run."""
        with self.session() as session:
            for stale in session.scalars(
                select(StageRecord).where(StageRecord.run_id == run_id, StageRecord.index >= index)
            ):
                session.delete(stale)
            session.flush()
            record = StageRecord(
                run_id=run_id, index=index, name=name, kind=kind, plugin=plugin,
                config=config, config_hash=config_hash, status="running",
            )
            session.add(record)
            session.flush()
            return record.id

    def finish_stage(self, stage_id: int, result: dict[str, Any], metrics: dict[str, float], artifacts: dict[str, str], seconds: float) -> None:
        """Store a stage's result, metrics and artifacts and mark it finished, in one transaction."""
        with self.session() as session:
            record = session.get(StageRecord, stage_id)
            record.result = result
            record.seconds = seconds
            record.metrics = [Metric(name=k, value=_finite_or_none(v)) for k, v in metrics.items()]
            record.artifacts = [Artifact(label=k, path=str(v)) for k, v in artifacts.items()]
            record.status = "finished"
            record.finished_at = datetime.now(timezone.utc)

    def fail_stage(self, stage_id: int, error: str, seconds: float) -> None:
        with self.session() as session:
            record = session.get(StageRecord, stage_id)
            record.status = "failed"
            record.error = error
            record.seconds = seconds
            record.finished_at = datetime.now(timezone.utc)

    def list_runs(self) -> list[Run]:
        with self.session() as session:
            return list(session.scalars(select(Run).order_by(Run.created_at)).all())

    # ----------------------------------------------------------------- mask evaluations

    def load_mask_evaluations(self, model_fp: str, data_fp: str) -> dict[str, MaskEvaluation]:
        with self.session() as session:
            rows = session.scalars(
                select(MaskEvaluation).where(MaskEvaluation.model_fp == model_fp, MaskEvaluation.data_fp == data_fp)
            ).all()
            return {row.mask: row for row in rows}

    def add_mask_evaluations(self, model_fp: str, data_fp: str, rows: list[dict[str, Any]]) -> None:
        """Insert evaluations; a mask already stored (by another worker) is left as it is."""
        if not rows:
            return
        values = [
            dict(model_fp=model_fp, data_fp=data_fp, mask=r["mask"], nll=_finite_or_none(r["nll"]),
                 n_tokens=r["n_tokens"], status=r["status"], seconds=r["seconds"],
                 created_at=datetime.now(timezone.utc))
            for r in rows
        ]
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        if self.engine.dialect.name not in ("postgresql", "sqlite"):
            with self.session() as session:
                known = self.load_mask_evaluations(model_fp, data_fp)
                session.add_all(MaskEvaluation(**v) for v in values if v["mask"] not in known)
            return
        statement = insert(MaskEvaluation).values(values).on_conflict_do_nothing(
            index_elements=["model_fp", "data_fp", "mask"]
        )
        with self.session() as session:
            session.execute(statement)

    def count_mask_evaluations(self, model_fp: str | None = None) -> int:
        from sqlalchemy import func

        with self.session() as session:
            query = select(func.count(MaskEvaluation.id))
            if model_fp is not None:
                query = query.where(MaskEvaluation.model_fp == model_fp)
            return session.scalar(query)


def _finite_or_none(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None
