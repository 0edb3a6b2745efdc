"""Scenario helpers shared by the integration tests: drive buyers with
flashsale-loadgen, run the audit, and read the invariants back from
PostgreSQL and Redis."""
import json
import os
import subprocess
import tempfile

from stack import wait_for


def buyers(stack, sku, n, *, concurrency=128, dup_ratio=0.2, pay_ratio=0.5,
           cancel_ratio=0.0, users=None, qty_max=1, wait_final=True, seed=1,
           final_timeout_s=120, ramp_ms=0, user_prefix=None, background=False, wait_ms=0,
           wait_concurrency=0):
    """Run the load generator against the stack's gateway.

    Returns the parsed JSON report, or the Popen (with .report_path) when
    background is true."""
    fd, report = tempfile.mkstemp(prefix='loadgen-', suffix='.json')
    os.close(fd)
    cmd = [stack.bin('flashsale-loadgen'), '--url', stack.url, '--sku', sku,
           '--buyers', str(n), '--concurrency', str(concurrency),
           '--dup-ratio', str(dup_ratio), '--pay-ratio', str(pay_ratio),
           '--cancel-ratio', str(cancel_ratio), '--users', str(users or n),
           '--qty-max', str(qty_max), '--seed', str(seed), '--json', report,
           '--final-timeout-s', str(final_timeout_s), '--poll-ms', '100',
           '--ramp-ms', str(ramp_ms), '--jwt-secret-file', stack.path('jwt.secret')]
    if not wait_final:
        cmd.append('--no-wait-final')
    if wait_ms:
        cmd += ['--wait-ms', str(wait_ms), '--wait-concurrency', str(wait_concurrency)]
    if user_prefix:
        cmd += ['--user-prefix', user_prefix]
    if background:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        p.report_path = report
        return p
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=final_timeout_s + 120)
    assert r.returncode == 0, 'loadgen failed (%d):\n%s\n%s' % (r.returncode, r.stdout, r.stderr)
    return json.load(open(report))


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, 'loadgen failed (%d):\n%s' % (proc.returncode, out)
    return json.load(open(proc.report_path))


def audit(stack, wait_drain=90):
    """Run `flashsale-reconciler audit`; returns (exit code, output)."""
    r = subprocess.run([stack.bin('flashsale-reconciler'), 'audit',
                        '--wait-drain', str(wait_drain)],
                       capture_output=True, text=True, env=stack.env, timeout=wait_drain + 60)
    return r.returncode, r.stdout + r.stderr


def assert_audit_clean(stack, wait_drain=90):
    code, out = audit(stack, wait_drain)
    assert code == 0, 'audit found violations:\n' + out
    assert 'verdict=ok' in out, out
    return out


def orders_by_state(stack, sku):
    rows = stack.psql("SELECT state, count(*), coalesce(sum(qty),0) FROM orders "
                      "WHERE sku = '%s' GROUP BY state" % sku)
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def promo(stack, sku):
    flat = stack.redis('HGETALL', 'fs:promo:' + sku).split('\n')
    h = dict(zip(flat[0::2], flat[1::2]))
    return {k: int(v) for k, v in h.items()}


def assert_invariants(stack, sku, initial):
    """The DEVELOPERS.md invariants for one SKU, from both stores."""
    p = promo(stack, sku)
    assert p['remaining'] >= 0, p
    assert p['remaining'] + p['held'] + p['sold'] == initial, p
    st = orders_by_state(stack, sku)
    assert st.get('held', (0, 0))[1] == p['held'], (st, p)
    assert st.get('paid', (0, 0))[1] == p['sold'], (st, p)
    # No user above the limit, in PostgreSQL.
    limit = p['limit']
    over = stack.psql("SELECT user_id, sum(qty) FROM orders WHERE sku = '%s' AND state IN "
                      "('held','paid') GROUP BY user_id HAVING sum(qty) > %d" % (sku, limit))
    assert over == [], over
    # No order without a deduction: every order's request is known to Redis
    # in the same state.
    rows = stack.psql("SELECT request_id, state FROM orders WHERE sku = '%s'" % sku)
    want = {'held': 'reserved', 'paid': 'paid', 'cancelled': 'cancelled', 'expired': 'expired'}
    for rid, state in rows:
        assert stack.redis('HGET', 'fs:req:' + rid, 'st') == want[state], (rid, state)
    return p, st


