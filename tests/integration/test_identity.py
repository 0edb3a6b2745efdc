"""Buyers are who their token says (issue 9): every attack of the issue,
tried against a real stack, each of which succeeded before.

- identity from the body: bots with made-up user ids, forged, expired,
  not-yet-valid and wrongly signed tokens; key rotation through a JWKS file;
- purchases of others: probing, paying, cancelling, claiming a victim's id;
- the Kafka path: a forged CANCEL for another user's purchase, a forged
  RELEASE, a keyless intent, oversized fields and messages."""
import json
import os
import signal
import subprocess
import tempfile
import time

from sale import daemon_pid, partition_of
from stack import b64url, jwt_hs256, scoped_id, wait_for


def b64url_int(n):
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, 'big'))


class Keys:
    """An RSA and an EC P-256 key made with the openssl command, their JWKS
    entries, and RS256/ES256 signing through openssl (never by hand)."""

    def __init__(self, d):
        self.dir = d
        self.rsa = os.path.join(d, 'rsa.pem')
        self.ec = os.path.join(d, 'ec.pem')
        subprocess.run(['openssl', 'genpkey', '-algorithm', 'RSA', '-pkeyopt',
                        'rsa_keygen_bits:2048', '-out', self.rsa], check=True,
                       capture_output=True)
        subprocess.run(['openssl', 'genpkey', '-algorithm', 'EC', '-pkeyopt',
                        'ec_paramgen_curve:P-256', '-out', self.ec], check=True,
                       capture_output=True)

    def rsa_jwk(self, kid):
        out = subprocess.run(['openssl', 'rsa', '-in', self.rsa, '-noout', '-modulus'],
                             check=True, capture_output=True, text=True).stdout
        n = int(out.strip().split('=', 1)[1], 16)
        return {'kty': 'RSA', 'kid': kid, 'alg': 'RS256', 'use': 'sig',
                'n': b64url_int(n), 'e': b64url_int(65537)}

    def ec_jwk(self, kid):
        der = subprocess.run(['openssl', 'pkey', '-in', self.ec, '-pubout', '-outform', 'DER'],
                             check=True, capture_output=True).stdout
        point = der[-65:]          # SubjectPublicKeyInfo ends with 04 || x || y
        assert point[0] == 4
        return {'kty': 'EC', 'kid': kid, 'crv': 'P-256', 'alg': 'ES256',
                'x': b64url(point[1:33]), 'y': b64url(point[33:])}

    def sign(self, alg, kid, claims):
        head = b64url(json.dumps({'alg': alg, 'typ': 'JWT', 'kid': kid}).encode())
        body = b64url(json.dumps(claims).encode())
        data = ('%s.%s' % (head, body)).encode()
        key = self.rsa if alg == 'RS256' else self.ec
        sig = subprocess.run(['openssl', 'dgst', '-sha256', '-sign', key], input=data,
                             check=True, capture_output=True).stdout
        if alg == 'ES256':
            sig = der_to_raw(sig)
        return '%s.%s' % (data.decode(), b64url(sig))


