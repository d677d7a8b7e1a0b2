"""cluster.yaml: Ray's own schema and config preparation, then the project's rules.

What runs here is what `ray up` does before it first talks to AWS:
``prepare_config`` (merge with Ray's AWS defaults.yaml, merge setup commands,
check the Docker section, fill per-type worker bounds) and ``validate_config``
(``ray/autoscaler/ray-schema.json`` plus Ray's cross-field checks). Both are
offline. What is not covered: the AWS provider's own steps (importing boto3,
detecting instance resources, resolving the IAM profiles, key pair, subnets,
security group and AMI), which need an AWS account; docs/cluster.md covers
those by hand.

The project's rules: Ray versions match the installed ray, the head has no
GPU, GPU workers scale from zero, the dashboard and MLflow listen on
127.0.0.1 only, no explicit ingress other than SSH, no credentials, no
hyperparameters, every command parses as bash. Each rule is also run against a
deliberately broken copy, so a rule that stopped biting would show.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
CLUSTER_DOC = REPO / "docs" / "cluster.md"

PROJECT_MOUNT = "/home/ray/ser-study"
IMAGE_RE = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py(?P<py>\d+)-(?P<kind>cpu|gpu)$")
COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
# Keys that belong in a study file (search_spaces/*.yaml), never in cluster.yaml.
HYPERPARAMETER_KEYS = {
    "layer", "layers", "k", "num_clusters", "clusters", "mask_ratio", "pooling",
    "lr", "learning_rate", "batch_size", "epochs", "seed", "search_space", "param_space",
}

# --------------------------------------------------------------------------- helpers


def _load(text: str) -> dict:
    config = yaml.safe_load(text)
    assert isinstance(config, dict), "cluster.yaml must be a mapping"
    return config


def _ray_checked(config: dict) -> dict:
    """What `ray up` does before its first AWS call; raises on a bad config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _worker_types(config: dict) -> dict:
    return {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}


def _all_commands(config: dict) -> list[str]:
    commands = []
    for key in COMMAND_LISTS:
        commands += config.get(key) or []
    for node_type in config["available_node_types"].values():
        for key in ("initialization_commands", "worker_setup_commands"):
            commands += node_type.get(key) or []
    return commands


def _option(command: str, name: str) -> str | None:
    """Value of `--name=value` or `--name value` (not a longer option ending in -name)."""
    match = re.search(rf"(?<![\w-])--{re.escape(name)}(?:=|\s+)(\S+)", command)
    return match.group(1).strip("'\"") if match else None


def _head_start_command(config: dict) -> str:
    found = [c for c in config["head_start_ray_commands"] if "ray start" in c and "--head" in c]
    assert len(found) == 1, f"expected one `ray start --head` command, found {len(found)}"
    return found[0]


def _mlflow_server_command(config: dict) -> str:
    found = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(found) == 1, f"expected one `mlflow server` command on the head, found {len(found)}"
    return found[0][found[0].index("mlflow server"):]


_KEY_ID = re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])")
_SECRET_NAMES = re.compile(r"aws_secret_access_key|aws_access_key_id|aws_session_token|secretaccesskey", re.I)
_SECRET_40 = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_ACCOUNT_ARN = re.compile(r"arn:aws:iam::\d{12}:")


def secret_problems(text: str) -> list[str]:
    problems = [f"AWS access key id: {m}" for m in _KEY_ID.findall(text)]
    problems += [f"credential name: {m}" for m in _SECRET_NAMES.findall(text)]
    problems += [
        f"looks like a secret access key: {m}"
        for m in _SECRET_40.findall(text)
        if re.search(r"[a-z]", m) and re.search(r"[A-Z]", m) and re.search(r"\d", m)
    ]
    problems += [f"private key block: {m}" for m in _PRIVATE_KEY.findall(text)]
    problems += [f"account-specific ARN: {m}" for m in _ACCOUNT_ARN.findall(text)]
    return problems


def ingress_problems(config: dict) -> list[str]:
    """Explicit inbound rules may only open SSH (Ray always adds its own SSH and intra-cluster rules)."""
    rules = (config["provider"].get("security_group") or {}).get("IpPermissions") or []
    problems = []
    for rule in rules:
        ports = (rule.get("FromPort"), rule.get("ToPort"))
        if str(rule.get("IpProtocol", "")).lower() != "tcp" or ports != (22, 22):
            problems.append(f"inbound rule opens more than SSH: {rule}")
    return problems


