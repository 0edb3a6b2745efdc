"""Bounded HTTP and a closed admin surface (issue 9): what the public
listener refuses before evhttp parses it, the trusted-proxy rule, the
header deadline, and what is no longer reachable from the public port.

Each attack here got a 200 (or hung on) before: a 1 MB header, 10,000
header lines, two Content-Length headers, slowloris connections never
closed, /metrics and /admin on the public port, --print-config printing
secrets, an admin token accepted by prefix."""
import os
import socket
import subprocess
import time

import pytest

from sale import daemon_pid
from stack import wait_for


def connect(stack, source='127.0.0.1'):
    s = socket.create_connection(('127.0.0.1', stack.port_of('gateway')), timeout=5,
                                 source_address=(source, 0))
    return s


def exchange(stack, data, source='127.0.0.1', chunk=65536):
    """Send data (stopping when the server closes on us), then read until the
    server closes. Returns (bytes received, whether all of data was sent)."""
    s = connect(stack, source)
    sent_all = True
    try:
        for i in range(0, len(data), chunk):
            s.sendall(data[i:i + chunk])
    except (BrokenPipeError, ConnectionResetError):
        sent_all = False
    out = b''
    try:
        s.settimeout(5)
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    return out, sent_all


def status(resp):
    line = resp.split(b'\r\n', 1)[0].decode(errors='replace')
    return int(line.split()[1]) if line.startswith('HTTP/1.') else None


def refused(stack, reason):
    return stack.metrics('gateway').get(
        'flashsale_gateway_connections_refused_total{reason="%s"}' % reason, 0)


def test_oversized_and_ambiguous_heads(stack):
    big = b'GET /v1/time HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'a' * (1 << 20) + b'\r\n\r\n'
    resp, sent_all = exchange(stack, big)
    assert status(resp) == 431 or (resp == b'' and not sent_all), resp[:200]
    assert refused(stack, 'big_head') >= 1
    many = b'GET /v1/time HTTP/1.1\r\nHost: x\r\n' + b'X-A: b\r\n' * 10000 + b'\r\n'
    resp, sent_all = exchange(stack, many)
    assert status(resp) == 431 or (resp == b'' and not sent_all), resp[:200]
    assert refused(stack, 'big_head') >= 2

    body = b'{"sku":"x","qty":1}'
    two_lengths = (b'POST /v1/purchases HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n'
                   b'Content-Length: 5\r\n\r\n' % len(body)) + body
    assert status(exchange(stack, two_lengths)[0]) == 400
    chunked = (b'POST /v1/purchases HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n'
               b'5\r\nhello\r\n0\r\n\r\n')
    assert status(exchange(stack, chunked)[0]) == 400
    assert refused(stack, 'ambiguous') >= 2

    # Within the limits all is as before, on the same connection too.
    ok = b'GET /v1/time HTTP/1.1\r\nHost: x\r\n' + b'X-A: b\r\n' * 50 + b'\r\n'
    resp, _ = exchange(stack, ok + ok.replace(b'Host: x', b'Host: x\r\nConnection: close'))
    assert resp.count(b'HTTP/1.1 200 OK') == 2, resp[:300]

    # A body over gateway.max_body is a 413 with a reason.
    tok = stack.token('u1')
    huge = b'{"sku":"x","qty":1,"pad":"' + b'p' * 8000 + b'"}'
    req = (b'POST /v1/purchases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n'
           b'Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n'
           % (tok.encode(), len(huge))) + huge
    resp, _ = exchange(stack, req)
    assert status(resp) == 413 and b'body_too_large' in resp, resp[:300]


