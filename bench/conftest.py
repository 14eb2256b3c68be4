"""Benchmarks run only with ``pytest bench/ --benchmark``; without the flag they are skipped, so a
plain ``pytest`` never spends minutes timing things."""
import pytest


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run the benchmarks in bench/ (skipped otherwise)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--benchmark"):
        return
    skip = pytest.mark.skip(reason="benchmarks run with: pytest bench/ --benchmark")
    for item in items:
        item.add_marker(skip)

