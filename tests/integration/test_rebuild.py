"""FLUSHALL Redis in the middle of a sale, `reconciler rebuild`, and the
audit is clean: nothing sold twice, nothing lost, the deductor waited."""
import subprocess
import time

from sale import assert_sold_out_cleanly, finish, start_sale
from stack import wait_for


def rebuild(stack, *args):
    return subprocess.run([stack.bin('flashsale-reconciler'), 'rebuild'] + list(args),
                          env=stack.env, capture_output=True, text=True, timeout=120)


def test_flushall_mid_sale_then_rebuild(stack):
    proc = start_sale(stack, 'rb-1', stock=400)
    assert stack.redis('FLUSHALL') == 'OK'
    # While the state is missing nothing is sold: the deductor waits.
    time.sleep(1.0)
    assert stack.redis('EXISTS', 'fs:promo:rb-1') == '0'
    r = rebuild(stack)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_sold_out_cleanly(stack, 'rb-1', 400, finish(proc))

    # A rebuild over intact state is refused without --force, and a forced
    # one reproduces the same state.
    before = stack.redis('HGETALL', 'fs:promo:rb-1')
    assert rebuild(stack).returncode != 0
    told = stack.log('gateway').count('event=push_wake_all')
    r = rebuild(stack, '--force')
    assert r.returncode == 0, r.stdout + r.stderr
    assert stack.redis('HGETALL', 'fs:promo:rb-1') == before
    # The gateways are told (fs:st "* rebuilt"): their long polls look again
    # and their promotion caches are read at once, not at the next refresh.
    wait_for(lambda: stack.log('gateway').count('event=push_wake_all') > told, timeout=10,
             what='the gateway told of the rebuild')