@pytest.mark.stack_env(FLASHSALE_GATEWAY_HEADER_TIMEOUT_MS='1500')
def test_slowloris_is_cut_at_the_header_deadline(stack):
    """Connections dribbling a byte at a time got a fresh read timeout per
    byte; the head's deadline now runs from its first byte. Buyers are
    served meanwhile (their latency under attack: bench/run's slowloris
    stage), and the gateway closes every slow connection with a 408."""
    slow = []
    for _ in range(200):
        s = connect(stack)
        s.sendall(b'GET /v1/time HTTP/1.1\r\n')
        slow.append(s)
    t0 = time.monotonic()
    closed, answers = set(), {}
    while len(closed) < len(slow) and time.monotonic() - t0 < 10:
        for i, s in enumerate(slow):
            if i in closed:
                continue
            try:
                s.sendall(b'X')        # one byte, well inside any per-read timeout
                s.settimeout(0.001)
                data = s.recv(4096)
                answers[i] = answers.get(i, b'') + data
                if data == b'':
                    closed.add(i)
            except socket.timeout:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed.add(i)
        code, _ = stack.http('GET', '/v1/time')
        assert code == 200
        time.sleep(0.25)
    assert len(closed) == len(slow), '%d of %d slow connections still open' % (
        len(slow) - len(closed), len(slow))
    assert sum(1 for a in answers.values() if status(a) == 408) >= len(slow) // 2, answers
    assert refused(stack, 'slow_head') >= len(slow)
    for s in slow:
        s.close()
    assert stack.metrics('gateway')['flashsale_gateway_connections'] <= 2


@pytest.mark.stack_env(FLASHSALE_GATEWAY_MAX_CONNECTIONS_PER_IP='5',
                       FLASHSALE_GATEWAY_TRUSTED_PROXIES='127.0.0.2',
                       FLASHSALE_GATEWAY_HEADER_TIMEOUT_MS='60000')
def test_connection_caps_and_the_trusted_proxy_rule(stack):
    """A per-IP cap, with the client's address taken from the PROXY line
    or X-Forwarded-For only when the peer is a configured proxy."""
    # The harness's last /healthz probe (a keep-alive connection from this
    # address, closed by the client) counts towards the cap until its loop
    # has seen the close: five opened before that got one refused, and the
    # gauge then stayed at four (CI, twice). Start from no connection.
    wait_for(lambda: stack.metrics('gateway')['flashsale_gateway_connections'] == 0,
             timeout=10, what='the harness\'s connections closed')
    idle = [connect(stack) for _ in range(5)]
    # Each loop counts the connections it accepted on its own turn: on a
    # busy machine a sixth connection can be counted before one of the
    # five (CI saw a 200). The gauge below counts them as accepted, a
    # moment before their address is counted, so it only shortens the
    # wait: the check that follows retries until the 503. The idle five must
    # outlive the wait (the header deadline, 5 s by default, cut them
    # while a keep-alive 200 held the check for its 5 s read timeout: CI
    # timed out waiting for the 503), and the check asks for a close.
    try:
        wait_for(lambda: stack.metrics('gateway')['flashsale_gateway_connections'] >= 5,
                 timeout=10, what='the five idle connections counted')
    except AssertionError as e:
        raise AssertionError('%s: %s' % (e, {k: v for k, v in stack.metrics('gateway').items()
                                             if 'connections' in k})) from None
    assert refused(stack, 'too_many') == 0
    wait_for(lambda: status(exchange(stack, b'GET /v1/time HTTP/1.1\r\nHost: x\r\n'
                                            b'Connection: close\r\n\r\n')[0])
             == 503, timeout=10, what='a sixth connection from one address to be refused')
    assert refused(stack, 'too_many') >= 1
    for s in idle:
        s.close()
    wait_for(lambda: status(exchange(stack, b'GET /v1/time HTTP/1.1\r\nHost: x\r\n'
                                            b'Connection: close\r\n\r\n')[0]) == 200,
             timeout=5, what='the cap to free up')

    # Behind the trusted proxy (127.0.0.2) every client has its own cap...
    get = b'GET /v1/time HTTP/1.1\r\nHost: x\r\n\r\n'
    held = []
    for client in ('198.51.100.%d' % i for i in range(1, 4)):
        for _ in range(5):
            s = connect(stack, '127.0.0.2')
            s.sendall(b'PROXY TCP4 %s 10.0.0.1 40000 443\r\n' % client.encode() + get)
            s.settimeout(5)
            assert status(s.recv(4096)) == 200
            held.append(s)
    s = connect(stack, '127.0.0.2')
    s.sendall(b'PROXY TCP4 198.51.100.1 10.0.0.1 40000 443\r\n' + get)
    s.settimeout(5)
    assert status(s.recv(4096)) == 503
    s.close()
    for s in held:
        s.close()
    # ...while a PROXY line from anyone else is not believed (nor parsed).
    resp, _ = exchange(stack, b'PROXY TCP4 198.51.100.9 10.0.0.1 40000 443\r\n' + get)
    assert status(resp) != 200, resp[:200]

    # X-Forwarded-For names the client only from the trusted proxy: the
    # intent on Kafka carries the address the gateway believed.
    stack.create_promotion('xff-1', stock=10, per_user_limit=1, hold_seconds=600)
    for source, user in (('127.0.0.2', 'via-proxy'), ('127.0.0.1', 'direct')):
        body = b'{"sku":"xff-1","qty":1}'
        req = (b'POST /v1/purchases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n'
               b'X-Forwarded-For: 203.0.113.7, 127.0.0.2\r\nContent-Type: application/json\r\n'
               b'Content-Length: %d\r\nConnection: close\r\n\r\n'
               % (stack.token(user).encode(), len(body))) + body
        resp, _ = exchange(stack, req, source=source)
        assert status(resp) == 202, resp[:300]
    out = subprocess.run(['kcat', '-b', stack.env['FLASHSALE_KAFKA_BOOTSTRAP'], '-C', '-t',
                          'flashsale.intents', '-o', 'beginning', '-e', '-q', '-f', '%s\n'],
                         capture_output=True, timeout=60).stdout
    seen = {}
    for user in (b'via-proxy', b'direct'):
        at = out.find(user)
        assert at >= 0, out
        window = out[at:at + 40]       # user_id (4), qty (5), client_ip (6)
        seen[user] = b'203.0.113.7' in window, b'127.0.0.1' in window
    assert seen == {b'via-proxy': (True, False), b'direct': (False, True)}, seen


