"""pytest fixtures: one private flashsale stack per test (deploy/stack.py).

    def test_x(stack): ...                       # default settings
    @pytest.mark.stack_env(FLASHSALE_GATEWAY_MAX_BODY="4096")
    def test_y(stack): ...                       # extra FLASHSALE_* settings
    def test_z(make_stack):
        s = make_stack(env={...})                # several, or started later

Every stack is stopped in teardown. After a pass its state dir is removed;
after a failure the tail of every log is added to the report and the dir is
kept (its path is printed). A sanitizer report in any log fails the test.
"""

import os
import sys

import pytest

# `stack` is deploy/stack.py, for this file and the tests (from stack import wait_for).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy"))
from stack import Stack  # noqa: E402

LOG_TAIL = 60


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "stack_env(**env): extra environment (FLASHSALE_*) for the stack fixture")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    stacks = getattr(item, "_flashsale_stacks", None)
    if rep.failed and stacks and rep.when in ("setup", "call"):
        for s in stacks:
            rep.sections.append(("flashsale stack %s (kept)" % s.dir, s.logs(tail=LOG_TAIL)))


def _failed(item):
    return any(getattr(item, "rep_" + w, None) is not None and getattr(item, "rep_" + w).failed
               for w in ("setup", "call"))


class StackFactory:
    def __init__(self, node):
        self.node = node
        self.stacks = []
        node._flashsale_stacks = self.stacks

    def __call__(self, env=None, start=True):
        s = Stack(env=env)
        # Registered before start so that a failed start is still torn down.
        self.stacks.append(s)
        if start:
            s.start()
        return s

    def teardown(self):
        problems = []
        for s in self.stacks:
            try:
                s.stop()
            except Exception as e:  # keep tearing down the others
                problems.append("%s: stop failed: %s" % (s.dir, e))
            reports = s.sanitizer_reports()
            if reports:
                problems.append("%s: sanitizer reports:\n%s\n%s"
                                % (s.dir, "\n".join(reports[:20]), s.logs(tail=LOG_TAIL)))
        if _failed(self.node) or problems:
            for s in self.stacks:
                print("flashsale stack state kept in %s" % s.dir)
        else:
            for s in self.stacks:
                s.remove()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def make_stack(request):
    factory = StackFactory(request.node)
    yield factory
    factory.teardown()


@pytest.fixture
def stack(request, make_stack):
    marker = request.node.get_closest_marker("stack_env")
    env = dict(marker.kwargs) if marker else {}
    return make_stack(env=env)