def _hyperparameter_keys(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if str(key).lower() in HYPERPARAMETER_KEYS:
                yield f"{path}/{key}"
            yield from _hyperparameter_keys(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _hyperparameter_keys(value, f"{path}[{i}]")


def project_rule_problems(config: dict, text: str) -> list[str]:
    """Every project rule; an empty list means cluster.yaml keeps all of them."""
    problems: list[str] = []
    docker = config.get("docker") or {}
    head_name = config["head_node_type"]
    head = config["available_node_types"][head_name]
    workers = _worker_types(config)

    # Images: plain rayproject/ray of the installed Ray version; CPU head, GPU workers.
    images = {
        "head": docker.get("head_image", docker.get("image")),
        "worker": docker.get("worker_image", docker.get("image")),
    }
    for role, image in images.items():
        match = IMAGE_RE.match(image or "")
        if not match:
            problems.append(f"{role} image {image!r} is not rayproject/ray:<version>-py<NN>-<cpu|gpu>")
            continue
        if match["version"] != ray.__version__:
            problems.append(f"{role} image {image} is not Ray {ray.__version__} (installed)")
    if images["worker"] and not images["worker"].endswith("-gpu"):
        problems.append(f"worker image {images['worker']} is not a -gpu image")
    for node_type in workers.values():
        image = (node_type.get("docker") or {}).get("worker_image")
        if image and (not IMAGE_RE.match(image) or IMAGE_RE.match(image)["version"] != ray.__version__):
            problems.append(f"per-type worker image {image} does not match Ray {ray.__version__}")
    if "--gpus all" not in (docker.get("worker_run_options") or []):
        problems.append("docker.worker_run_options lacks `--gpus all`")
    for key in ("run_options", "head_run_options"):
        if any("--gpus" in opt for opt in docker.get(key) or []):
            problems.append(f"docker.{key} gives the CPU head a GPU option")

    # Head: CPU only, no workers of its own type.
    if head.get("resources", {}).get("GPU", 0) != 0:
        problems.append("head node type declares GPUs")
    if head["node_config"].get("InstanceType", "").split(".")[0].startswith(("g", "p")):
        problems.append(f"head instance {head['node_config'].get('InstanceType')} is a GPU instance")
    if head.get("resources", {}).get("CPU", 0) < 1:
        problems.append("head node type declares no CPUs (Tune drivers run there)")

    # GPU workers: scale from zero, at least one GPU each.
    if not workers:
        problems.append("no worker node types")
    for name, node_type in workers.items():
        if node_type.get("resources", {}).get("GPU", 0) < 1:
            problems.append(f"worker type {name} declares no GPU")
        if node_type.get("min_workers", 0) != 0:
            problems.append(f"worker type {name} has min_workers {node_type.get('min_workers')} (must be 0)")
        if node_type.get("max_workers", 0) < 1:
            problems.append(f"worker type {name} can never start (max_workers < 1)")
        if not node_type["node_config"].get("IamInstanceProfile"):
            problems.append(f"worker type {name} has no instance profile (S3 study directory)")

    # Private UIs.
    head_start = _head_start_command(config)
    if _option(head_start, "dashboard-host") != "127.0.0.1":
        problems.append(f"dashboard host is {_option(head_start, 'dashboard-host')!r}, not 127.0.0.1")
    mlflow = _mlflow_server_command(config)
    if _option(mlflow, "host") != "127.0.0.1":
        problems.append(f"MLflow host is {_option(mlflow, 'host')!r}, not 127.0.0.1")
    if any("0.0.0.0" in c for c in _all_commands(config)):
        problems.append("a command binds 0.0.0.0")

    problems += ingress_problems(config)
    problems += secret_problems(text)
    problems += [f"hyperparameter in cluster.yaml: {p}" for p in _hyperparameter_keys(config)]
    return problems


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def config(text) -> dict:
    return _load(text)


@pytest.fixture(scope="module")
def prepared(config) -> dict:
    return _ray_checked(config)


# --------------------------------------------------------------------------- Ray's own validation


def test_ray_prepares_and_validates_the_cluster_yaml(prepared):
    assert prepared["cluster_name"] == "ser-study"
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["cache_stopped_nodes"] is False
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert prepared["idle_timeout_minutes"] > 0


def test_no_command_list_falls_back_to_rays_aws_defaults(config, prepared):
    # Ray merges its AWS defaults.yaml at the top level: any command list left
    # out of cluster.yaml would run Ray's (a nightly Ray wheel install).
    for key in COMMAND_LISTS:
        assert key in config, f"cluster.yaml must set {key} (Ray's default would be used)"
    text = "\n".join(_all_commands(prepared) + prepared["head_setup_commands"] + prepared["worker_setup_commands"])
    for leaked in ("ray-wheels", "ray-3.0.0.dev0", "tensorflow2_p310"):
        assert leaked not in text


def _typo_top_level(c):
    c["max_worker"] = c.pop("max_workers")


def _unknown_head_type(c):
    c["head_node_type"] = "no_such_type"


def _gpu_count_as_text(c):
    _worker_types(c)[next(iter(_worker_types(c)))]["resources"]["GPU"] = "one"


def _docker_typo(c):
    c["docker"]["worker_run_option"] = c["docker"].pop("worker_run_options")


def _min_workers_over_max(c):
    c["max_workers"] = 0
    _worker_types(c)[next(iter(_worker_types(c)))]["min_workers"] = 1


@pytest.mark.parametrize(
    "break_it",
    [_typo_top_level, _unknown_head_type, _gpu_count_as_text, _docker_typo, _min_workers_over_max],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_rays_validator_rejects_a_broken_copy(config, break_it):
    broken = copy.deepcopy(config)
    break_it(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _ray_checked(broken)


# --------------------------------------------------------------------------- project rules


def test_cluster_yaml_keeps_every_project_rule(config, text):
    assert project_rule_problems(config, text) == []


def test_image_tags_use_the_installed_ray_version(config):
    assert ray.__version__.startswith("2.60.")
    docker = config["docker"]
    for key in ("image", "head_image", "worker_image"):
        match = IMAGE_RE.match(docker[key])
        assert match, docker[key]
        assert match["version"] == ray.__version__
    assert docker["head_image"].endswith("-cpu")
    assert docker["worker_image"].endswith("-gpu")
    assert "ray-ml" not in str(docker)


def test_head_is_cpu_only_and_workers_are_gpu_from_zero(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"]["CPU"] == 8
    assert head["max_workers"] == 0
    workers = _worker_types(prepared)
    assert workers
    for name, node_type in workers.items():
        assert node_type["resources"]["GPU"] >= 1, name
        assert node_type["min_workers"] == 0, name
        assert 1 <= node_type["max_workers"] <= prepared["max_workers"], name


def test_uis_and_ray_commands(config):
    head_start = _head_start_command(config)
    for flag in ("--port=6379", "--object-manager-port=8076", "--autoscaling-config=~/ray_bootstrap_config.yaml"):
        assert flag in head_start
    assert _option(head_start, "dashboard-host") == "127.0.0.1"
    assert config["head_start_ray_commands"][0].strip() == "ray stop"
    assert config["worker_start_ray_commands"][0].strip() == "ray stop"
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_start
    assert "--object-manager-port=8076" in worker_start

    mlflow = _mlflow_server_command(config)
    assert _option(mlflow, "host") == "127.0.0.1"
    assert _option(mlflow, "port") == "5000"
    assert _option(mlflow, "backend-store-uri").startswith(("sqlite:////", "postgresql"))
    assert _option(mlflow, "artifacts-destination").startswith("s3://")


def test_every_node_runs_ray_with_token_auth_and_the_shared_token(config):
    """Ray 2.60 refuses a joining worker and `ray job submit` unless both sides run token auth with one token."""
    assert "export RAY_AUTH_MODE=token;" in _head_start_command(config)
    assert "export RAY_AUTH_MODE=token;" in " ".join(config["worker_start_ray_commands"])
    assert any("RAY_AUTH_MODE=token" in command and ".bashrc" in command for command in config["setup_commands"])
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


def test_study_environment_on_the_head(config):
    head_setup = "\n".join(config["head_setup_commands"])
    assert "SER_STUDY_MLFLOW_URI=http://127.0.0.1:5000" in head_setup
    assert "SER_STUDY_BUCKET=" in head_setup
    # The placeholder bucket must stop the set-up, not start MLflow on a bad URI.
    assert "exit 1" in head_setup and "REPLACE_WITH_" in head_setup
    assert "${SER_STUDY_BUCKET}" in _mlflow_server_command(config)


def test_project_installed_from_the_mounted_checkout(config):
    assert config["file_mounts"][PROJECT_MOUNT] == "."
    head_install = [c for c in config["head_setup_commands"] if "pip install" in c and PROJECT_MOUNT in c]
    worker_install = [c for c in config["worker_setup_commands"] if "pip install" in c and PROJECT_MOUNT in c]
    assert head_install and worker_install
    assert all("[gpu]" not in c and "cuml" not in c for c in head_install)
    assert any(f"{PROJECT_MOUNT}[gpu]" in c for c in worker_install)
    # torch/torchaudio pins come from pyproject.toml, not from a second, drifting list here.
    assert not any(re.search(r"pip install[^\n]*\btorch", c) for c in _all_commands(config))
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert '"torch==2.11.0"' in pyproject and '"torchaudio==2.11.0"' in pyproject
    assert "cuml-cu13" in pyproject


def test_every_instance_type_has_an_instance_profile_and_no_inline_secrets(config, text):
    for name, node_type in config["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile")
        assert profile and (profile.get("Name") or profile.get("Arn")), name
    assert secret_problems(text) == []
    if CLUSTER_DOC.exists():
        assert secret_problems(CLUSTER_DOC.read_text(encoding="utf-8")) == []


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_every_command_parses_as_bash(config):
    for command in _all_commands(config):
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert result.returncode == 0, f"{command!r}: {result.stderr}"


# --------------------------------------------------------------------------- the project rules bite


def _dashboard_public(c):
    cmds = c["head_start_ray_commands"]
    i = cmds.index(_head_start_command(c))
    cmds[i] = cmds[i].replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")


def _mlflow_public(c):
    cmds = c["head_start_ray_commands"]
    i = next(i for i, cmd in enumerate(cmds) if "mlflow server" in cmd)
    cmds[i] = cmds[i].replace("--host 127.0.0.1", "--host 0.0.0.0")


def _open_dashboard_port(c):
    c["provider"]["security_group"] = {
        "IpPermissions": [
            {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ]
    }


def _head_with_gpu(c):
    c["available_node_types"][c["head_node_type"]]["resources"]["GPU"] = 1


def _always_on_gpu_worker(c):
    _worker_types(c)[next(iter(_worker_types(c)))]["min_workers"] = 1


def _old_ray_image(c):
    c["docker"]["worker_image"] = "rayproject/ray:2.49.0-py311-gpu"


def _hyperparameter_inside(c):
    c["metadata"] = {"mask_ratio": 0.3}


@pytest.mark.parametrize(
    "break_it",
    [
        _dashboard_public,
        _mlflow_public,
        _open_dashboard_port,
        _head_with_gpu,
        _always_on_gpu_worker,
        _old_ray_image,
        _hyperparameter_inside,
    ],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_project_rules_reject_a_broken_copy(config, text, break_it):
    broken = copy.deepcopy(config)
    break_it(broken)
    assert project_rule_problems(broken, text) != []


def test_secret_rule_rejects_credentials():
    # AWS's published documentation examples, assembled here so that this file
    # itself does not look like it holds a key.
    key_id = "AKIA" + "IOSFODNN7EXAMPLE"
    secret = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
    assert secret_problems(f"env: {key_id}")
    assert secret_problems(f"secret: {secret}")
    assert secret_problems("aws_secret_" + "access_key: x")
    assert secret_problems("Arn: arn:aws:iam::" + "123456789012:instance-profile/x")
    assert secret_problems("ImageId: resolve:ssm:/aws/service/deeplearning/ami/x86_64/base/latest/ami-id") == []


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_parse_rule_rejects_broken_quoting():
    result = subprocess.run(["bash", "-n", "-c", "setsid bash -c 'exec mlflow server"], capture_output=True)
    assert result.returncode != 0
