"""A malformed message on the intents topic goes to the dead-letter topic
with a reason, and the deductor goes on with the next one."""
import json
import subprocess
import time


def kcat(stack, *args, input=None):
    r = subprocess.run(['kcat', '-b', stack.env['FLASHSALE_KAFKA_BOOTSTRAP']] + list(args),
                       input=input, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_garbage_intent_is_dead_lettered(stack):
    stack.create_promotion('dlq-1', stock=5, per_user_limit=1, hold_seconds=600)
    # Not protobuf at all, and a valid protobuf-shaped but empty message.
    kcat(stack, '-P', '-t', 'flashsale.intents', '-k', 'dlq-1', input=b'\xff\xfe garbage')
    kcat(stack, '-P', '-t', 'flashsale.intents', '-k', 'dlq-1', '-Z', input=b'')
    code, body = stack.http('POST', '/v1/purchases',
                            {'sku': 'dlq-1', 'user_id': 'carol', 'qty': 1, 'request_id': 'after-dlq'})
    assert code == 202, body
    deadline = time.time() + 30
    while time.time() < deadline:
        code, body = stack.http('GET', '/v1/purchases/after-dlq')
        if code == 200 and body['state'] == 'reserved':
            break
        time.sleep(0.1)
    assert body['state'] == 'reserved', body

    out = kcat(stack, '-C', '-t', 'flashsale.deadletter', '-o', 'beginning', '-e', '-J', '-q')
    msgs = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert len(msgs) >= 2, msgs
    assert all(m['key'] == 'dlq-1' for m in msgs), msgs
    # The deductor still drains: the audit is clean.
    from sale import assert_audit_clean
    assert_audit_clean(stack)
