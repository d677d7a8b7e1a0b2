"""``ser-study ui``: the real MLflow server it starts opens on the study's runs, which carry UA and WA."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from study_runs import cli

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def test_ui_prints_the_runs_view_and_its_server_lists_the_trials_with_ua_and_wa(reference_study):
    port = _free_port()
    ui = subprocess.Popen(cli("ui", str(reference_study), "--port", str(port)), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        line = ui.stdout.readline()
        match = re.search(rf"http://127\.0\.0\.1:{port}/#/experiments/(\d+)/runs\?viewStateShareKey=ser-study-ua-wa", line)
        assert match, line
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                experiment = _api(base, "/api/2.0/mlflow/experiments/get?experiment_id=" + match.group(1))["experiment"]
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, "the MLflow server did not come up"
                time.sleep(0.5)
        assert experiment["name"] == "faults"
        tags = {t["key"]: t["value"] for t in experiment["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs table
        view = json.loads(json.loads(tags["mlflow.sharedViewState.ser-study-ua-wa"])["state"])  # the view the URL opens
        assert {"metrics.`test_ua_mean`", "metrics.`test_wa_mean`", "metrics.`val_ua_mean`", "tags.`method`"} <= set(view["selectedColumns"])

        runs = _api(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [match.group(1)], "filter": "tags.`ser_study.kind` = 'trial'"})["runs"]
        assert len(runs) == 2
        for run in runs:
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            for name in ("val_ua_mean", "val_wa_mean", "test_ua_mean", "test_wa_mean", "test_ua_std", "test_wa_std"):
                assert 0.0 <= metrics[name] <= 1.0, name
            assert metrics["folds_done"] == metrics["folds_total"] == 2
    finally:
        os.killpg(ui.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            ui.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
