"""Every daemon's config key is documented in deploy/<daemon>.ini, and the
common command line behaves: -h/--help and -V exit 0, a bad option exits 2."""
import os
import re
import subprocess

import pytest

from stack import BINARIES, DAEMONS, build_dir, source_root


def binary(daemon):
    return os.path.join(build_dir(), BINARIES[daemon])


def documented_keys(path):
    """Keys written in an INI file, active or commented out (`; key = v`)."""
    keys, section = set(), None
    for line in open(path):
        line = line.strip()
        m = re.match(r'^\[([A-Za-z0-9_.-]+)\]$', line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r'^[;#]?\s*([A-Za-z0-9_-]+)\s*=', line)
        if m and section:
            keys.add(section + '.' + m.group(1))
    return keys


@pytest.mark.parametrize('daemon', DAEMONS)
def test_every_key_documented(daemon):
    out = subprocess.run([binary(daemon), '--print-config'], check=True,
                         capture_output=True, text=True, env={'PATH': os.environ['PATH']}).stdout
    keys = {line.split('=')[0].strip() for line in out.splitlines() if '=' in line}
    assert len(keys) >= 5, out
    ini = os.path.join(source_root(), 'deploy', daemon + '.ini')
    missing = keys - documented_keys(ini)
    assert not missing, '%s: keys missing from %s: %s' % (daemon, ini, sorted(missing))


@pytest.mark.parametrize('daemon', DAEMONS)
def test_command_line(daemon):
    exe = binary(daemon)
    assert subprocess.run([exe, '--help'], capture_output=True).returncode == 0
    v = subprocess.run([exe, '-V'], capture_output=True, text=True)
    assert v.returncode == 0 and 'flashsale' in v.stdout
    assert subprocess.run([exe, '--no-such-flag'], capture_output=True).returncode == 2
    assert subprocess.run([exe, '-s', 'no.such_key=1', '--print-config'],
                          capture_output=True).returncode == 2


def test_version_names_the_malloc_the_build_chose():
    """-V says which malloc runs: jemalloc in the gateway exactly when meson
    found it (-Djemalloc, off under a sanitizer), glibc's or the sanitizer's
    in the other daemons, which do not link it. Catches a link that leaves
    glibc's malloc in charge."""
    conf = open(os.path.join(build_dir(), 'flashsale_config.h')).read()
    linked = re.search(r'#define FLASHSALE_JEMALLOC (\d)', conf).group(1) == '1'
    env = {'PATH': os.environ['PATH']}      # no LD_PRELOAD from outside
    for daemon in DAEMONS:
        out = subprocess.run([binary(daemon), '-V'], check=True, capture_output=True,
                             text=True, env=env).stdout
        m = re.search(r'\(malloc: (jemalloc|glibc|asan)\b[^)]*\)$', out.strip())
        assert m, out
        assert (m.group(1) == 'jemalloc') == (linked and daemon == 'gateway'), out


@pytest.mark.parametrize('daemon', DAEMONS)
def test_precedence_file_env_flag(daemon, tmp_path):
    """defaults < file < environment < flags, on the real binary."""
    exe = binary(daemon)
    ini = tmp_path / 'x.ini'
    ini.write_text('[log]\nlevel = warn\n[kafka]\nbootstrap = file:1\n')
    env = {'PATH': os.environ['PATH'], 'FLASHSALE_KAFKA_BOOTSTRAP': 'env:2'}

    def value(extra, env_):
        out = subprocess.run([exe, '-c', str(ini), '--print-config'] + extra, check=True,
                             capture_output=True, text=True, env=env_).stdout
        return dict((k.strip(), v.strip()) for k, v in
                    (line.split('=', 1) for line in out.splitlines() if '=' in line))

    base = {'PATH': os.environ['PATH']}
    assert value([], base)['kafka.bootstrap'] == 'file:1'
    assert value([], base)['log.level'] == 'warn'
    assert value([], env)['kafka.bootstrap'] == 'env:2'
    assert value(['-s', 'kafka.bootstrap=flag:3'], env)['kafka.bootstrap'] == 'flag:3'
