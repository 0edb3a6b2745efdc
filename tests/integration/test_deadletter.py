"""A malformed message on the intents topic goes to the dead-letter topic
with a reason, and the deductor goes on with the next one."""
import subprocess
import time


def kcat(stack, *args, input=None):
    r = subprocess.run(['kcat', '-b', stack.env['FLASHSALE_KAFKA_BOOTSTRAP']] + list(args),
                       input=input, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_garbage_intent_is_dead_lettered(stack):
    stack.create_promotion('dlq-1', stock=5, per_user_limit=1, hold_seconds=600)
    # Not protobuf at all, and valid protobuf that breaks the contract
    # (kind 0, no request id).
    kcat(stack, '-P', '-t', 'flashsale.intents', '-k', 'dlq-1', input=b'\xff\xfe garbage')
    kcat(stack, '-P', '-t', 'flashsale.intents', '-k', 'dlq-1', input=b'\x08\x00')
    code, body = stack.http('POST', '/v1/purchases',
                            {'sku': 'dlq-1', 'qty': 1, 'request_id': 'after-dlq'}, user='carol')
    assert code == 202, body
    deadline = time.time() + 30
    while time.time() < deadline:
        code, body = stack.http('GET', '/v1/purchases/after-dlq', user='carol')
        if code == 200 and body['state'] == 'reserved':
            break
        time.sleep(0.1)
    assert body['state'] == 'reserved', body

    # The garbage may sit on another partition than the purchase: wait for
    # both dead letters rather than assume an order between partitions.
    deadline = time.time() + 30
    while time.time() < deadline:
        out = kcat(stack, '-C', '-t', 'flashsale.deadletter', '-o', 'beginning', '-e', '-q',
                   '-f', '%k\n')
        keys = out.decode('utf-8', 'replace').split()
        if len(keys) >= 2:
            break
        time.sleep(0.2)
    assert keys == ['dlq-1', 'dlq-1'], keys
    # The deductor still drains: the audit is clean.
    from sale import assert_audit_clean
    assert_audit_clean(stack)
