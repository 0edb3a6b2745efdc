"""deploy/ is for machines this one is not: no Docker engine or systemd
manager runs here. Its files are checked against the build instead:
- docker-compose.yml: every FLASHSALE_* variable is a key of the daemon it
  reaches (the daemons ignore unknown ones, so a typo would go unnoticed),
  each service's settings parse, the published ports are the ones the
  gateway listens on, the topics are the stack's, the broker the tested
  one, each daemon has a health check, and the state lives on named
  volumes;
- Dockerfile: the runtime stage installs every library the binaries link,
  and the library of every -dev package the build stage installs;
- the systemd unit: `systemd-analyze verify` for each daemon, the files it
  reads are where `meson install` puts them, its user is created, and the
  installed configs reach the services it starts after."""
import os
import re
import shutil
import subprocess

import yaml

import stack as stackmod
from stack import BINARIES, DAEMONS, build_dir, source_root

DEPLOY = os.path.join(source_root(), 'deploy')


def binary(daemon):
    return os.path.join(build_dir(), BINARIES[daemon])


def built_unit():
    return open(os.path.join(build_dir(), 'deploy', 'flashsale@.service')).read()


def installed():
    """meson's install list of the build, as JSON text (source or built path: installed path)."""
    return subprocess.run(['meson', 'introspect', '--installed', build_dir()],
                          capture_output=True, text=True, check=True).stdout


def env_name(key):
    return 'FLASHSALE_' + re.sub(r'[.-]', '_', key).upper()


def print_config(daemon, env=None, args=()):
    """The daemon's effective settings {key: value} under env and -s args."""
    p = subprocess.run([binary(daemon)] + list(args) + ['--print-config'], capture_output=True,
                       text=True, env=dict(env or {}, PATH=os.environ['PATH']))
    assert p.returncode == 0, '%s %s: %s' % (daemon, args, p.stderr)
    return dict(line.split(' = ', 1) for line in p.stdout.splitlines() if ' = ' in line)


def compose():
    with open(os.path.join(DEPLOY, 'docker-compose.yml')) as f:
        return yaml.safe_load(f)


def daemon_services(c):
    """{service: (daemon, its -s arguments, environment)} of the flashsale services."""
    out = {}
    for name, svc in c['services'].items():
        cmd = svc.get('command') or []
        if cmd and cmd[0].startswith('flashsale-'):
            args = []
            for i, a in enumerate(cmd):
                if a in ('-s', '--set'):
                    args += ['-s', cmd[i + 1]]
            # ${VAR:?message}: docker compose refuses to start without VAR.
            env = {k: re.sub(r'^\$\{[A-Z0-9_]+:\?[^}]*\}$', 'x' * 40, str(v))
                   for k, v in (svc.get('environment') or {}).items()}
            out[name] = (cmd[0][len('flashsale-'):], args, env)
    return out


def test_compose_settings_are_the_daemons_keys():
    c = compose()
    services = daemon_services(c)
    assert {d for d, _, _ in services.values()} == set(DAEMONS), services.keys()
    keys = {d: set(print_config(d)) for d in DAEMONS}
    shared = set(c['x-flashsale-env'])
    for name, (daemon, args, env) in services.items():
        for var in env:
            assert var.startswith('FLASHSALE_'), (name, var)
            # The shared block reaches every daemon: one of them must know it.
            known = set().union(*keys.values()) if var in shared else keys[daemon]
            assert var in {env_name(k) for k in known}, '%s: %s is no key of %s' % (
                name, var, 'any daemon' if var in shared else daemon)
        cfg = print_config(daemon, env, args)
        for var, value in env.items():
            for k in cfg:
                if env_name(k) == var:
                    assert cfg[k] in (value, '<redacted>'), (name, k, cfg[k], value)


def test_compose_publishes_the_gateways_listeners():
    c = compose()
    name, (daemon, args, env) = next((n, s) for n, s in daemon_services(c).items()
                                     if s[0] == 'gateway')
    cfg = print_config(daemon, env, args)
    published = {int(p.rsplit(':', 1)[1]) for p in c['services'][name]['ports']}
    assert published == {int(cfg['http.port']), int(cfg['gateway.admin_port'])}, published
    # Inside a container, a listener on 127.0.0.1 is out of the port's reach.
    assert cfg['http.host'] == '0.0.0.0' and cfg['gateway.admin_host'] == '0.0.0.0', cfg


def test_compose_topics_and_broker_are_the_tested_ones():
    c = compose()
    script = ' '.join(c['services']['kafka-topics']['command'])
    topics = tuple((t, int(n)) for t, n in re.findall(r'(flashsale\.[a-z]+):(\d+)', script))
    assert sorted(topics) == sorted(stackmod.KAFKA_TOPICS), topics
    for name in ('kafka', 'kafka-topics'):
        image = c['services'][name]['image']
        assert image == 'apache/kafka:' + stackmod.KAFKA_VERSION, (name, image)


