"""Holds left unpaid past their deadline come back and are sold again."""
import time

from sale import assert_audit_clean, assert_invariants, buyers, finish, orders_by_state
from stack import scoped_id, wait_for


def intents(stack, kind):
    """Intents of one kind the deductor has applied, by outcome (/metrics)."""
    prefix = 'flashsale_deductor_intents_total{kind="%s",outcome="' % kind
    return {k[len(prefix):-2]: int(v) for k, v in stack.metrics('deductor').items()
            if k.startswith(prefix) and v}


def test_unpaid_holds_expire_and_resell(stack):
    stack.create_promotion('exp-1', stock=20, per_user_limit=1, hold_seconds=3)
    proc = buyers(stack, 'exp-1', 60, concurrency=32, dup_ratio=0.0, pay_ratio=0.0,
                  seed=7, wait_final=True, final_timeout_s=60, background=True)
    # Restart the reconciler while the holds are live: still exactly one
    # release per hold reaches the deductor.
    wait_for(lambda: stack.redis('HGET', 'fs:promo:exp-1', 'held') == '20', timeout=20,
             what='20 holds')
    stack.daemon('restart', 'reconciler')
    first = finish(proc)
    # Nobody paid: every hold must have expired on its own.
    assert first['final_states'].get('expired', 0) == 20, first
    deadline = time.time() + 30
    while time.time() < deadline:
        st = orders_by_state(stack, 'exp-1')
        if st.get('expired', (0, 0))[0] == 20:
            break
        time.sleep(0.2)
    assert st == {'expired': (20, 20)}, st
    assert intents(stack, 'release') == {'expired': 20}, intents(stack, 'release')

    # Paying after the deadline changes nothing: the purchase stays expired
    # and the ledger holds one terminal event for it.
    rid, user = stack.psql("SELECT request_id, user_id FROM orders WHERE sku = 'exp-1' LIMIT 1")[0]
    # PostgreSQL files it under the gateway's scoped id; the buyer knows
    # their own (loadgen's <run_id>-<buyer>).
    own = [c for c in ('%s-%d' % (first['config']['run_id'], i) for i in range(60))
           if scoped_id(user, c) == rid]
    assert len(own) == 1, (rid, user)
    code, body = stack.http('POST', '/v1/purchases/%s/pay' % own[0], user=user)
    assert code == 202, body
    wait_for(lambda: intents(stack, 'pay') == {'expired': 1}, timeout=20,
             what='the late payment to be applied')
    rows = stack.psql("SELECT kind FROM ledger_events WHERE request_id = '%s' ORDER BY kind" % rid)
    assert rows == [['expired'], ['reserved']], rows
    assert stack.http('GET', '/v1/purchases/' + own[0], user=user)[1]['state'] == 'expired'
    assert stack.psql("SELECT state FROM orders WHERE request_id = '%s'" % rid) == [['expired']]

    # The released units are for sale again once the gateway's sold-out flag
    # (refreshed from Redis) sees them.
    deadline = time.time() + 10
    while time.time() < deadline:
        code, info = stack.http('GET', '/v1/promotions/exp-1')
        if code == 200 and info['remaining'] == 20:
            break
        time.sleep(0.1)
    assert info['remaining'] == 20, info
    second = buyers(stack, 'exp-1', 40, concurrency=32, dup_ratio=0.0, pay_ratio=1.0,
                    seed=8, wait_final=True, final_timeout_s=60, user_prefix='wave2-')
    assert second['final_states'].get('paid', 0) == 20, second
    assert_audit_clean(stack)
    p, st = assert_invariants(stack, 'exp-1', 20)
    assert p['sold'] == 20 and p['remaining'] == 0 and p['held'] == 0, p
    assert st['expired'] == (20, 20) and st['paid'] == (20, 20), st
