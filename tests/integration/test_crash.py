"""kill -9 the deductor and the order-writer in the middle of a sale; after
a restart the invariants hold and nothing accepted is lost."""
import time

from sale import assert_audit_clean, assert_invariants, buyers, finish, orders_by_state


def test_kill_deductor_and_order_writer_mid_sale(stack):
    stack.create_promotion('crash-1', stock=400, per_user_limit=1, hold_seconds=600)
    proc = buyers(stack, 'crash-1', 2000, concurrency=128, dup_ratio=0.2,
                  pay_ratio=0.5, wait_final=False, ramp_ms=4000,
                  background=True)
    # Wait until the sale is under way: some units are gone, not all.
    deadline = time.time() + 30
    while time.time() < deadline:
        rem = stack.redis('HGET', 'fs:promo:crash-1', 'remaining')
        if rem and int(rem) < 350:
            break
        time.sleep(0.05)
    stack.daemon('kill', 'deductor')
    stack.daemon('kill', 'order-writer')
    time.sleep(1.0)
    stack.daemon('start', 'deductor')
    stack.daemon('start', 'order-writer')
    report = finish(proc)
    assert report['accepted'] >= 400, report

    assert_audit_clean(stack, wait_drain=120)
    st = orders_by_state(stack, 'crash-1')
    assert st.get('held', (0, 0))[0] + st.get('paid', (0, 0))[0] == 400, st
    p, _ = assert_invariants(stack, 'crash-1', 400)
    assert p['remaining'] == 0, p