def der_to_raw(der):
    """ECDSA-Sig-Value (DER SEQUENCE of two INTEGERs) to JWS's r || s."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7f)
    out = b''
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        v = der[i + 2:i + 2 + n].lstrip(b'\0')
        out += v.rjust(32, b'\0')
        i += 2 + n
    return out


def claims(user, ttl=600, **extra):
    now = int(time.time())
    c = {'sub': user, 'iat': now, 'exp': now + ttl}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def purchase(stack, sku, rid=None, token=None, user=None, body_user=None):
    body = {'sku': sku, 'qty': 1}
    if rid:
        body['request_id'] = rid
    if body_user:
        body['user_id'] = body_user
    return stack.http('POST', '/v1/purchases', body, token=token, user=user)


def state(stack, rid, user):
    code, body = stack.http('GET', '/v1/purchases/' + rid, user=user)
    return body.get('state') if code == 200 else None


def test_bots_and_bad_tokens_are_refused(stack):
    """30 made-up user ids from one client got 30 x 202 before: without a
    token nothing gets in, and no token but a valid one does."""
    stack.create_promotion('id-1', stock=100, per_user_limit=1, hold_seconds=600)
    for i in range(30):
        code, body = purchase(stack, 'id-1', body_user='bot-%d' % i)
        assert code == 401 and body['error'] == 'unauthorized', (code, body)
    s = stack.jwt_secret
    other = 'x' * 64
    head_none = b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())
    good = stack.token('eve')
    h, b, sig = good.split('.')
    tampered = '.'.join([h, b64url(json.dumps(claims('mallory')).encode()), sig])
    bad = {
        'expired': jwt_hs256(s, claims('eve', ttl=-120)),       # beyond the 30 s leeway
        'not yet valid': jwt_hs256(s, claims('eve', nbf=int(time.time()) + 600)),
        'no exp': jwt_hs256(s, {'sub': 'eve'}),
        'wrong key': jwt_hs256(other, claims('eve')),
        'alg none': '%s.%s.' % (head_none, b64url(json.dumps(claims('eve')).encode())),
        'tampered': tampered,
        'bad sub': jwt_hs256(s, claims('has space')),
        'garbage': 'not.a.token',
    }
    for what, tok in bad.items():
        code, body = purchase(stack, 'id-1', token=tok)
        assert code == 401, (what, code, body)
        code, _ = stack.http('GET', '/v1/purchases/x', token=tok)
        assert code == 401, what
    code, body = purchase(stack, 'id-1', token=good)
    assert code == 202, body
    # The body may name the buyer, but only the token's.
    code, body = purchase(stack, 'id-1', token=good, body_user='mallory')
    assert code == 400 and 'bearer' in body['reason'], body
    assert stack.redis('HGET', 'fs:promo:id-1', 'remaining') in ('99', '100')
    m = stack.metrics('gateway')
    assert m['flashsale_gateway_auth_failures_total'] >= 30 + 2 * len(bad), m
    # Within the leeway a just-expired token still counts (clock skew).
    assert purchase(stack, 'id-1', token=jwt_hs256(s, claims('fay', ttl=-5)))[0] == 202

    # `flashsale-gateway token` prints a token of the stack's demo key.
    r = subprocess.run([stack.bin('flashsale-gateway'), 'token', '--user', 'buyer-1',
                        '--ttl', '60'], env=stack.env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert purchase(stack, 'id-1', token=r.stdout.strip())[0] == 202


def test_rate_limit_follows_the_token_not_the_body(stack):
    """One buyer cannot pass as many by changing the body: the per-user
    rate limit (burst 10) counts the token's user."""
    stack.create_promotion('id-2', stock=100, per_user_limit=1, hold_seconds=600)
    tok = stack.token('greedy')
    codes = [purchase(stack, 'id-2', token=tok, rid='g-%d' % i)[0] for i in range(20)]
    assert codes.count(429) >= 8 and codes.count(202) <= 11, codes
    assert set(codes) <= {202, 429}, codes


