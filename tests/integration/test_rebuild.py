"""FLUSHALL Redis in the middle of a sale, `reconciler rebuild`, and the
audit is clean: nothing sold twice, nothing lost, the deductor waited."""
import subprocess
import time

from sale import assert_audit_clean, assert_invariants, buyers, finish, orders_by_state


def test_flushall_mid_sale_then_rebuild(stack):
    stack.create_promotion('rb-1', stock=400, per_user_limit=1, hold_seconds=600)
    proc = buyers(stack, 'rb-1', 2000, concurrency=128, dup_ratio=0.2,
                  pay_ratio=0.5, wait_final=False, ramp_ms=4000,
                  background=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        rem = stack.redis('HGET', 'fs:promo:rb-1', 'remaining')
        if rem and int(rem) < 350:
            break
        time.sleep(0.05)
    assert stack.redis('FLUSHALL') == 'OK'
    # While the state is missing nothing is sold: the deductor waits.
    time.sleep(1.0)
    assert stack.redis('EXISTS', 'fs:promo:rb-1') == '0'
    r = subprocess.run([stack.bin('flashsale-reconciler'), 'rebuild'], env=stack.env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    report = finish(proc)
    assert report['accepted'] >= 400, report

    assert_audit_clean(stack, wait_drain=120)
    st = orders_by_state(stack, 'rb-1')
    assert st.get('held', (0, 0))[0] + st.get('paid', (0, 0))[0] == 400, st
    p, _ = assert_invariants(stack, 'rb-1', 400)
    assert p['remaining'] == 0, p

    # A rebuild over intact state is refused without --force.
    r = subprocess.run([stack.bin('flashsale-reconciler'), 'rebuild'], env=stack.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
