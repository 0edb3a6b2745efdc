"""Holds left unpaid past their deadline come back and are sold again."""
import time

import pytest

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


@pytest.mark.stack_env(FLASHSALE_RECONCILER_RELEASE_FULL_SCAN_MS="3600000")
def test_idle_skus_are_skipped_and_a_new_hold_is_released_on_time(stack):
    """The reconciler reads a SKU only once a hold of it can be due
    (reconciler/scan.h). With the hourly backstop out of the way, a hold made
    while its SKU is being skipped must still be released hold + grace after
    it was made, not at the next full scan."""
    skus = ['idle-%d' % i for i in range(12)]
    for sku in skus:
        stack.create_promotion(sku, stock=2, per_user_limit=1, hold_seconds=2)

    def gauge(name):
        return stack.metrics('reconciler').get('flashsale_reconciler_' + name)

    wait_for(lambda: gauge('promotions') == 12, timeout=20, what='12 promotions seen')
    # Idle SKUs are bounded 9 s ahead; the backstop reads at most one a round.
    wait_for(lambda: gauge('skus_read') is not None and gauge('skus_read') <= 1, timeout=10,
             what='rounds that skip idle SKUs')
    # A SKU added now is seen by the next round too: the loop keeps the
    # members of fs:promos and reads them again when SCARD moves.
    stack.create_promotion('idle-new', stock=2, per_user_limit=1, hold_seconds=2)
    wait_for(lambda: gauge('promotions') == 13, timeout=10, what='the new promotion seen')
    rids = {}
    for sku in ('idle-5', 'idle-new'):
        code, body = stack.http('POST', '/v1/purchases',
                                {'sku': sku, 'qty': 1, 'request_id': 'late-' + sku}, user='u1')
        assert code == 202, body
        rids[sku] = scoped_id('u1', 'late-' + sku)

    def expired(rid):
        return stack.psql("SELECT e.at_ms - r.deadline_ms FROM ledger_events e "
                          "JOIN ledger_events r ON r.request_id = e.request_id "
                          "AND r.kind = 'reserved' WHERE e.request_id = '%s' "
                          "AND e.kind = 'expired'" % rid)
    for sku, rid in rids.items():
        wait_for(lambda: expired(rid), timeout=40, what='the hold of %s released' % sku)
        late_ms = int(expired(rid)[0][0])
        # Released after the 7 s grace, within a few rounds of it.
        assert 7000 <= late_ms <= 7000 + 2500, (sku, late_ms)
        assert_invariants(stack, sku, 2)

    # A rebuild restores holds with old deadlines: it bumps fs:rebuilds
    # (reconciler/rebuild.c), and the next round reads every SKU again.
    def resets():
        return gauge('scan_resets_total') or 0
    before = resets()
    stack.redis('INCR', 'fs:rebuilds')
    wait_for(lambda: resets() > before, timeout=10, what='every SKU read after a rebuild')
