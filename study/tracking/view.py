"""The study's saved view in the MLflow UI: its runs table with the UA and WA columns shown.

MLflow 3's runs table hides every metric column until one picks it under
"Columns", and keeps that choice in the browser. A saved view (the UI's
"Views" menu) is an experiment tag ``mlflow.sharedViewState.<id>`` holding the
table's state as JSON, and ``?viewStateShareKey=<id>`` opens it: the study
writes one that selects the headline metrics (validation and test UA/WA, means
and stds, and the paired deltas to each baseline) and the method tag. The
state's fields are those the MLflow 3.17 UI saves (checked in its bundle and in
a browser: ``bench/mlflow_ui_screenshot.sh``).
"""

from __future__ import annotations

import json
import time
from typing import Sequence

VIEW_ID = "ser-study-ua-wa"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
VIEW_NAME = "UA and WA (ser-study)"
HEADLINE_METRICS = ("val_ua_mean", "test_ua_mean", "test_ua_std", "test_wa_mean", "test_wa_std")


def _column(kind: str, name: str) -> str:
    """The UI's column key: ``metrics.`test_ua_mean```."""
    return f"{kind}.`{name}`"


def view_state(baselines: Sequence[str] = ()) -> dict:
    """The runs table's state: the headline metrics, the delta of test UA to each baseline, the method; newest runs first."""
    columns = [_column("metrics", m) for m in HEADLINE_METRICS]
    columns += [_column("metrics", f"delta_test_ua_vs_{b}") for b in baselines]
    columns.append(_column("tags", "method"))
    return {
        "searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False, "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": columns, "columnOrder": [], "columnWidths": {}, "runsHiddenMode": "FIRST_10_RUNS",
        "viewMaximized": False, "runListHidden": False, "isAccordionReordered": False, "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def view_tag_value(baselines: Sequence[str] = ()) -> str:
    """The tag's value: the UI's saved-view envelope around :func:`view_state`."""
    now = int(time.time() * 1000)
    return json.dumps({"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(view_state(baselines))})


def view_query() -> str:
    """What the runs view's URL gets to open the saved view."""
    return f"?viewStateShareKey={VIEW_ID}"
