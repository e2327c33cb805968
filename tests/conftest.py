"""Suite-wide rules.

Under ``CI=true`` a skip is a failure: a missing test input (the reference implementation in
``.oracle/``, Chromium, an image codec) must not turn a red run green by quietly running fewer
tests. Only tests marked ``gpu`` may skip there, since CI has no GPU. A plain local ``pytest``
still skips, with the reason in the summary (``-ra``).

One CPU thread per process for torch (``OMP_NUM_THREADS``, unless set already; subprocesses
inherit it): the tiny models' operations are far too small to gain from a second thread, and
on a shared or oversubscribed machine the OpenMP threads wait on each other — a tiny
pipeline call measured 0.08 s with one thread and 2.3 s with two on this project's busy
2-core machine. ``scripts/test.sh`` runs two worker processes (pytest-xdist, a test file
whole per worker) instead, one thread each: from a fresh clone the suite took 5 min 6 s so on
the 2 cores, against 11 min 12 s in one process.

No network: ``HF_HUB_OFFLINE=1`` (unless set already; subprocesses inherit it). Settings
whose defaults name a hub download (the fast LoRA, the style image's IP-Adapter, the doodle's
adapter) then fail at once as "not in the cache", as they would on a machine without
internet, instead of each waiting out connection timeouts (46 s of one test's 52 s)."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "huggingface_hub" in sys.modules:  # imported before this file: its constant is read already
    sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = os.environ["HF_HUB_OFFLINE"] == "1"
if "torch" in sys.modules:  # imported before this file (a plugin): too late for the variable
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; the only tests allowed to skip in CI")


def _strict(report: pytest.CollectReport | pytest.TestReport, allowed: bool) -> None:
    if IN_CI and report.skipped and not allowed and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which is a failure here: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    _strict(outcome.get_result(), allowed=item.get_closest_marker("gpu") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _strict(outcome.get_result(), allowed=False)
