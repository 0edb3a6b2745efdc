"""The HTTP API end to end: validation answers 4xx with a reason, the
purchase lifecycle (reserve, pay, cancel), promotion info, time, health and
metrics of every daemon."""
import time
import urllib.request

import pytest

from stack import scoped_id, wait_for


def wait_state(stack, rid, want, user, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        code, body = stack.http('GET', '/v1/purchases/' + rid, user=user)
        if code == 200 and body['state'] in want:
            return body
        time.sleep(0.05)
    raise AssertionError('request %s never reached %s (last %s %s)' % (rid, want, code, body))


def test_malformed_requests_get_4xx_with_reason(stack):
    stack.create_promotion('api-1', stock=5, per_user_limit=2, hold_seconds=600)
    bad = [
        ('{not json', 400),
        ('[1,2]', 400),
        ('{"user_id":"u1","qty":1}', 400),                    # no sku
        ('{"sku":7,"user_id":"u1","qty":1}', 400),            # wrong type
        ('{"sku":"api-1","user_id":"u1","qty":0}', 400),      # qty < 1
        ('{"sku":"api-1","user_id":"u1","qty":1.5}', 400),
        ('{"sku":"api-1","user_id":"u1","qty":"1"}', 400),
        ('{"sku":"api-1","user_id":"u2","qty":1}', 400),      # not the token's user
        ('{"sku":"api-1","qty":1,"qty":1}', 400),             # duplicate key
        ('{"sku":"api-1","user_id":"u1","qty":1,"request_id":"has space"}', 400),
        ('{"sku":"nope","user_id":"u1","qty":1}', 404),       # unknown SKU
        ('{"sku":"api-1","user_id":"u1","qty":3}', 409),      # above per-user limit
    ]
    for body, want in bad:
        code, resp = stack.http('POST', '/v1/purchases', body, user='u1')
        assert code == want, (body, code, resp)
        assert resp.get('error') and resp.get('reason'), (body, resp)
    # Nothing was deducted by any of them.
    assert stack.redis('HGET', 'fs:promo:api-1', 'remaining') == '5'


def test_purchase_pay_cancel_lifecycle(stack):
    stack.create_promotion('api-2', stock=3, per_user_limit=1, hold_seconds=600)
    code, body = stack.http('POST', '/v1/purchases',
                            {'sku': 'api-2', 'qty': 1, 'request_id': 'req-a'}, user='alice')
    assert code == 202 and body['request_id'] == 'req-a', body
    got = wait_state(stack, 'req-a', {'reserved'}, 'alice')
    assert got['deadline_ms'] > 0
    # Filed under the buyer's scoped id, answered under their own.
    wait_for(lambda: stack.psql("SELECT user_id FROM orders WHERE request_id = '%s'"
                                % scoped_id('alice', 'req-a')) == [['alice']],
             timeout=20, what="alice's order under her scoped id")
    # A retry with the same request id is answered, not deducted again.
    code, body = stack.http('POST', '/v1/purchases',
                            {'sku': 'api-2', 'user_id': 'alice', 'qty': 1, 'request_id': 'req-a'},
                            user='alice')
    assert code in (202, 409), body
    # Only the buyer may see, pay or cancel it: to anyone else it does not exist.
    assert stack.http('GET', '/v1/purchases/req-a', user='mallory')[0] == 404
    code, body = stack.http('POST', '/v1/purchases/req-a/pay', user='mallory')
    assert code == 404, body
    code, body = stack.http('POST', '/v1/purchases/req-a/pay', {'user_id': 'mallory'}, user='alice')
    assert code == 400, body      # a body naming someone else is refused
    code, body = stack.http('POST', '/v1/purchases/req-a/pay', user='alice')
    assert code == 202, body
    wait_state(stack, 'req-a', {'paid'}, 'alice')

    # Generated request id; cancel gives the unit back.
    code, body = stack.http('POST', '/v1/purchases', {'sku': 'api-2', 'qty': 1}, user='bob')
    assert code == 202, body
    rid = body['request_id']
    assert len(rid) >= 10
    wait_state(stack, rid, {'reserved'}, 'bob')
    assert stack.redis('HGET', 'fs:promo:api-2', 'remaining') == '1'
    code, body = stack.http('POST', '/v1/purchases/%s/cancel' % rid, {'user_id': 'bob'}, user='bob')
    assert code == 202, body
    wait_state(stack, rid, {'cancelled'}, 'bob')
    assert stack.redis('HGET', 'fs:promo:api-2', 'remaining') == '2'

    # The same user is at their limit: refused by the deductor with a reason.
    code, body = stack.http('POST', '/v1/purchases',
                            {'sku': 'api-2', 'qty': 1, 'request_id': 'req-a2'}, user='alice')
    if code == 202:
        wait_state(stack, 'req-a2', {'limit_reached'}, 'alice')
    else:
        assert code == 409 and body['error'] == 'limit_reached', body

    code, body = stack.http('GET', '/v1/purchases/no-such-request', user='alice')
    assert code == 404, body
    code, body = stack.http('GET', '/v1/promotions/api-2')
    assert code == 200 and body['stock'] == 3, body


def test_retry_after_sold_out_gets_the_first_answer(stack):
    """A buyer whose 202 was lost retries with the same request id after the
    gateway learned the SKU sold out: the retry must say what the first send
    said (202, now with the unit reserved), not "sold out"."""
    stack.create_promotion('api-3', stock=1, per_user_limit=1, hold_seconds=600)
    code, body = stack.http('POST', '/v1/purchases',
                            {'sku': 'api-3', 'qty': 1, 'request_id': 'req-c'}, user='carol')
    assert code == 202, body
    wait_state(stack, 'req-c', {'reserved'}, 'carol')

    def gateway_says_sold_out():
        code, body = stack.http('POST', '/v1/purchases', {'sku': 'api-3', 'qty': 1}, user='dave')
        return code == 409 and body['error'] == 'sold_out'
    wait_for(gateway_says_sold_out, timeout=20, what="the gateway's sold-out filter")
    code, body = stack.http('POST', '/v1/purchases',
                            {'sku': 'api-3', 'qty': 1, 'request_id': 'req-c'}, user='carol')
    assert code == 202 and body == {'request_id': 'req-c', 'state': 'reserved'}, (code, body)
    # Another buyer sending carol's id gets no replay of her answer.
    code, body = stack.http('POST', '/v1/purchases',
                            {'sku': 'api-3', 'qty': 1, 'request_id': 'req-c'}, user='erin')
    assert code == 409 and body['error'] == 'sold_out', body
    # A new client-chosen id is still refused at the gateway.
    code, body = stack.http('POST', '/v1/purchases',
                            {'sku': 'api-3', 'qty': 1, 'request_id': 'req-e'}, user='erin')
    assert code == 409 and body['error'] == 'sold_out', body
    m = stack.metrics('gateway')
    assert m['flashsale_gateway_purchase_replays_total'] == 1
    # erin's two ids were refused without a look-up: the gateway knew Redis
    # had no record of them (gateway/known.h); carol's was looked up.
    assert m['flashsale_gateway_refusals_unlooked_total'] >= 2
    assert stack.redis('HGET', 'fs:promo:api-3', 'held') == '1'


def test_admin_needs_token(stack):
    # A retry must repeat the window: left out, it defaults to "now".
    now = int(time.time() * 1000)
    body = {'sku': 'adm-1', 'stock': 1, 'per_user_limit': 1, 'hold_seconds': 60,
            'start_ms': now, 'end_ms': now + 3600000}
    code, _ = stack.http('POST', '/admin/promotions', body)
    assert code == 401
    code, _ = stack.http('POST', '/admin/promotions', body, token='wrong')
    assert code == 401
    code, _ = stack.http('POST', '/admin/promotions', body, token=stack.admin_token)
    assert code in (200, 201)
    # Idempotent when identical, refused when different.
    code, _ = stack.http('POST', '/admin/promotions', body, token=stack.admin_token)
    assert code in (200, 201)
    body['stock'] = 2
    code, _ = stack.http('POST', '/admin/promotions', body, token=stack.admin_token)
    assert code == 409
    rows = stack.psql("SELECT stock FROM promotions WHERE sku = 'adm-1'")
    assert rows == [['1']], rows


def test_time_health_metrics(stack):
    code, body = stack.http('GET', '/v1/time')
    assert code == 200 and abs(body['now_ms'] - time.time() * 1000) < 5000, body
    for name, port in stack.ports.items():
        with urllib.request.urlopen('http://127.0.0.1:%d/healthz' % port, timeout=5) as r:
            assert r.status == 200, name
        with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port, timeout=5) as r:
            text = r.read().decode()
            assert '# TYPE flashsale_' in text, (name, text[:300])


