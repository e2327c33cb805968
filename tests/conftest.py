"""Suite-wide rules.

Under ``CI=true`` a skip is a failure: a missing test input (the reference implementation in
``.oracle/``, Chromium, an image codec) must not turn a red run green by quietly running fewer
tests. Only tests marked ``gpu`` may skip there, since CI has no GPU. A plain local ``pytest``
still skips, with the reason in the summary (``-ra``)."""

from __future__ import annotations

import os

import pytest

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