def test_key_rotation_through_the_jwks_file(make_stack):
    """RS256 and ES256 keys from a JWKS file, chosen by kid; SIGHUP re-reads
    it: a new key is accepted at once, a dropped key no longer is."""
    d = tempfile.mkdtemp(prefix='jwks-')
    keys = Keys(d)
    jwks = os.path.join(d, 'jwks.json')

    def write(*entries):
        with open(jwks + '.tmp', 'w') as f:
            json.dump({'keys': list(entries)}, f)
        os.replace(jwks + '.tmp', jwks)

    write(keys.rsa_jwk('2026-a'))
    # Four event loops: each must take the new keys (loop 0 fans SIGHUP out),
    # and the buyers below connect anew each time, to any of them.
    stack = make_stack(env={'FLASHSALE_GATEWAY_LOOPS': '4',
                            'FLASHSALE_GATEWAY_JWT_JWKS_FILE': jwks,
                            'FLASHSALE_GATEWAY_JWT_ISSUER': 'https://shop.example',
                            'FLASHSALE_GATEWAY_JWT_AUDIENCE': 'flashsale'})
    stack.create_promotion('rot-1', stock=100, per_user_limit=5, hold_seconds=600)
    ok = dict(iss='https://shop.example', aud='flashsale')

    def buy(tok):
        return purchase(stack, 'rot-1', token=tok)[0]

    old = keys.sign('RS256', '2026-a', claims('ann', **ok))
    new = keys.sign('ES256', '2026-b', claims('ann', **ok))
    assert buy(old) == 202
    assert buy(new) == 401                     # not published yet
    assert buy(keys.sign('RS256', '2026-a', claims('ann', iss='https://evil.example',
                                                  aud='flashsale'))) == 401
    assert buy(keys.sign('RS256', '2026-a', claims('ann', iss=ok['iss'], aud='other'))) == 401
    # A public key is never an HMAC secret: HS256 under the RSA key's kid.
    forged_head = b64url(json.dumps({'alg': 'HS256', 'kid': '2026-a'}).encode())
    forged_body = b64url(json.dumps(claims('ann', **ok)).encode())
    assert buy('%s.%s.%s' % (forged_head, forged_body, b64url(b'x' * 32))) == 401

    assert 'loops=4' in stack.log('gateway')

    def reload():
        before = stack.log('gateway').count('event=keys_reloaded')
        os.kill(daemon_pid(stack, 'gateway'), signal.SIGHUP)
        wait_for(lambda: stack.log('gateway').count('event=keys_reloaded') >= before + 4,
                 timeout=10, what='every loop of the gateway to re-read its keys')

    write(keys.rsa_jwk('2026-a'), keys.ec_jwk('2026-b'))        # publish the new key
    reload()
    assert buy(old) == 202 and buy(new) == 202
    for i in range(12):
        assert buy(keys.sign('ES256', '2026-b', claims('new-%d' % i, **ok))) == 202, i
    write(keys.ec_jwk('2026-b'))                                 # retire the old one
    reload()
    for i in range(12):
        assert buy(keys.sign('RS256', '2026-a', claims('old-%d' % i, **ok))) == 401, i
    assert buy(keys.sign('ES256', '2026-b', claims('bob', **ok))) == 202
    # A broken file keeps the keys in use.
    with open(jwks, 'w') as f:
        f.write('{"keys": [')
    os.kill(daemon_pid(stack, 'gateway'), signal.SIGHUP)
    wait_for(lambda: 'event=keys_reload_failed' in stack.log('gateway'), timeout=10,
             what='the failed reload to be logged')
    assert buy(keys.sign('ES256', '2026-b', claims('cid', **ok))) == 202
    subprocess.run(['rm', '-rf', d])


def test_purchases_are_their_owners_only(stack):
    """GET needed nothing and showed the owner; cancel only asked for the
    owner's user id; an attacker could claim a victim's request id first."""
    stack.create_promotion('own-1', stock=5, per_user_limit=1, hold_seconds=600)
    # The attacker takes the id the victim's client is about to use.
    assert purchase(stack, 'own-1', rid='victim-checkout-1', user='attacker')[0] == 202
    code, body = purchase(stack, 'own-1', rid='victim-checkout-1', user='victim')
    assert code == 202 and body['request_id'] == 'victim-checkout-1', body
    wait_for(lambda: state(stack, 'victim-checkout-1', 'victim') == 'reserved', timeout=20,
             what="the victim's own purchase")
    wait_for(lambda: state(stack, 'victim-checkout-1', 'attacker') == 'reserved', timeout=20,
             what="the attacker's, apart from it")
    # Others see nothing, pay nothing, cancel nothing: 404, as for no purchase.
    for method, path in (('GET', ''), ('POST', '/pay'), ('POST', '/cancel')):
        code, body = stack.http(method, '/v1/purchases/victim-checkout-1' + path, user='thief')
        assert code == 404, (method, path, code, body)
        assert 'victim' not in json.dumps(body)
    code, body = stack.http('GET', '/v1/purchases/victim-checkout-1', user='victim')
    assert code == 200 and body['state'] == 'reserved', body
    assert stack.http('POST', '/v1/purchases/victim-checkout-1/pay', user='victim')[0] == 202
    wait_for(lambda: state(stack, 'victim-checkout-1', 'victim') == 'paid', timeout=20,
             what='the victim paid')
    assert state(stack, 'victim-checkout-1', 'attacker') == 'reserved'
    wait_for(lambda: stack.psql("SELECT user_id, state FROM orders WHERE sku = 'own-1' "
                                "ORDER BY user_id") == [['attacker', 'held'], ['victim', 'paid']],
             timeout=20, what='two orders, one each')


