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
    def listeners():
        return int(stack.redis('PUBSUB', 'NUMSUB', 'fs:st').split()[1])
    gateways = listeners()
    listen = subprocess.Popen(['redis-cli', '-s', stack.path('redis.sock'), 'SUBSCRIBE', 'fs:st'],
                              stdout=subprocess.PIPE, text=True)
    out = ''
    try:
        wait_for(lambda: listeners() > gateways, timeout=10, what='our listener on fs:st')
        rebuilds = int(stack.redis('GET', 'fs:rebuilds') or 0)
        r = rebuild(stack, '--force')
        # Redis may still be delivering the rebuild's last messages when it
        # returns (a CI run lost some): read until a message published
        # after them comes through.
        stack.redis('PUBLISH', 'fs:st', 'end-of-rebuild')
        deadline = time.time() + 10
        while time.time() < deadline:
            line = listen.stdout.readline()
            if not line or line.strip() == 'end-of-rebuild':
                break
            out += line
    finally:
        listen.terminate()
    out += listen.communicate(timeout=10)[0]
    assert r.returncode == 0, r.stdout + r.stderr
    # The release loop learns that holds were restored (reconciler/scan.h).
    # The running reconciler may repair the fenced partitions too: each
    # write bumps it.
    assert int(stack.redis('GET', 'fs:rebuilds') or 0) > rebuilds
    # Every record written was told, "+ rid rid ..." (gateway/known.h): a
    # gateway never refuses a retry of it without asking Redis.
    told_ids = set()
    for line in out.splitlines():
        if line.startswith('+ '):
            told_ids.update(line.split()[1:])
    records = {k[len('fs:req:'):] for k in stack.redis('KEYS', 'fs:req:*').split()}
    assert records and records <= told_ids, sorted(records - told_ids)[:5]
    assert stack.redis('HGETALL', 'fs:promo:rb-1') == before
    # The gateways are told (fs:st "* rebuilt"): their long polls look again
    # and their promotion caches are read at once, not at the next refresh.
    wait_for(lambda: stack.log('gateway').count('event=push_wake_all') > told, timeout=10,
             what='the gateway told of the rebuild')
