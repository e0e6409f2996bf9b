"""Optuna search over a recipe's `search:` space, stored in the store's database, and its dashboard."""

from compressor.search.dashboard import serve_dashboard
from compressor.search.results import SearchOutcome
from compressor.search.space import SearchSpace
from compressor.search.study import run_search

__all__ = ["SearchOutcome", "SearchSpace", "run_search", "serve_dashboard"]
