import os
import signal
import sys

import pytest

# Make the flat scripts at the repo root importable from tests/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A test that hangs (a loop that never ends, a process group that never forms) fails by name after this many
# seconds instead of stalling the suite (each of its setup, call and teardown: module fixtures run in a setup). 0 turns
# it off; there is no SIGALRM on Windows.
TIMEOUT = int(os.environ.get("TEST_TIMEOUT", 600))


def _limited(item, phase):
    """Run one phase of a test (a generator for a hookwrapper) under the TIMEOUT alarm."""
    if not TIMEOUT or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"{item.nodeid} ran past {TIMEOUT} s in its {phase} (TEST_TIMEOUT)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _limited(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _limited(item, "call")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield from _limited(item, "teardown")