def test_compose_health_checks_ask_each_daemon():
    """Every long-running daemon has a health check on its own /healthz
    port, with a client the image installs."""
    c = compose()
    _, runtime = dockerfile_packages()
    for name, (daemon, args, env) in daemon_services(c).items():
        svc = c['services'][name]
        if svc.get('restart') == 'no':
            continue                # the one-shot init
        test = (svc.get('healthcheck') or {}).get('test') or []
        assert test[:2] == ['CMD', 'curl'] and 'curl' in runtime, (name, test)
        m = re.match(r'^http://127\.0\.0\.1:(\d+)/healthz$', test[-1])
        port = print_config(daemon, env, args)['http.port']
        assert m and m.group(1) == port, (name, test, port)


def test_compose_state_outlives_the_containers():
    """Stock, holds, the ledger and the orders live on named volumes, at
    the directories the images write them to: without one, `docker compose
    down` (or a recreated container) deletes them."""
    c = compose()
    data = {'kafka': c['services']['kafka']['environment'].get('KAFKA_LOG_DIRS'),
            'redis': '/data',                           # redis:7's working directory
            'postgres': '/var/lib/postgresql/data'}     # postgres:15's PGDATA
    assert data['kafka'] and not data['kafka'].startswith('/tmp'), data
    for name, path in data.items():
        mounts = {v.split(':')[1]: v.split(':')[0] for v in c['services'][name].get('volumes', [])}
        assert path in mounts, '%s: nothing mounted at %s' % (name, path)
        assert mounts[path] in (c.get('volumes') or {}), '%s: %s is no named volume' % (
            name, mounts[path])
    cmd = c['services']['redis']['command']
    assert cmd[cmd.index('--appendonly') + 1] == 'yes', cmd
    # The stack's default, which the tests and the fault campaign run.
    assert cmd[cmd.index('--appendfsync') + 1] == stackmod.REDIS_FSYNC_MODES[0], cmd
    assert cmd[cmd.index('--maxmemory-policy') + 1] == 'noeviction', cmd


def dockerfile_packages():
    """(build stage, runtime stage) apt-get install lists."""
    text = open(os.path.join(DEPLOY, 'Dockerfile')).read().replace('\\\n', ' ')
    stages = []
    for line in text.splitlines():
        m = re.search(r'apt-get install -y --no-install-recommends (.*?)(&&|$)', line)
        if m:
            stages.append(set(m.group(1).split()))
    assert len(stages) == 2, stages
    return stages


def dpkg(*args):
    return subprocess.run(['dpkg-query'] + list(args), capture_output=True, text=True)


def test_dockerfile_runtime_has_each_dev_packages_library():
    build, runtime = dockerfile_packages()
    for dev in sorted(p for p in build if p.endswith('-dev')):
        q = dpkg('-W', '-f=${Depends}', dev)
        assert q.returncode == 0, 'not installed here: %s (deploy/stack packages)' % dev
        libs = {d.split()[0] for d in q.stdout.split(',') if d.strip()}
        libs = {p for p in libs if re.match(r'^lib.*\d', p)}
        assert libs & runtime, '%s: none of %s in the runtime stage' % (dev, sorted(libs))


def test_dockerfile_runtime_has_what_the_binaries_link():
    _, runtime = dockerfile_packages()
    for daemon in DAEMONS:
        out = subprocess.run(['objdump', '-p', binary(daemon)], capture_output=True,
                             text=True, check=True).stdout
        path = subprocess.run(['ldd', binary(daemon)], capture_output=True, text=True,
                              check=True).stdout
        for lib in re.findall(r'NEEDED\s+(\S+)', out):
            if re.match(r'lib(asan|ubsan)\.', lib):
                continue        # a sanitized build; the image's is a release build
            m = re.search(re.escape(lib) + r' => (\S+)', path)
            where = m.group(1) if m else lib
            q = dpkg('-S', os.path.realpath(where))
            if q.returncode != 0:
                q = dpkg('-S', where)
            assert q.returncode == 0, (daemon, lib, q.stderr)
            pkg = q.stdout.split(':')[0]
            # libc6: every Debian image has it (the essential packages need it).
            assert pkg in runtime or pkg == 'libc6', '%s links %s (%s), not in the ' \
                'Dockerfile runtime stage' % (daemon, lib, pkg)


def test_systemd_unit_verifies_for_each_daemon(tmp_path):
    assert shutil.which('systemd-analyze'), 'no systemd-analyze: deploy/stack setup installs systemd'
    unit = built_unit()
    m = re.search(r'^ExecStart=(\S+)/flashsale-%i -c (\S+)/%i\.ini$', unit, re.M)
    assert m, unit
    bindir, confdir = m.groups()
    files = installed()
    assert re.search(r'Documentation=file://(\S+)', unit).group(1) + '"' in files
    for daemon in DAEMONS:
        assert '"%s/flashsale-%s"' % (bindir, daemon) in files, (bindir, files)
        assert '"%s/%s.ini"' % (confdir, daemon) in files, (confdir, files)
        # The verifier checks the command exists: point it at the build.
        path = tmp_path / ('flashsale@%s.service' % daemon)
        path.write_text(unit.replace(bindir + '/flashsale-%i',
                                     os.path.dirname(binary(daemon)) + '/flashsale-%i'))
        p = subprocess.run(['systemd-analyze', 'verify', str(path)], capture_output=True,
                           text=True, timeout=60)
        # It warns and goes on (rc 0) about unknown keys and values.
        assert p.returncode == 0 and not p.stderr.strip() and not p.stdout.strip(), \
            '%s: %s%s' % (daemon, p.stdout, p.stderr)


