import os
import signal
import sys

import pytest

# Make the flat scripts at the repo root importable from tests/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A test that hangs (a loop that never ends, a process group that never forms) fails by name after this many
# seconds instead of stalling the suite. 0 turns it off; there is no SIGALRM on Windows.
TIMEOUT = int(os.environ.get("TEST_TIMEOUT", 600))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if not TIMEOUT or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"{item.nodeid} ran past {TIMEOUT} s (TEST_TIMEOUT)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
