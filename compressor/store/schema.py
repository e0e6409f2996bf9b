"""SQLAlchemy 2 models of the store."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Run(Base):
    """One execution of a recipe, identified by its name."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    recipe_name: Mapped[str] = mapped_column(String(200))
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)
    output_dir: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="running")  # running | finished | failed
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    stages: Mapped[list["StageRecord"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="StageRecord.index"
    )


class StageRecord(Base):
    """One stage of a run. ``config_hash`` covers the stage and every stage before it."""

    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("run_id", "index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    plugin: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="running")  # running | finished | failed
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    seconds: Mapped[float | None] = mapped_column(Float, default=None)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    run: Mapped[Run] = relationship(back_populates="stages")
    metrics: Mapped[list["Metric"]] = relationship(back_populates="stage", cascade="all, delete-orphan")
    artifacts: Mapped[list["Artifact"]] = relationship(back_populates="stage", cascade="all, delete-orphan")


class Metric(Base):
    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float | None] = mapped_column(Float)

    stage: Mapped[StageRecord] = relationship(back_populates="metrics")


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)

    stage: Mapped[StageRecord] = relationship(back_populates="artifacts")


class MaskEvaluation(Base):
    """The mean token NLL of the model with only the layers of ``mask`` kept.

    ``mask`` is a string of '0'/'1', one character per layer of the model that
    ``model_fp`` identifies. ``status`` is ``ok`` or ``nonfinite`` (NaN or inf loss).
    """

    __tablename__ = "mask_evaluations"
    __table_args__ = (UniqueConstraint("model_fp", "data_fp", "mask"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_fp: Mapped[str] = mapped_column(String(64), index=True)
    data_fp: Mapped[str] = mapped_column(String(64), index=True)
    mask: Mapped[str] = mapped_column(String(512))
    nll: Mapped[float | None] = mapped_column(Float)
    n_tokens: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="ok")
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
