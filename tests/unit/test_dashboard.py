"""`compressor dashboard`: optuna-dashboard on the store's database, bound to 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings

import optuna
import pytest

from compressor.errors import CompressorError
from compressor.search import serve_dashboard
from compressor.search.storage import open_storage

METRICS = ["heldout.ppl_token", "size.size_disk_mb"]


def make_study(db_url: str, name: str = "dash-study") -> int:
    """Create a two-objective study the way `run_search` does, with one complete trial."""
    study = optuna.create_study(
        storage=open_storage(db_url), study_name=name, directions=["minimize", "minimize"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(METRICS)
    study.set_user_attr("objectives", METRICS)
    study.add_trial(
        optuna.trial.create_trial(
            params={"stages.0.config.ratio": 0.25},
            distributions={"stages.0.config.ratio": optuna.distributions.FloatDistribution(0.1, 0.5)},
            values=[30.0, 200.0],
            user_attrs={"run": f"{name}-t0"},
        )
    )
    return study._study_id


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str, deadline: float):
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_dashboard_lists_study_objectives(db_url, tmp_path):
    study_id = make_study(db_url)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "compressor.cli", "dashboard", "--db", db_url, "--port", str(port), "--study", "dash-study"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        studies = get_json(f"http://127.0.0.1:{port}/api/studies", deadline)["study_summaries"]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study_id}?after=0", deadline)
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]

    assert [s["study_name"] for s in studies] == ["dash-study"]
    assert studies[0]["directions"] == ["minimize", "minimize"]
    assert {"key": "objectives", "value": json.dumps(METRICS)} in studies[0]["user_attrs"]
    assert detail["objective_names"] == METRICS
    assert len(detail["trials"]) == 1
    assert f"http://127.0.0.1:{port}/dashboard/studies/{study_id}" in output


def test_dashboard_port_in_use(sqlite_url):
    make_study(sqlite_url)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CompressorError, match=f"port {port} on 127.0.0.1 is already in use"):
            serve_dashboard(db_url=sqlite_url, port=port)


def test_dashboard_unknown_study(sqlite_url):
    make_study(sqlite_url)
    with pytest.raises(CompressorError, match="study 'other' not found.*dash-study"):
        serve_dashboard(db_url=sqlite_url, study_name="other", port=free_port())
