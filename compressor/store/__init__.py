"""The store: runs, stages, metrics, artifacts and mask evaluations in one SQL database."""

from compressor.store.db import DEFAULT_DB_URL, Store, resolve_db_url
from compressor.store.schema import Artifact, Base, MaskEvaluation, Metric, Run, StageRecord

__all__ = [
    "DEFAULT_DB_URL",
    "Artifact",
    "Base",
    "MaskEvaluation",
    "Metric",
    "Run",
    "StageRecord",
    "Store",
    "resolve_db_url",
]
