"""Fail fast on services a study needs but that do not answer: the Ray cluster and the MLflow server.

Both are checked before the study directory is written or Ray starts, so a typo
in ``--address`` or ``storage.mlflow_uri`` costs seconds, not a hung driver.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from urllib.parse import urlparse

from study.errors import UserError

#: Seconds to wait for a service before declaring it unreachable.
TIMEOUT_S = 5.0


def check_ray_address(address: str | None) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) Ray address nothing listens on; ``auto`` and None pass."""
    if not address or address == "auto":
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not host:port (or ray://host:port, or auto); e.g. --address 10.0.0.5:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT_S):
            pass
    except OSError as err:
        raise UserError(
            f"no Ray cluster answers at --address {address} ({err.strerror or err}); start one with `ray start --head` "
            "or `ray up cluster.yaml`, or leave --address out for a local cluster"
        ) from None


def check_mlflow_server(uri: str, field: str = "storage.mlflow_uri") -> None:
    """Refuse an http(s) MLflow tracking URI whose server does not answer its health check."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=TIMEOUT_S) as response:
            if response.status >= 500:
                raise UserError(f"{field}: the MLflow server at {uri} answers {response.status}; check its logs")
    except urllib.error.HTTPError as err:
        if err.code >= 500:
            raise UserError(f"{field}: the MLflow server at {uri} answers {err.code}; check its logs") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(
            f"{field}: no MLflow server answers at {uri} ({reason}); start it (`mlflow server --host 127.0.0.1`), "
            "forward its port, or leave storage.mlflow_uri out for the local SQLite store"
        ) from None