def ini_value(path, section, key):
    cur = None
    for line in open(path):
        line = line.strip()
        m = re.match(r'^\[(.+)\]$', line)
        if m:
            cur = m.group(1)
        elif cur == section and re.match(r'^%s\s*=' % key, line):
            return line.split('=', 1)[1].strip()
    return None


def test_systemd_defaults_reach_the_units_it_starts_after():
    """The unit starts after Debian's redis-server and postgresql: the
    configs it reads (and the built-in defaults) must point at where those
    listen out of the box, and no instance may own a directory the others
    use (RuntimeDirectory= is removed when its unit stops)."""
    unit = open(os.path.join(DEPLOY, 'systemd', 'flashsale@.service.in')).read()
    after = re.search(r'^After=(.*)$', unit, re.M).group(1).split()
    assert 'redis-server.service' in after and 'postgresql.service' in after, after
    for m in re.finditer(r'^RuntimeDirectory=(.*)$', unit, re.M):
        assert all('%i' in d for d in m.group(1).split()), m.group(0)
    conf = open('/etc/redis/redis.conf').read()     # redis-server's, as installed
    port = re.search(r'^port (\d+)', conf, re.M).group(1)
    binds = re.search(r'^bind (.*)$', conf, re.M).group(1).split()
    stock = {'%s:%s' % (b.lstrip('-'), port) for b in binds}
    for daemon in DAEMONS:
        ini = os.path.join(DEPLOY, daemon + '.ini')
        address = ini_value(ini, 'redis', 'address')
        if address is not None:
            assert address in stock, (ini, address, stock)
            assert print_config(daemon)['redis.address'] == address, daemon
        conninfo = ini_value(ini, 'postgres', 'conninfo')
        if conninfo is not None:
            # Debian's PostgreSQL puts its socket in /run/postgresql.
            assert re.search(r'\bhost=/(var/)?run/postgresql\b', conninfo), (ini, conninfo)


def test_systemd_unit_user_is_created(tmp_path):
    """The unit's User= and Group= come from the sysusers.d file meson
    installs (no package creates them otherwise: systemd fails the start
    with status 217/USER)."""
    unit = built_unit()
    user = re.search(r'^User=(\S+)$', unit, re.M).group(1)
    group = re.search(r'^Group=(\S+)$', unit, re.M).group(1)
    conf = os.path.join(DEPLOY, 'systemd', 'flashsale.sysusers')
    files = installed()
    assert re.search(r'"/(usr/lib|etc|run)/sysusers\.d/flashsale\.conf"', files), files
    root = tmp_path / 'root'
    (root / 'etc').mkdir(parents=True)
    subprocess.run(['systemd-sysusers', '--root', str(root), conf], check=True,
                   capture_output=True)
    assert re.search(r'^%s:x:\d+:\d+:' % re.escape(user), (root / 'etc' / 'passwd').read_text(),
                     re.M)
    assert re.search(r'^%s:x:\d+:' % re.escape(group), (root / 'etc' / 'group').read_text(), re.M)


def test_systemd_unit_secret_files_are_keys(tmp_path):
    """The unit's comments tell how to pass secrets as credential files
    (FLASHSALE_<KEY>_FILE): each must reach a key, and be read from the file."""
    unit = open(os.path.join(DEPLOY, 'systemd', 'flashsale@.service.in')).read()
    named = set(re.findall(r'\b(FLASHSALE_[A-Z0-9_]+)_FILE\b', unit))
    assert len(named) >= 3, named
    secret = tmp_path / 'secret'
    secret.write_text('s' * 40 + '\n')
    for var in sorted(named):
        owners = [d for d in DAEMONS if var in {env_name(k) for k in print_config(d)}]
        assert owners, '%s is no key of any daemon' % var
        for d in owners:
            key = next(k for k in print_config(d) if env_name(k) == var)
            cfg = print_config(d, {var + '_FILE': str(secret)})
            assert cfg[key] in ('s' * 40, '<redacted>'), (d, key, cfg[key])
            # Read, not ignored: a file that is not there stops the daemon.
            p = subprocess.run([binary(d), '--print-config'], capture_output=True, text=True,
                               env={'PATH': os.environ['PATH'],
                                    var + '_FILE': str(tmp_path / 'absent')})
            assert p.returncode != 0 and var in p.stderr, (d, var, p.stderr)
