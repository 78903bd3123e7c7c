"""Shared pytest setup: headless plotting and the ``--runslow`` switch."""

import os

import matplotlib
import pytest

matplotlib.use("Agg")


def pytest_addoption(parser):
    parser.addoption(
        "--runslow",
        action="store_true",
        default=False,
        help="run tests marked slow (also enabled by PM_EM_RUNSLOW=1)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("PM_EM_RUNSLOW") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow; run with --runslow or PM_EM_RUNSLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