def start_sale(stack, sku, stock=400, buyers_n=2000):
    """Start a sale of `stock` units to `buyers_n` buyers arriving over 4 s,
    in the background, and return once it is under way (some units gone,
    most not), so a test can break something in the middle of it."""
    stack.create_promotion(sku, stock=stock, per_user_limit=1, hold_seconds=600)
    proc = buyers(stack, sku, buyers_n, concurrency=128, dup_ratio=0.2, pay_ratio=0.5,
                  wait_final=False, ramp_ms=4000, background=True)

    def under_way():
        rem = stack.redis('HGET', 'fs:promo:' + sku, 'remaining')
        return rem and int(rem) < stock * 7 // 8
    wait_for(under_way, timeout=30, interval=0.05, what='the sale to start')
    return proc


def assert_sold_out_cleanly(stack, sku, stock, report):
    """After a disturbed sale: every unit held or paid exactly once, audit clean."""
    assert report['accepted'] >= stock, report
    assert_audit_clean(stack, wait_drain=120)
    st = orders_by_state(stack, sku)
    assert st.get('held', (0, 0))[0] + st.get('paid', (0, 0))[0] == stock, st
    p, _ = assert_invariants(stack, sku, stock)
    assert p['remaining'] == 0, p


def partition_of(sku, partitions=12):
    """The partition every flashsale producer puts a SKU on: Kafka's murmur2
    (librdkafka's murmur2_random with a key), as common/kafka.c computes it."""
    data = sku.encode()
    m, h = 0x5bd1e995, (0x9747b28c ^ len(data)) & 0xffffffff
    for i in range(len(data) // 4):
        k = int.from_bytes(data[4 * i:4 * i + 4], 'little')
        k = (k * m) & 0xffffffff
        k ^= k >> 24
        k = (k * m) & 0xffffffff
        h = ((h * m) & 0xffffffff) ^ k
    idx, extra = len(data) & ~3, len(data) % 4
    if extra == 3:
        h ^= data[idx + 2] << 16
    if extra >= 2:
        h ^= data[idx + 1] << 8
    if extra >= 1:
        h = ((h ^ data[idx]) * m) & 0xffffffff
    h ^= h >> 13
    h = (h * m) & 0xffffffff
    h ^= h >> 15
    return (h & 0x7fffffff) % partitions


def assert_ledger_never_oversold(stack, sku, stock, limit):
    """Replay the SKU's ledger as PostgreSQL holds it (one row per event id,
    in ledger order) and check that at no point were more units held or sold
    than the stock, nor any user above the limit: an oversell that later
    expired away still shows here."""
    rows = stack.psql("SELECT kind, user_id, qty, request_id FROM ledger_events WHERE sku = '%s' "
                      "ORDER BY ledger_partition, ledger_offset" % sku)
    held = sold = 0
    users = {}
    for kind, user, qty, rid in rows:
        qty = int(qty)
        if kind == 'reserved':
            held += qty
            users[user] = users.get(user, 0) + qty
        elif kind == 'paid':
            held -= qty
            sold += qty
        elif kind in ('cancelled', 'expired'):
            held -= qty
            users[user] = users.get(user, 0) - qty
        else:
            continue
        assert held + sold <= stock, ('ledger oversold %s at %s: held=%d sold=%d stock=%d'
                                      % (sku, rid, held, sold, stock))
        assert users.get(user, 0) <= limit, ('user %s above the limit at %s' % (user, rid))
    return len(rows)


def health(stack, name):
    """A daemon's /healthz as (HTTP status, JSON body)."""
    import urllib.error
    import urllib.request
    url = 'http://127.0.0.1:%d/healthz' % stack.ports[name]
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def daemon_pid(stack, name):
    with open(os.path.join(stack.dir, 'run', name + '.pid')) as f:
        return int(f.read().strip())
