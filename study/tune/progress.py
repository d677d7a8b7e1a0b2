"""The live view of a running study (``rich``): trials and their folds, the phases being built, an ETA.

A Tune callback in the driver process. It keeps one row per trial from Tune's
results (method, parameters, folds done, running validation UA, state); every
few seconds it reads what the study's cache has built since the last look
(its event files, read once each) and which artifacts are being built now
(the leases the cache coordinator holds). The ETA divides the artifacts still
to build (from the study's plan, when its space is finite) by the build rate
so far. ``ser-study run --quiet`` leaves it off (Tune's own status lines stay).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ray import tune
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from study.cache.store import EVENTS_DIR
from study.io import storage
from trainables.phases.artifacts import checkpoint_dir_for
from trainables.runtime import PROGRESS_FILE

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0


def _eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "ETA: after the first builds"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"ETA: {hours}h{minutes:02d}m" if hours else f"ETA: {minutes}m{secs:02d}s"


class StudyProgress(tune.Callback):
    """Tune callback drawing the study's progress; ``expected_builds`` is the plan's count of artifacts to build (None: unknown)."""

    def __init__(self, cache_root: str, expected_builds: int | None = None, console: Console | None = None):
        self.cache_root = cache_root
        self.coordinator: Any = None
        self.expected_builds = expected_builds
        self.console = console or Console(stderr=True)
        self.rows: dict[str, dict[str, Any]] = {}
        self.seen_events: set[str] = set()
        self.built: dict[str, int] = {}
        self.hits = 0
        self.building: list[str] = []
        self.started = time.monotonic()
        self.last_refresh = 0.0
        self.live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment (``resume`` restores them): drop the terminal and the actor handle."""
        state = dict(self.__dict__)
        state.update(live=None, console=None, coordinator=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.console = Console(stderr=True)
        self.started = time.monotonic()

    # -- Tune's hooks

    def setup(self, **info) -> None:
        self.live = Live(self.render(), console=self.console, refresh_per_second=1, transient=False)
        self.live.start()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._row(trial)["state"] = "running"

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = self._row(trial)
        row["folds"] = f"{result.get('folds_done', 0)}/{result.get('folds_total', '?')}"
        value = result.get("val_ua_running_mean", result.get("val_ua_mean"))
        row["val_ua"] = f"{100 * float(value):.1f}" if isinstance(value, (int, float)) else ""

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._row(trial)["state"] = "done"

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._row(trial)["state"] = "error"

    def on_step(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self.last_refresh < REFRESH_SECONDS:
            return
        self.last_refresh = now
        self.poll()
        if self.live is not None:
            self.live.update(self.render())

    def on_experiment_end(self, trials, **info) -> None:
        self.poll()
        if self.live is not None:
            self.live.update(self.render())
            self.live.stop()
            self.live = None

    # -- state

    def _row(self, trial) -> dict[str, Any]:
        config = dict(trial.config or {})
        config.pop("study_dir", None)
        return self.rows.setdefault(trial.trial_id, {"params": ", ".join(f"{k}={v}" for k, v in config.items()), "folds": "0/?", "val_ua": "", "state": "pending"})

    def poll(self) -> None:
        """Read the cache's new events and the coordinator's leases; failures only make the view stale."""
        try:
            names = storage.list_files(storage.join(self.cache_root, EVENTS_DIR), suffix=".json")
            new = [name for name in names if name not in self.seen_events]
            for name, text in zip(new, storage.read_texts(new)):
                self.seen_events.add(name)
                event = json.loads(text) if text else {}
                if event.get("event") == "built":
                    self.built[event["phase"]] = self.built.get(event["phase"], 0) + 1
                elif event.get("event") == "hit":
                    self.hits += 1
        except (OSError, ValueError) as err:
            logger.debug("progress: cache events not read (%s)", err)
        try:
            import ray

            if not ray.is_initialized():
                return
            if self.coordinator is None:
                from study.cache.leases import get_coordinator

                self.coordinator = get_coordinator(self.cache_root)
            self.building = [self._with_epoch(lease) for lease in sorted(ray.get(self.coordinator.held.remote(), timeout=5))]
        except Exception as err:  # the view must never disturb the study
            logger.debug("progress: leases not read (%s)", err)

    def _with_epoch(self, lease: str) -> str:
        """``phase/key``, with the epoch its local checkpoint has reached (a local cache and executor only)."""
        if storage.is_uri(self.cache_root):
            return lease
        phase, _, key = lease.partition("/")
        try:
            done = json.loads((checkpoint_dir_for(Path(self.cache_root) / phase / key) / PROGRESS_FILE).read_text())
            return f"{lease} (epoch {done['epoch'] + 1}/{done['epochs']})"
        except (OSError, ValueError, KeyError, TypeError):
            return lease

    def eta_seconds(self) -> float | None:
        done = sum(self.built.values())
        if not self.expected_builds or not done:
            return None
        elapsed = time.monotonic() - self.started
        return max(0.0, self.expected_builds - done) * elapsed / done

    def render(self) -> Group:
        table = Table(title="trials", expand=False)
        for column in ("trial", "parameters", "folds", "val UA (running)", "state"):
            table.add_column(column)
        for trial_id, row in self.rows.items():
            table.add_row(trial_id, row["params"], row["folds"], row["val_ua"], row["state"])
        done = sum(self.built.values())
        expected = f" of {self.expected_builds}" if self.expected_builds else ""
        phases = ", ".join(f"{phase} {n}" for phase, n in sorted(self.built.items())) or "none yet"
        building = ", ".join(self.building) or "nothing"
        elapsed = int(time.monotonic() - self.started)
        lines = [
            Text(f"phase artifacts built: {done}{expected} ({phases}); reused from the cache: {self.hits}"),
            Text(f"building now: {building}"),
            Text(f"elapsed {elapsed // 60}m{elapsed % 60:02d}s   {_eta_text(self.eta_seconds())}"),
        ]
        return Group(table, *lines)
