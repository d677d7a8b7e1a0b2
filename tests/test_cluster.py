"""The cluster path end to end on one machine: Ray head + two worker nodes (token auth), an MLflow server, S3 (moto).

``bench/local_cluster.sh`` starts the topology of docs/cluster.md with its own
ports and folder; every study is submitted as the README's cluster section
says (``ray job submit --working-dir . -- ser-study run ... --address auto
--study-dir s3://...``). The module starts the cluster once and stops it at
the end, checking that no process or port is left behind.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from study.io import layout, storage
from study.io.records import read_trial_records
from study_runs import PROVENANCE_COLUMNS, TIME_COLUMNS, built_phases, cache_events, cli, normalized_report

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "local_cluster.sh"
RAY = str(Path(sys.executable).parent / "ray")
PORTS = {"RAY_PORT": 6490, "DASHBOARD_PORT": 8375, "AGENT_PORT": 52600, "MLFLOW_PORT": 5155, "S3_PORT": 9200}
STUDY = ["--set", "phases.epochs=1", "--set", "phases.kmeans.max_fit_frames=5000", "--set", "search.space.layer={choice: [2]}",
         "--set", "search.space.clusters={choice: [4]}", "--set", "search.space.pooling={choice: [average]}", "--set", "search.num_trials=1",
         "--set", "folds=[1, 2]", "--set", "resources.node_wait_s=60"]


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "LOCAL_CLUSTER_DIR": str(root), "BUCKET": "ser-study-test", **{k: str(v) for k, v in PORTS.items()}}
        exports = subprocess.run([str(SCRIPT), "env"], env=self.env, capture_output=True, text=True, check=True).stdout
        for line in exports.splitlines():
            for assignment in line.removeprefix("export ").split():
                name, _, value = assignment.partition("=")
                self.env[name] = value

    def script(self, *args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), *args], env={**self.env, **env}, capture_output=True, text=True, timeout=timeout)

    def submit(self, name: str, *extra: str, **env: str) -> subprocess.Popen:
        """``local_cluster.sh run``: the study ``name`` submitted as a Ray job, in the background."""
        return subprocess.Popen([str(SCRIPT), "run", *STUDY, *extra], env={**self.env, "STUDY_NAME": name, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def study(self, name: str) -> str:
        return f"s3://ser-study-test/studies/{name}"


def _processes_under(root: Path) -> list[str]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if str(root) in command:
            found.append(f"{process.info['pid']}: {command[:200]}")
    return found


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def cluster(small_manifest, tiny_encoder):
    root = Path(tempfile.mkdtemp(prefix="ser-cluster-", dir="/tmp"))  # short: Ray's socket paths under it must stay below 108 bytes
    cluster = Cluster(root)
    cluster.data = ["--set", f"data.manifest={small_manifest}", "--set", f"encoder={tiny_encoder}"]
    started = cluster.script("up", timeout=300)
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL")}
        os.environ.update({k: cluster.env[k] for k in saved})  # this process reads the bucket too, as a user's laptop would
        try:
            yield cluster
        finally:
            for name, value in saved.items():
                os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
    finally:
        stopped = cluster.script("down", timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        deadline = time.monotonic() + 30  # Ray's agents and workers exit a few seconds after their raylet
        while (left := _processes_under(root)) and time.monotonic() < deadline:
            time.sleep(1)
        assert not left, f"processes left behind: {left}"
        assert not [port for port in PORTS.values() if _listening(port)], "a port of the local cluster is still open"
        shutil.rmtree(root, ignore_errors=True)


def _wait(process: subprocess.Popen, timeout: float = 900) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def test_a_submitted_study_spreads_its_folds_and_lands_in_s3_and_the_mlflow_server(cluster, tmp_path):
    output = _wait(cluster.submit("reference", *cluster.data, "--set", "baselines=[egemaps]"))
    study = cluster.study("reference")
    assert "Job 'raysubmit_" in output and "succeeded" in output
    [record] = read_trial_records(study)
    assert record["status"] == "complete" and record["audit"]["clean"]
    nodes = {fold["test_session"]: fold["node"] for fold in record["folds"]}
    assert len(set(nodes.values())) == 2, f"both folds ran on one node: {nodes}"  # the two worker nodes, one CPU each
    assert storage.is_file(storage.join(layout.report_dir(study), "report.md"))
    assert built_phases(study)["finetune"] == 2 and storage.list_files(layout.cache_dir(study), suffix="record.json", recursive=True)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster.env["MLFLOW_URI"])
    experiment = client.get_experiment_by_name("smoke").experiment_id
    runs = client.search_runs([experiment], f"tags.`ser_study.study_dir` = '{study}'")
    kinds = collections.Counter(r.data.tags.get("ser_study.kind") for r in runs)
    assert kinds["trial"] == 1 and kinds["baseline"] == 1
    assert client.search_runs([experiment], "tags.`ser_study.kind` = 'summary'")  # the experiment's summary run
    folds = client.search_runs([experiment], "tags.`ser_study.kind` = 'fold'")
    assert sum(r.data.tags.get("mlflow.parentRunId") in {x.info.run_id for x in runs} for r in folds) == 4
    assert all({"test_ua_mean", "test_wa_mean"} <= set(r.data.metrics) for r in runs if r.data.tags.get("ser_study.kind") == "trial")
    # Report and audit from a machine that only has the bucket and the server.
    for command in ("report", "audit"):
        done = subprocess.run(cli(command, study), env=cluster.env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]


def test_a_lost_worker_and_a_stopped_driver_leave_the_report_of_an_uninterrupted_study(cluster):
    """Worker 1 killed mid-study (its fold retries on worker 2), then the driver job stopped and the study resumed."""
    study = cluster.study("interrupted")
    job = cluster.submit("interrupted", *cluster.data, "--set", "baselines=[egemaps]", SUBMISSION_ID="interrupted-run")
    deadline = time.monotonic() + 600
    while not any(e["event"] == "built" for e in cache_events(study)) and time.monotonic() < deadline:
        time.sleep(1)
    assert cluster.script("stop-worker", "1").returncode == 0
    while sum(e["event"] == "built" for e in cache_events(study)) < 6 and time.monotonic() < deadline:
        time.sleep(1)
    stopped = subprocess.run([RAY, "job", "stop", "interrupted-run"], env=cluster.env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    job.communicate(timeout=120)
    assert cluster.script("start-worker", "1").returncode == 0
    resumed = cluster.script("resume", study, SUBMISSION_ID="interrupted-resume")
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    built_phases(study)  # fails if any artifact was built twice
    drop = TIME_COLUMNS + PROVENANCE_COLUMNS  # which attempt built what differs; every number must not
    reference = {name: text for name, text in normalized_report(cluster.study("reference"), drop).items() if name != "audit.json"}
    assert normalized_report(study, drop) == reference


def test_the_ray_executor_trains_on_the_worker_nodes(cluster):
    # One fold: its three training phases are three Ray Train runs, which is what this test is about.
    _wait(cluster.submit("ray-executor", *cluster.data, "--set", "baselines=[]", "--set", "resources.executor=ray", "--set", "folds=[1]"))
    [record] = read_trial_records(cluster.study("ray-executor"))
    assert record["status"] == "complete" and record["audit"]["clean"]
    # Each training phase ran as a Ray Train run on a worker node (its record names the node); the head runs no training.
    listed = subprocess.run([RAY, "list", "nodes", "--format", "json", "--detail"], env=cluster.env, capture_output=True, text=True, timeout=60, check=True)
    workers = {n["node_id"] for n in json.loads(listed.stdout) if not n["is_head_node"]}
    records = [json.loads(storage.read_text(path)) for path in storage.list_files(layout.cache_dir(cluster.study("ray-executor")), suffix="record.json", recursive=True)]
    training = [r for r in records if r.get("phase") in ("tapt", "cpt", "finetune")]
    assert training and all(r["ray_node"] in workers for r in training), [(r["phase"], r["ray_node"]) for r in training]
