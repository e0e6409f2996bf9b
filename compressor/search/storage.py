"""Optuna's RDBStorage on the store's database, with heartbeats that re-queue crashed trials.

NOTE: SQLite suits one machine and a few workers. The store sets WAL mode on the
database file (readers such as the dashboard never block the writer) and every
connection waits up to 60 s for a lock. tests/unit/test_search.py runs two local
workers on one SQLite study and checks that no trial is lost. Writers still take turns, and SQLite over a network file
system is unsafe, so for more workers or several machines use PostgreSQL:
`--db postgresql+psycopg://USER:PASSWORD@HOST/DB`.
"""

from __future__ import annotations

import logging
import time
import warnings

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from compressor.errors import CompressorError
from compressor.store import Store
from compressor.store.db import SQLITE_BUSY_TIMEOUT_S

log = logging.getLogger(__name__)

# Two workers that start together may both create the tables and, on PostgreSQL, their enum types.
# The worker that loses the race gets a database error and retries.
_OPEN_ATTEMPTS = 3


def printable_url(url: str) -> str:
    """Return ``url`` with any password masked, for messages and reports."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_store(url: str) -> Store:
    """Open the compressor store at ``url`` (this also switches a SQLite file to WAL mode)."""
    for attempt in range(1, _OPEN_ATTEMPTS + 1):
        try:
            return Store(url)
        except (CompressorError, DBAPIError):
            if attempt == _OPEN_ATTEMPTS:
                raise
            log.info("store at %s is busy (attempt %d of %d), retrying", printable_url(url), attempt, _OPEN_ATTEMPTS)
            time.sleep(attempt)
    raise AssertionError("unreachable")


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None) -> optuna.storages.RDBStorage:
    """Open Optuna's storage at ``url``.

    With ``heartbeat_interval`` (seconds), each running trial records a heartbeat, and
    a trial silent for ``grace_period`` seconds is failed and queued again with the same
    parameters and run name, so the rerun resumes its finished stages.
    """
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    else:
        engine_kwargs = {"pool_pre_ping": True}

    heartbeat_kwargs = {}
    if heartbeat_interval is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)
        heartbeat_kwargs = dict(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period or 2 * heartbeat_interval,
            heartbeat_stale_trial_callback=retry,
        )

    for attempt in range(1, _OPEN_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats, since optuna 2.9
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat_kwargs)
        except (ArgumentError, ModuleNotFoundError, ImportError) as exc:
            raise CompressorError(
                f"cannot open the study database {printable_url(url)!r}: {exc}. Use sqlite:///PATH, or "
                "postgresql+psycopg://USER:PASSWORD@HOST/DB with `pip install 'compressor[postgres]'`."
            ) from None
        except DBAPIError as exc:
            if attempt == _OPEN_ATTEMPTS:
                raise CompressorError(f"cannot open the study database {printable_url(url)!r}: {exc.orig}") from None
            log.info("study database is busy (attempt %d of %d): %s", attempt, _OPEN_ATTEMPTS, exc.orig)
            time.sleep(attempt)
    raise AssertionError("unreachable")


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the running trials whose heartbeat stopped; the storage's callback queues them again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
