"""Security: what a local study exposes, what the repository holds, and how model files are read.

cluster.yaml's rules (SSH-only ingress, dashboard and MLflow on 127.0.0.1, no
credentials) are in tests/test_cluster_yaml.py.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import torch

from study_runs import cli

REPO = Path(__file__).resolve().parents[1]
CODE_DIRS = ("study", "trainables", "bench")


def _listening_hosts(port: int, pids: set[int] | None = None) -> set[str]:
    """The local addresses on which something (of ``pids``, if given) listens on TCP ``port``."""
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and (pids is None or c.pid in pids)
    }


def _outside_address() -> str | None:
    """An address of this machine other than loopback (None if it has none)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def _get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_local_study_cluster_requires_a_token_and_listens_on_loopback_only(monkeypatch):
    import ray

    from study.tune.runner import connect_ray

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray's default for a new local cluster, as a user gets it
    connect_ray(None)  # what `ser-study run` does without --address
    try:
        host, port = ray.get_runtime_context().worker.node.address_info["webui_url"].rsplit(":", 1)
        assert host == "127.0.0.1"
        assert _listening_hosts(int(port)) == {"127.0.0.1"}
        outside = _outside_address()
        if outside is not None:
            with pytest.raises(OSError):
                socket.create_connection((outside, int(port)), timeout=3).close()
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        url = f"http://127.0.0.1:{port}/api/jobs/"
        assert _get(url) == 401  # no token
        assert _get(url, "not-the-token") == 403
        assert _get(url, token) == 200
    finally:
        ray.shutdown()


def test_the_mlflow_ui_of_a_study_listens_on_loopback_only(small_manifest, tiny_encoder, tmp_path):
    from study.config.loading import load_study
    from study.tune.runner import prepare_study_dir

    study_dir = tmp_path / "study"
    config = load_study(REPO / "search_spaces" / "smoke.yaml", [f"data.manifest={small_manifest}", f"encoder={tiny_encoder}", f"storage.study_dir={study_dir}"])
    prepare_study_dir(config)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "ui.log"
    with open(log, "w") as output:
        ui = subprocess.Popen(cli("ui", str(study_dir), "--port", str(port)), stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (hosts := _listening_hosts(port)):
            assert ui.poll() is None, f"ser-study ui exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the MLflow UI never listened"
            time.sleep(0.5)
        assert hosts == {"127.0.0.1"}
        assert _get(f"http://127.0.0.1:{port}/health") == 200
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()


# -- the repository

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key assignment": re.compile(r"aws_secret_access_key\s*[=:]\s*\S{20,}", re.IGNORECASE),
    "private key": re.compile(r"-----BEGIN (RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    "GCP service account key": re.compile(r'"type"\s*:\s*"service_account"'),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "HuggingFace token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "Ray auth token assignment": re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*\S+"),
}


def _tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    return [REPO / name for name in listed if name and (REPO / name).is_file()]


def test_no_credentials_live_in_the_repository():
    found = []
    for path in _tracked_files():
        text = path.read_bytes().decode("utf-8", errors="ignore")
        found += [f"{path.relative_to(REPO)}: {what}" for what, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
    assert not found, f"credentials in tracked files (use the cloud's own credential chain instead): {found}"
    assert _tracked_files(), "git ls-files listed nothing"


def test_the_secret_patterns_catch_what_they_are_for():
    # Each sample is split in two in this file, so that the scan above does not find it here.
    samples = {
        "AWS access key id": "key = AKIA" + "ABCDEFGHIJKLMNOP",
        "AWS secret key assignment": "aws_secret_access_key" + " = " + "a" * 30,
        "private key": "-----BEGIN OPENSSH " + "PRIVATE KEY-----",
        "GCP service account key": '{"type": ' + '"service_account"}',
        "GitHub token": "ghp_" + "a" * 36,
        "HuggingFace token": "hf_" + "a" * 34,
        "Ray auth token assignment": "RAY_AUTH_TOKEN" + "=abc",
    }
    assert samples.keys() == SECRET_PATTERNS.keys()
    for what, text in samples.items():
        assert SECRET_PATTERNS[what].search(text), what


def test_token_auth_is_never_turned_off():
    for path in _tracked_files():
        if path.suffix in {".py", ".yaml", ".yml", ".sh", ".md", ".toml"} or path.name in {"Makefile"}:
            text = path.read_text(errors="ignore")
            assert not re.search(r"RAY_AUTH_MODE\s*[=:]\s*['\"]?disabled", text), f"{path.relative_to(REPO)} disables Ray token auth"


# -- model files


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
    return None


def test_the_code_reads_model_files_only_as_tensors():
    problems = []
    for directory in CODE_DIRS:
        for path in sorted((REPO / directory).rglob("*.py")):
            for call in _calls(ast.parse(path.read_text(), str(path))):
                name, where = _name(call.func), f"{path.relative_to(REPO)}:{call.lineno}"
                if name.endswith("torch.load") and _keyword(call, "weights_only") is not True:
                    problems.append(f"{where} torch.load without weights_only=True")
                if name in {"pickle.load", "pickle.loads", "joblib.load", "dill.load", "cloudpickle.load"}:
                    problems.append(f"{where} {name}")
                if name.endswith(("np.load", "numpy.load")) and _keyword(call, "allow_pickle") not in (None, False):
                    problems.append(f"{where} np.load(allow_pickle=...)")
                if name.endswith("from_pretrained") and _keyword(call, "trust_remote_code") not in (None, False):
                    problems.append(f"{where} from_pretrained(trust_remote_code=...)")
    assert not problems, problems


class _Payload:
    """A pickle that runs code when loaded: what a malicious checkpoint holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_checkpoint_holding_python_objects_is_refused_without_running_them(tmp_path):
    from trainables.runtime import CHECKPOINT_FILE, load_checkpoint

    marker = tmp_path / "ran"
    torch.save({"model": {"w": torch.zeros(2)}, "evil": _Payload(marker)}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_an_encoder_whose_weights_are_a_pickle_is_refused_without_running_it(tiny_encoder, tmp_path):
    from transformers import AutoModel

    from trainables.models.encoder import EncoderError, load_encoder

    encoder = tmp_path / "encoder"
    encoder.mkdir()
    for config in tiny_encoder.glob("*.json"):  # the HF config and the audio settings, not the weights
        (encoder / config.name).write_bytes(config.read_bytes())
    marker = tmp_path / "ran"
    state = AutoModel.from_pretrained(tiny_encoder).state_dict()
    state["evil"] = _Payload(marker)
    torch.save(state, encoder / "pytorch_model.bin")  # a .bin checkpoint, as older hub models ship
    with pytest.raises(EncoderError, match="refused to load the encoder weights"):
        load_encoder(encoder)
    assert not marker.exists()
    # The same weights without the payload load (a plain .bin is read with weights_only=True).
    del state["evil"]
    torch.save(state, encoder / "pytorch_model.bin")
    assert load_encoder(encoder).info.num_layers == json.loads((tiny_encoder / "config.json").read_text())["num_hidden_layers"]
