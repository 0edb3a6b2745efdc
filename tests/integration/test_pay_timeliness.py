"""A payment the gateway accepted before the deadline counts, however late
the deductor applies it: the gateway stamps the PAY on the Redis clock, the
reconciler's RELEASE comes after it on the partition, and a pay after the
deadline is refused at the door instead of accepted and then expired."""
import os
import signal
import time

from sale import assert_audit_clean, daemon_pid, orders_by_state
from stack import wait_for


def owner(rid):
    return 'u' + rid.rsplit('-r', 1)[1]      # reserve()'s buyer of rid


def state_of(stack, rid):
    code, body = stack.http('GET', '/v1/purchases/' + rid, user=owner(rid))
    return body.get('state') if code == 200 else None


def reserve(stack, sku, n):
    rids = []
    for i in range(n):
        rid = '%s-r%d' % (sku, i)
        code, body = stack.http('POST', '/v1/purchases',
                                {'sku': sku, 'qty': 1, 'request_id': rid}, user='u%d' % i)
        assert code == 202, body
        rids.append(rid)
    for rid in rids:
        wait_for(lambda: state_of(stack, rid) == 'reserved', timeout=30, interval=0.1,
                 what=rid + ' reserved')
    return rids


def test_pay_accepted_in_time_counts_after_a_deductor_pause(stack):
    sku, n = 'pay-1', 10
    stack.create_promotion(sku, stock=20, per_user_limit=1, hold_seconds=4)
    rids = reserve(stack, sku, n)
    deadline_ms = max(stack.http('GET', '/v1/purchases/' + rid, user=owner(rid))[1]['deadline_ms']
                      for rid in rids)
    released = stack.metrics('reconciler').get('flashsale_reconciler_releases_sent_total', 0)

    pid = daemon_pid(stack, 'deductor')
    os.kill(pid, signal.SIGSTOP)
    try:
        for i, rid in enumerate(rids):
            code, body = stack.http('POST', '/v1/purchases/%s/pay' % rid, user='u%d' % i)
            assert code == 202, body
        # Past the deadline and the release grace: the reconciler sends its
        # RELEASEs while the PAYs wait, unapplied, ahead of them.
        wait_for(lambda: stack.metrics('reconciler').get('flashsale_reconciler_releases_sent_total', 0)
                 >= released + n, timeout=60, interval=0.2, what='RELEASEs sent while paused')
        now_ms = stack.http('GET', '/v1/time')[1]['now_ms']
        assert now_ms > deadline_ms
    finally:
        os.kill(pid, signal.SIGCONT)

    for rid in rids:
        wait_for(lambda: state_of(stack, rid) == 'paid', timeout=60, interval=0.1,
                 what=rid + ' paid')
    wait_for(lambda: orders_by_state(stack, sku) == {'paid': (n, n)}, timeout=30,
             what='every order paid in PostgreSQL')
    # The releases came after the payments and changed nothing.
    rows = stack.psql("SELECT count(*) FROM ledger_events WHERE sku = '%s' AND "
                      "kind = 'transition_refused' AND reason = 'not_reserved'" % sku)
    assert int(rows[0][0]) >= 1, rows
    assert stack.psql("SELECT count(*) FROM ledger_events WHERE sku = '%s' AND kind = 'expired'"
                      % sku) == [['0']]
    assert_audit_clean(stack)


def test_pay_after_the_deadline_is_refused_at_the_gateway(stack):
    sku = 'pay-2'
    stack.create_promotion(sku, stock=5, per_user_limit=1, hold_seconds=1)
    rid, = reserve(stack, sku, 1)
    deadline_ms = stack.http('GET', '/v1/purchases/' + rid, user='u0')[1]['deadline_ms']
    wait_for(lambda: stack.http('GET', '/v1/time')[1]['now_ms'] > deadline_ms + 200,
             timeout=10, what='the deadline to pass')
    code, body = stack.http('POST', '/v1/purchases/%s/pay' % rid, user='u0')
    assert code == 409, body
    assert body['error'] == 'payment_too_late', body
    # The hold is released in its time; nothing was paid.
    wait_for(lambda: state_of(stack, rid) == 'expired', timeout=30, interval=0.2,
             what='the hold released')
    assert_audit_clean(stack)