def test_admin_surface_is_closed(stack):
    public = stack.port_of('gateway')
    for path in ('/metrics', '/admin/promotions'):
        resp, _ = exchange(stack, b'GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'
                           % path.encode())
        assert status(resp) == 404, (path, resp[:200])
    assert stack.ports['gateway'] != public
    assert 'flashsale_gateway' in '\n'.join(stack.metrics('gateway'))

    # The token is compared over its full length.
    body = {'sku': 'adm-x', 'stock': 1, 'per_user_limit': 1, 'hold_seconds': 60,
            'start_ms': 0, 'end_ms': 4102444800000}
    t = stack.admin_token
    for wrong in (t[:1], t[:-1], t + 'x', '', 'x' * len(t)):
        assert stack.http('POST', '/admin/promotions', body, token=wrong)[0] == 401, wrong
    assert stack.http('POST', '/admin/promotions', body, token=t)[0] in (200, 201)

    # --print-config names secrets without printing them; *_FILE reads them.
    env = dict(stack.env)
    env['FLASHSALE_POSTGRES_CONNINFO'] = 'host=/x dbname=flashsale password=hunter2'
    env.pop('FLASHSALE_GATEWAY_ADMIN_TOKEN', None)
    env['FLASHSALE_GATEWAY_ADMIN_TOKEN_FILE'] = stack.path('admin.token')
    r = subprocess.run([stack.bin('flashsale-gateway'), '--print-config'], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for secret in ('hunter2', t, stack.jwt_secret):
        assert secret not in r.stdout
    lines = dict(line.split(' = ', 1) for line in r.stdout.splitlines() if ' = ' in line)
    for key in ('gateway.admin_token', 'gateway.jwt_secret', 'postgres.conninfo'):
        assert lines[key] == '<redacted>', (key, lines[key])
    assert os.path.exists('/proc/%d' % daemon_pid(stack, 'gateway'))


def test_stop_with_idle_connections_open(stack):
    """SIGTERM while idle connections are open: the gateway drains, exits
    cleanly and frees each connection's guard. Their cleanup runs when the
    event base is freed, after evhttp's: the guard's maps freed before it
    were grown again and leaked (LeakSanitizer, in CI)."""
    idle = [connect(stack) for _ in range(3)]
    wait_for(lambda: stack.metrics('gateway')['flashsale_gateway_connections'] >= 1,
             timeout=10, what='an idle connection counted')
    stack.daemon('stop', 'gateway')
    for s in idle:
        s.close()
    log = open(stack.path('logs', 'gateway.log')).read()
    assert 'event=stopped' in log, log[-2000:]
    assert not stack.sanitizer_reports(), stack.sanitizer_reports()