# ---------------------------------------------------------------- Kafka

def varint(n):
    out = b''
    while True:
        b = n & 0x7f
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def intent(kind, request_id, sku, user='', qty=0, client_ip='', source='gateway'):
    """An Intent (proto/flashsale.proto) encoded by hand: the forger's view."""
    def s(field, v):
        v = v.encode() if isinstance(v, str) else v
        return varint(field << 3 | 2) + varint(len(v)) + v if v else b''
    out = varint(1 << 3) + varint(kind) + s(2, request_id) + s(3, sku) + s(4, user)
    if qty:
        out += varint(5 << 3) + varint(qty)
    return out + s(6, client_ip) + varint(7 << 3) + varint(int(time.time() * 1000)) + s(8, source)


def kcat(stack, *args, input=None):
    r = subprocess.run(['kcat', '-b', stack.env['FLASHSALE_KAFKA_BOOTSTRAP']] + list(args),
                       input=input, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def produce(stack, sku, value, key=True):
    args = ['-P', '-t', 'flashsale.intents', '-p', str(partition_of(sku))]
    if key:
        args += ['-k', sku]
    kcat(stack, *args, input=value)


def deadletters(stack):
    out = kcat(stack, '-C', '-t', 'flashsale.deadletter', '-o', 'beginning', '-e', '-q',
               '-f', '%o\n')
    return len(out.split())


def test_forged_intents_on_kafka_change_nothing(stack):
    """Whoever can write to the intents topic still cannot act on another
    user's purchase: deduct.lua checks the owner; the deductor's door
    refuses keyless, oversized and ill-sourced intents to the dead letters."""
    sku = 'kf-1'
    stack.create_promotion(sku, stock=5, per_user_limit=1, hold_seconds=600)
    assert purchase(stack, sku, rid='mine', user='alice')[0] == 202
    wait_for(lambda: state(stack, 'mine', 'alice') == 'reserved', timeout=20, what='the hold')
    rid = scoped_id('alice', 'mine')
    CANCEL, RELEASE, PURCHASE = 3, 4, 1
    produce(stack, sku, intent(CANCEL, rid, sku, user='mallory'))
    # Refused like an unknown request: nothing said about whose it is.
    wait_for(lambda: stack.psql(
        "SELECT count(*) FROM ledger_events WHERE request_id = '%s' AND kind = "
        "'transition_refused' AND reason = 'unknown_request'" % rid) == [['1']],
        timeout=20, what='the forged cancel to be refused')
    assert state(stack, 'mine', 'alice') == 'reserved'
    assert stack.redis('HGET', 'fs:promo:' + sku, 'held') == '1'

    before = deadletters(stack)
    produce(stack, sku, intent(RELEASE, rid, sku, source='gateway'))       # not the reconciler
    produce(stack, sku, intent(PURCHASE, 'no-key', sku, user='x', qty=1), key=False)
    produce(stack, sku, intent(PURCHASE, 'long-ip', sku, user='x', qty=1, client_ip='1' * 100))
    # Valid fields and an unknown one of 2000 bytes: over the 1024-byte limit.
    produce(stack, sku, intent(PURCHASE, 'huge', sku, user='x', qty=1) +
            varint(50 << 3 | 2) + varint(2000) + b'z' * 2000)
    produce(stack, sku, intent(PURCHASE, 'nul\0other', sku, user='x', qty=1))
    wait_for(lambda: deadletters(stack) >= before + 5, timeout=30,
             what='five dead letters')
    # And the stream goes on: alice's hold intact, a real buyer served.
    assert state(stack, 'mine', 'alice') == 'reserved'
    assert purchase(stack, sku, rid='after', user='bob')[0] == 202
    wait_for(lambda: state(stack, 'after', 'bob') == 'reserved', timeout=20, what="bob's hold")
    p = {k: int(v) for k, v in zip(*[iter(stack.redis('HGETALL', 'fs:promo:' + sku)
                                          .split('\n'))] * 2) if k in ('remaining', 'held')}
    assert p == {'remaining': 3, 'held': 2}, p
    assert stack.psql("SELECT count(*) FROM orders WHERE sku = '%s'" % sku) in ([['1']], [['2']])