def test_sighup_reloads_and_keeps_serving(stack):
    """SIGHUP re-reads the configuration in every daemon without a restart."""
    import os
    import signal
    for name, port in stack.ports.items():
        pid = int(open(os.path.join(stack.dir, 'run', name + '.pid')).read())
        os.kill(pid, signal.SIGHUP)
        deadline = time.time() + 10
        while 'event=reload_done' not in stack.log(name) and time.time() < deadline:
            time.sleep(0.05)
        assert 'event=reload_done' in stack.log(name), stack.log(name)[-2000:]
        with urllib.request.urlopen('http://127.0.0.1:%d/healthz' % port, timeout=5) as r:
            assert r.status == 200, name
        os.kill(pid, 0)   # still the same process


@pytest.mark.stack_env(FLASHSALE_GATEWAY_CACHE_MAX_AGE_MS='1000', FLASHSALE_GATEWAY_LOOPS='4')
def test_stalled_redis_is_dropped_and_reconnected(stack):
    """A Redis that stops answering without closing the socket (here: paused)
    must not hang the gateway: it drops the connection, answers 503 meanwhile,
    and recovers when Redis does."""
    import os
    import signal
    stack.create_promotion('stall-1', stock=20, per_user_limit=1, hold_seconds=600)
    pid = int(open(os.path.join(stack.dir, 'run', 'redis.pid')).read())
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: 'event=redis_stalled' in stack.log('gateway'), timeout=20,
                 what='the gateway to drop the stalled Redis connection')
        code, body = stack.http('GET', '/v1/purchases/anything', timeout=5, user='u1')
        assert code == 503, body
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: stack.http('GET', '/healthz')[0] == 200, timeout=20,
             what='the gateway to reconnect')
    # /healthz is ok only when every event loop is (CI found loop 0 ready
    # while another still had no Redis): new connections, any loop.
    for i in range(8):
        code, body = stack.http('POST', '/v1/purchases', {'sku': 'stall-1', 'qty': 1},
                                user='u%d' % i)
        assert code == 202, (i, body)


