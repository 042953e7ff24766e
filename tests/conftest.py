"""pytest configuration: the harness package and build preconditions."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _worker_network_namespace():
    """Under pytest-xdist (make check runs "pytest -n 2 --dist loadfile"),
    each worker moves into a network namespace of its own, with only a
    loopback interface, before any test starts a server: the tests use
    fixed 127.0.0.x addresses and ports, and two workers must not meet on
    them.  Programs that a test starts inherit the namespace.  Each worker
    also gets a run directory of its own."""
    import ctypes
    import subprocess
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or os.environ.get("PFX_WORKER_NETNS", "yes") == "no":
        return
    CLONE_NEWNET = 0x40000000
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) for %s" % worker)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    root = os.environ.get("PFX_RUN_ROOT", "/tmp/pfx-run")
    os.environ["PFX_RUN_ROOT"] = "%s-%s" % (root, worker)


_worker_network_namespace()

from harness.base import BASE, make_hint  # noqa: E402
from harness.postfix import installed  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "stock: needs the stock (unpatched) build too")


@pytest.fixture
def world(request):
    """A World named after the test; everything it started is stopped after."""
    from harness.world import World
    # PFX_FLAVOUR=<build> runs the tests against another build of the series
    # (scripts/build NAME=REV), for example to show that a test fails
    # without a fix.
    flavour = os.environ.get("PFX_FLAVOUR", "patched")
    if not installed(flavour):
        pytest.fail("build/%s/inst/%s missing: run '%s' (make check does)"
                    % (BASE, flavour, make_hint("build")))
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "_")
    w = World(name, flavour=flavour)
    yield w
    w.stop()
