"""pytest configuration: the harness package and build preconditions."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness.postfix import installed  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "stock: needs the stock (unpatched) build too")


@pytest.fixture
def world(request):
    """A World named after the test; everything it started is stopped after."""
    from harness.world import World
    if not installed("patched"):
        pytest.fail("build/inst/patched missing: run 'make build' (make check does)")
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "_")
    w = World(name)
    yield w
    w.stop()