@pytest.mark.stack_env(FLASHSALE_GATEWAY_LOOPS='3')
def test_sigterm_drains_every_event_loop(stack):
    """A gateway of three event loops serves buyers on every loop, and
    SIGTERM drains each of them (their produces answered, their Kafka and
    Redis connections closed) before the process exits: not a hang on a
    loop nobody stopped, not a kill."""
    import os
    import signal
    stack.create_promotion('loops-1', stock=50, per_user_limit=1, hold_seconds=600)
    assert 'loops=3' in stack.log('gateway')
    import threading
    for i in range(30):     # a new connection each: the kernel spreads them
        code, body = stack.http('POST', '/v1/purchases',
                                {'sku': 'loops-1', 'qty': 1, 'request_id': 'lp-%d' % i},
                                user='loop-buyer-%d' % i)
        assert code == 202, (i, body)
    for i in range(6):
        wait_for(lambda: stack.http('GET', '/v1/purchases/lp-%d' % i,
                                    user='loop-buyer-%d' % i)[1].get('state') == 'reserved',
                 timeout=20, what='purchase lp-%d reserved' % i)
    # Long polls waiting on holds of ten minutes: the drain answers each
    # one with the state as it is (their next look was up to 1 s away, and
    # a loop stops about 0.2 s after its produces are done).
    polls = {}

    def long_poll(i):
        try:
            polls[i] = stack.http('GET', '/v1/purchases/lp-%d?wait_ms=10000&from=reserved' % i,
                                  user='loop-buyer-%d' % i)
        except Exception as e:      # the connection dropped unanswered
            polls[i] = (0, repr(e))

    threads = [threading.Thread(target=long_poll, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)                 # each has had its first read
    pid = int(open(os.path.join(stack.dir, 'run', 'gateway.pid')).read())
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    for t in threads:
        t.join(15)
    assert all(polls.get(i, (None,))[0] == 200 and polls[i][1]['state'] == 'reserved'
               for i in range(6)), polls
    wait_for(lambda: 'event=stopped' in stack.log('gateway'), timeout=20,
             what='the gateway to drain and stop')
    log = stack.log('gateway')
    assert sorted(l.split('loop=')[1].split()[0] for l in log.splitlines()
                  if 'event=draining loop=' in l) == ['0', '1', '2'], log[-3000:]
    wait_for(lambda: not os.path.exists('/proc/%d' % pid) or
             open('/proc/%d/stat' % pid).read().split()[2] == 'Z', timeout=10,
             what='the gateway process to exit')
    assert time.monotonic() - t0 < 15


@pytest.mark.stack_env(FLASHSALE_GATEWAY_LOOPS='4')
def test_new_promotion_is_known_to_every_loop_at_once(stack):
    """A promotion created through the admin API is answered by every event
    loop right after the 201 (CI found another loop's cache still without
    it: 404), for its info and for purchases."""
    for i in range(8):
        sku = 'fresh-%d' % i
        stack.create_promotion(sku, stock=5, per_user_limit=1, hold_seconds=600)
        code, body = stack.http('GET', '/v1/promotions/' + sku)
        assert code == 200 and body['stock'] == 5, (sku, code, body)
        code, body = stack.http('POST', '/v1/purchases', {'sku': sku, 'qty': 1},
                                user='fresh-buyer-%d' % i)
        assert code == 202, (sku, code, body)
