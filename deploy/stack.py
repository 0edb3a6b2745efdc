#!/usr/bin/env python3
"""deploy/stack.py: a private flashsale stack (Redis, PostgreSQL 15, a Kafka
broker and the four daemons) in one state directory, with Unix sockets and
free ports only, so that several stacks run side by side (the integration
tests start one per test). Python 3, standard library only.

  deploy/stack.py start [--state DIR] [--infra-only]
  deploy/stack.py stop [--state DIR]
  deploy/stack.py daemon start|stop|kill|restart NAME [--state DIR]
                  NAME: gateway deductor order-writer reconciler redis postgres kafka
  deploy/stack.py status [--state DIR]      one line per component; exit 3 if one is stopped
  deploy/stack.py env [--state DIR]         path of the sourceable env file
  deploy/stack.py demo [--state DIR]        fresh stack, a demo sale, its summary
  deploy/stack.py test-summary TESTLOG      "N passed, N failed" from meson's testlog.json

`deploy/stack` is the usual front: it also installs the packages, builds
(`demo` builds first there, not here) and runs the tests. As a library
(tests/integration/conftest.py, bench/run put deploy/ on sys.path):

  from stack import Stack, wait_for
  s = Stack(env={"FLASHSALE_GATEWAY_MAX_BODY": "4096"})   # temp state dir
  s.start(); s.http("GET", "/v1/time"); s.daemon("kill", "deductor"); s.stop()

Environment: FLASHSALE_BUILD_DIR (default <repo>/build), FLASHSALE_STACK_KAFKA
(the Kafka kind, default and only one so far: mock), and any FLASHSALE_*
daemon setting: the env file never overrides a variable the caller set.
DIR defaults to <repo>/state.

Layout of DIR: logs/<name>.log, run/<name>.pid, redis/ (AOF), redis.sock,
pg/ (socket directory) and pg/data/, kafka.bootstrap, ports, admin.token,
jwt.secret (the demo key buyer tokens are signed with), stack.env.

The Kafka mock keeps its data in memory: restarting it ("daemon restart
kafka") starts an empty cluster on new ports; restart the daemons after it.
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_ROOT = os.path.abspath(os.environ.get("FLASHSALE_SOURCE_ROOT") or REPO)
BUILD_DIR = os.path.abspath(
    os.environ.get("FLASHSALE_BUILD_DIR") or os.path.join(SOURCE_ROOT, "build"))
PGBIN = "/usr/lib/postgresql/15/bin"

# Start order; stop goes the other way (front door first, ledger sink last).
DAEMONS = ("order-writer", "deductor", "reconciler", "gateway")
INFRA = ("redis", "postgres", "kafka")
COMPONENTS = INFRA + DAEMONS
ACTIONS = ("start", "stop", "kill", "restart")
PORT_ORDER = ("gateway", "deductor", "order-writer", "reconciler", "gateway-admin")  # of DIR/ports
STOP_TIMEOUT = 15
READY_TIMEOUT = 30

BINARIES = {
    "gateway": "gateway/flashsale-gateway",
    "deductor": "deductor/flashsale-deductor",
    "order-writer": "order-writer/flashsale-order-writer",
    "reconciler": "reconciler/flashsale-reconciler",
    "kafka-mock": "deploy/flashsale-kafka-mock",
    "loadgen": "bench/flashsale-loadgen",
}

# Lines that mean a sanitizer caught something in a daemon.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:")

# Local HTTP never goes through a proxy the caller may have configured.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def source_root():
    return SOURCE_ROOT


def build_dir():
    return BUILD_DIR


class StackError(Exception):
    """A start, stop or command that failed; detail is the log tail."""

    def __init__(self, message, detail=""):
        super().__init__(message + ("\n" + detail if detail else ""))
        self.message = message
        self.detail = detail


def is_root():
    return os.geteuid() == 0


# ---------------------------------------------------------------- processes

# Processes this Python process started: it is their parent, so it must reap
# them (wait) once they exit, or they stay zombies.
_children = {}


def reap():
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


def pid_alive(pid, comm=None):
    """A pid names our process if it exists, is not a zombie (a killed
    daemon may be reparented to an init that does not reap it) and, given
    comm, runs that program (/proc/PID/comm: the name cut to 15 chars)."""
    if not pid:
        return False
    reap()
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    if not fields or fields[0] in ("Z", "X", "x"):
        return False
    if comm:
        try:
            with open("/proc/%d/comm" % pid) as f:
                if f.read().rstrip("\n") != comm[:15]:
                    return False
        except OSError:
            return False
    return True


def signal_pid(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def wait_gone(pid, comm, timeout):
    deadline = time.monotonic() + timeout
    while pid_alive(pid, comm):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def redis_command(sock_path, *args, timeout=1.0):
    """One RESP command on a Unix socket; returns the raw first reply bytes
    (b"" if the server closed the connection without answering)."""
    req = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() for x in args))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(req)
        return s.recv(512)


def http_get(port, path, timeout=2.0):
    """(status, body) of GET http://127.0.0.1:PORT/PATH, or None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_hs256(secret, claims):
    """An HS256 JSON Web Token over claims (what a shop's login issues)."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), ("%s.%s" % (head, body)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, body, b64url(sig))


def scoped_id(user, client_id):
    """The request id the gateway files a buyer's client_id under (gateway/
    auth.c auth_scoped_id): SHA-256 over the length-prefixed user and the
    client id, 26 Crockford base32 digits. What PostgreSQL and Redis hold."""
    u = user.encode()
    d = hashlib.sha256(bytes([len(u) >> 8, len(u) & 255]) + u + client_id.encode()).digest()
    n = int.from_bytes(d, "big") >> (256 - 130)
    b32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "".join(b32[(n >> (5 * (25 - i))) & 31] for i in range(26))


def shell_quote(value):
    return "'" + value.replace("'", "'\"'\"'") + "'"


# ---------------------------------------------------------------- components

class Component:
    """One supervised process of the stack, known by its pidfile run/NAME.pid
    and its /proc/PID/comm. Subclasses say how to start it and when it is
    ready; stop is SIGTERM, a wait, then SIGKILL; kill is a crash."""

    name = None
    comm = None

    def __init__(self, stack):
        self.stack = stack

    @property
    def pidfile(self):
        return self.stack.path("run", self.name + ".pid")

    def pid(self):
        try:
            with open(self.pidfile) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self):
        return pid_alive(self.pid(), self.comm)

    def status(self):
        """(running, pid)."""
        pid = self.pid()
        ok = pid_alive(pid, self.comm)
        return ok, (pid if ok else None)

    def start(self):
        raise NotImplementedError

    def stop(self):
        self.stop_pid(signal.SIGTERM)

    def kill(self):
        self.stop_pid(signal.SIGKILL)

    def stop_pid(self, sig):
        """Send sig, wait up to STOP_TIMEOUT seconds, then SIGKILL. Safe if
        not running."""
        pid = self.pid()
        if not pid_alive(pid, self.comm):
            self._unlink_pidfile()
            return
        signal_pid(pid, sig)
        if not wait_gone(pid, self.comm, STOP_TIMEOUT):
            self.stack.say("%s (pid %d) still running after %ds: SIGKILL"
                           % (self.name, pid, STOP_TIMEOUT))
            signal_pid(pid, signal.SIGKILL)
            wait_gone(pid, self.comm, 5)
        self._unlink_pidfile()
        self.stack.say("%s stopped" % self.name)

    def _unlink_pidfile(self):
        try:
            os.unlink(self.pidfile)
        except FileNotFoundError:
            pass

    def spawn(self, argv, env, log=None):
        """Start argv in the background, stdin from /dev/null, stdout and
        stderr appended to logs/LOG.log; records and returns its pid."""
        with open(self.stack.path("logs", (log or self.name) + ".log"), "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env)
        _children[proc.pid] = proc
        with open(self.pidfile + ".tmp", "w") as f:
            f.write("%d\n" % proc.pid)
        os.replace(self.pidfile + ".tmp", self.pidfile)
        return proc.pid

    def wait_ready(self, pid, ready, what, interval=0.1):
        """Poll ready() until true; fail if pid exits or after READY_TIMEOUT."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            value = ready()
            if value:
                return value
            if not pid_alive(pid):
                self.stack.fail(self.name, "exited during start-up")
            if time.monotonic() >= deadline:
                self.stack.fail(self.name, "%s after %ds" % (what, READY_TIMEOUT))
            time.sleep(interval)

    def need_binary(self, path):
        if not os.access(path, os.X_OK):
            raise StackError("not built: %s (run: deploy/stack setup)" % path)
        return path


class Redis(Component):
    name = "redis"
    comm = "redis-server"

    @property
    def sock(self):
        return self.stack.path("redis.sock")

    def ping(self):
        try:
            return redis_command(self.sock, "PING").startswith(b"+PONG")
        except OSError:
            return False

    def start(self):
        if self.running():
            return
        try:
            os.unlink(self.sock)
        except FileNotFoundError:
            pass
        # appendfsync always: a Redis restart must never bring back a state
        # older than what the deductor already committed (and published), or
        # sold units would be sold again under the same epoch.
        pid = self.spawn(["redis-server", "--port", "0", "--unixsocket", self.sock,
                          "--unixsocketperm", "700", "--dir", self.stack.path("redis"),
                          "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                          "--maxmemory-policy", "noeviction", "--daemonize", "no"],
                         self.stack.base_env())
        self.wait_ready(pid, self.ping, "not answering PING")
        self.stack.say("redis ready (pid %d)" % pid)

    def stop(self):
        pid = self.pid()
        if pid_alive(pid, self.comm):
            # SHUTDOWN fsyncs the AOF (appendonly yes) before exiting.
            try:
                redis_command(self.sock, "SHUTDOWN", timeout=STOP_TIMEOUT)
            except OSError:
                pass
            if wait_gone(pid, self.comm, STOP_TIMEOUT):
                self.stack.say("redis stopped")
        self.stop_pid(signal.SIGTERM)


class Postgres(Component):
    """PostgreSQL 15 through initdb and pg_ctl: the postmaster is pg_ctl's
    child, not ours; as root every server-side command runs as postgres."""

    name = "postgres"
    comm = "postgres"

    @property
    def data(self):
        return self.stack.path("pg", "data")

    @property
    def sockdir(self):
        return self.stack.path("pg")

    def as_pg(self, argv, **kw):
        # The server refuses to run as root; from / so that it can read its cwd.
        if is_root():
            argv = ["runuser", "-u", "postgres", "--"] + argv
            kw.setdefault("cwd", "/")
        kw.setdefault("env", self.stack.base_env())
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(argv, **kw)

    def running(self):
        if not os.path.isfile(os.path.join(self.data, "PG_VERSION")):
            return False
        return self.as_pg([PGBIN + "/pg_ctl", "status", "-D", self.data],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=60).returncode == 0

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def status(self):
        if os.path.isdir(self.stack.dir) and self.running():
            return True, self.postmaster_pid()
        return False, None

    def psql(self, sql, db="postgres", timeout=60):
        return subprocess.run(["psql", "-X", "-h", self.sockdir, "-U", "postgres", "-d", db,
                               "-Atqc", sql], env=self.stack.base_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout)

    def start(self):
        if not os.path.isfile(os.path.join(self.data, "PG_VERSION")):
            shutil.rmtree(self.data, ignore_errors=True)
            with open(self.stack.path("logs", "initdb.log"), "ab") as log:
                if self.as_pg([PGBIN + "/initdb", "-D", self.data, "-A", "trust",
                               "-U", "postgres", "-E", "UTF8", "--no-sync"],
                              stdout=log, stderr=subprocess.STDOUT,
                              timeout=300).returncode != 0:
                    self.stack.fail("initdb", "initdb failed")
        if not self.running():
            p = self.as_pg([PGBIN + "/pg_ctl", "start", "-D", self.data, "-w",
                            "-t", str(READY_TIMEOUT), "-l", self.stack.path("logs", "postgres.log"),
                            "-o", "-k %s -c listen_addresses='' -c fsync=on" % self.sockdir],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=READY_TIMEOUT + 60)
            if p.returncode != 0:
                self.stack.fail("postgres", "pg_ctl start failed")
        pid = self.postmaster_pid()
        with open(self.pidfile, "w") as f:
            f.write("%s\n" % (pid if pid else ""))
        if self.psql("SELECT 1 FROM pg_database WHERE datname = 'flashsale'").stdout.strip() != "1":
            p = subprocess.run(["createdb", "-h", self.sockdir, "-U", "postgres", "flashsale"],
                               env=self.stack.base_env(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=60)
            if p.returncode != 0:
                self.stack.fail("postgres", "createdb failed: " + p.stdout.strip())
        self.stack.say("postgres ready (pid %s)" % pid)

    def stop(self):
        if self.running():
            p = self.as_pg([PGBIN + "/pg_ctl", "stop", "-D", self.data, "-m", "fast",
                            "-w", "-t", "60"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=120)
            if p.returncode != 0:
                self.stack.say("pg_ctl stop failed")
            self.stack.say("postgres stopped")
        self._unlink_pidfile()

    def kill(self):
        # SIGQUIT is PostgreSQL's immediate shutdown: no checkpoint, recovery
        # at the next start, like a crash (SIGKILL of the postmaster would
        # orphan its backends).
        self.stop_pid(signal.SIGQUIT)


class Kafka(Component):
    """A Kafka broker for the stack. A kind writes its bootstrap list to
    DIR/kafka.bootstrap once it accepts clients; the daemons get it as
    FLASHSALE_KAFKA_BOOTSTRAP and client_settings as the default of
    FLASHSALE_KAFKA_SETTINGS. Register a kind in KAFKA_KINDS."""

    name = "kafka"
    kind = None
    client_settings = ""
    restart_note = None  # said after "daemon start|restart kafka"

    @property
    def bootstrap_file(self):
        return self.stack.path("kafka.bootstrap")

    def bootstrap(self):
        try:
            with open(self.bootstrap_file) as f:
                return f.read().strip()
        except OSError:
            return ""


class KafkaMock(Kafka):
    """librdkafka's mock cluster as a process (deploy/kafka_mock.c), with the
    flashsale topics created. Its data is in memory only."""

    kind = "mock"
    comm = "flashsale-kafka-mock"
    # The mock broker rebalances a group only after session.timeout.ms: keep
    # it short so that a restarted consumer gets its partitions fast.
    client_settings = "session.timeout.ms=6000"
    restart_note = "kafka mock restarted empty on new ports: restart the daemons"

    def start(self):
        if self.running():
            if self.bootstrap():
                return
            self.stop()  # running without its bootstrap file: start afresh
        binary = self.need_binary(os.path.join(BUILD_DIR, BINARIES["kafka-mock"]))
        try:
            os.unlink(self.bootstrap_file)
        except FileNotFoundError:
            pass
        pid = self.spawn([binary, "--bootstrap-file", self.bootstrap_file],
                         self.stack.base_env())
        self.wait_ready(pid, self.bootstrap, "no bootstrap file")
        self.stack.say("kafka mock ready (pid %d, %s)" % (pid, self.bootstrap()))


# A real broker (Apache Kafka in KRaft mode) goes here as one more kind.
KAFKA_KINDS = {"mock": KafkaMock}


class Daemon(Component):
    """A flashsale daemon on its recorded port, ready once /healthz is OK."""

    def __init__(self, stack, name):
        super().__init__(stack)
        self.name = name
        self.comm = "flashsale-" + name

    def args(self):
        return ["run"] if self.name == "reconciler" else []

    def ready(self, port):
        r = http_get(port, "/healthz")
        return r is not None and 200 <= r[0] < 400 and self.healthy(r[1])

    def healthy(self, body):
        return True

    def start(self):
        if self.running():
            return
        binary = self.need_binary(os.path.join(BUILD_DIR, BINARIES[self.name]))
        env = self.stack.env or self.stack.load_env()
        port = self.stack.port_of(self.name)
        pid = self.spawn([binary] + self.args() + ["-s", "http.port=%d" % port], env)
        self.wait_ready(pid, lambda: self.ready(port), "/healthz not OK", interval=0.2)
        self.stack.say("%s ready (pid %d, http://127.0.0.1:%d)" % (self.name, pid, port))


class Deductor(Daemon):
    # A deductor is ready for traffic once the group gave it partitions.
    def healthy(self, body):
        return re.search(r'"partitions":\s*[1-9]', body) is not None


# ---------------------------------------------------------------- the stack

class Stack:
    """One stack in its own state dir. Call start(); always call stop().

    state_dir: default a fresh /tmp/flashsale-* dir. env: extra variables
    (FLASHSALE_* settings) for every process of the stack. kafka: the Kafka
    kind (KAFKA_KINDS; default $FLASHSALE_STACK_KAFKA or "mock"). echo:
    print progress ("stack: redis ready ...") on stderr."""

    def __init__(self, state_dir=None, env=None, kafka=None, echo=False):
        if state_dir is None:
            state_dir = tempfile.mkdtemp(prefix="flashsale-", dir="/tmp")
            os.chmod(state_dir, 0o755)  # the postgres user must traverse it
        self.dir = os.path.abspath(state_dir)
        self.extra_env = {k: str(v) for k, v in (env or {}).items()}
        self.env = {}
        self.url = None
        self.admin_token = None
        self.ports = {}  # daemon name -> its /healthz and /metrics port
        self.started = False
        self.echo = echo
        kind = kafka or os.environ.get("FLASHSALE_STACK_KAFKA") or "mock"
        if kind not in KAFKA_KINDS:
            raise StackError("unknown Kafka kind %r (known: %s)"
                             % (kind, ", ".join(sorted(KAFKA_KINDS))))
        self.components = {"redis": Redis(self), "postgres": Postgres(self),
                           "kafka": KAFKA_KINDS[kind](self)}
        for name in DAEMONS:
            self.components[name] = (Deductor if name == "deductor" else Daemon)(self, name)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def say(self, msg):
        if self.echo:
            print("stack: " + msg, file=sys.stderr, flush=True)

    def fail(self, name, msg):
        """Raise StackError for component name, with the tail of its log."""
        detail = ""
        log = self.path("logs", name + ".log")
        if os.path.isfile(log):
            with open(log, errors="replace") as f:
                lines = f.read().splitlines()[-40:]
            detail = "\n".join(["---- last 40 lines of %s ----" % log] + lines + ["----"])
        raise StackError("%s: %s" % (name, msg), detail)

    # ------------------------------------------------------------ state dir

    def prepare_state(self):
        # Unix socket paths are limited to 107 bytes.
        if len(self.dir) > 80:
            raise StackError("state dir path too long for Unix sockets: %s" % self.dir)
        for sub in ("logs", "run", "redis", "pg"):
            os.makedirs(self.path(sub), exist_ok=True)
        os.chmod(self.dir, 0o755)
        if is_root():
            import pwd
            pg = pwd.getpwnam("postgres")
            # The postgres user must reach DIR/pg: make every parent traversable.
            d = self.dir
            while d != "/":
                d = os.path.dirname(d)
                if os.path.isdir(d):
                    os.chmod(d, (os.stat(d).st_mode & 0o7777) | 0o001)
            os.chmod(self.path("logs"), 0o755)
            os.chown(self.path("pg"), pg.pw_uid, pg.pw_gid)
            log = self.path("logs", "postgres.log")
            open(log, "a").close()
            os.chown(log, pg.pw_uid, pg.pw_gid)

    def need_state(self):
        if not os.path.isdir(self.dir):
            raise StackError("no state dir %s (run: deploy/stack start --state %s)"
                             % (self.dir, self.dir))

    # ------------------------------------------------------------ env file

    @property
    def env_file(self):
        return self.path("stack.env")

    def base_env(self):
        """The caller's environment with the stack's extra settings."""
        env = dict(os.environ)
        env["FLASHSALE_BUILD_DIR"] = BUILD_DIR
        env.update(self.extra_env)
        return env

    def ensure_ports(self):
        """Ports are chosen once per state dir and kept, so a restarted daemon
        keeps its address (the tests hold the gateway URL)."""
        f = self.path("ports")
        have = dict(self.recorded_ports())
        missing = [n for n in PORT_ORDER if self.port_var(n) not in have]
        if not missing:
            return  # a state dir from an older version gets only what it lacks
        socks = []
        try:
            for _ in missing:
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            text = "".join("%s=%s\n" % kv for kv in self.recorded_ports())
            text += "".join("%s=%d\n" % (self.port_var(name), s.getsockname()[1])
                            for name, s in zip(missing, socks))
        finally:
            for s in socks:
                s.close()
        with open(f + ".tmp", "w") as out:
            out.write(text)
        os.replace(f + ".tmp", f)

    def recorded_ports(self):
        """[(NAME_PORT, value)] from DIR/ports, in file order."""
        out = []
        try:
            with open(self.path("ports")) as f:
                for line in f:
                    m = re.match(r"^([A-Z_]*)=(.*)$", line.rstrip("\n"))
                    if m:
                        out.append((m.group(1), m.group(2)))
        except FileNotFoundError:
            pass
        return out

    @staticmethod
    def port_var(name):
        return name.upper().replace("-", "_") + "_PORT"

    def ensure_token(self):
        """The admin token and the demo key buyer tokens are signed with
        (HS256; `flashsale-gateway token --user U` prints one), each made
        once per state dir, readable by root only."""
        for name, nbytes in (("admin.token", 16), ("jwt.secret", 32)):
            f = self.path(name)
            if os.path.isfile(f) and os.path.getsize(f) > 0:
                continue
            fd = os.open(f + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(os.urandom(nbytes).hex())
            os.replace(f + ".tmp", f)

    def env_entries(self):
        """What stack.env sets, in order: (name, value, keep_callers). The
        connection facts of this stack are plain assignments; everything else
        keeps a value the caller already set."""
        with open(self.path("admin.token")) as f:
            token = f.read().strip()
        kafka = self.components["kafka"]
        entries = [
            ("FLASHSALE_STACK_DIR", self.dir, False),
            ("FLASHSALE_KAFKA_BOOTSTRAP", kafka.bootstrap(), False),
            ("FLASHSALE_REDIS_ADDRESS", "unix:" + self.path("redis.sock"), False),
            ("FLASHSALE_POSTGRES_CONNINFO",
             "host=%s dbname=flashsale user=postgres" % self.path("pg"), False),
            ("FLASHSALE_GATEWAY_ADMIN_TOKEN", token, True),
            ("FLASHSALE_GATEWAY_JWT_SECRET_FILE", self.path("jwt.secret"), True),
            ("FLASHSALE_LOG_LEVEL", "info", True),
        ]
        if kafka.client_settings:
            entries.append(("FLASHSALE_KAFKA_SETTINGS", kafka.client_settings, True))
        entries += [(k, v, True) for k, v in self.recorded_ports()]
        admin = dict(self.recorded_ports()).get("GATEWAY_ADMIN_PORT")
        if admin:
            entries.append(("FLASHSALE_GATEWAY_ADMIN_PORT", admin, True))
        return entries

    def write_env(self):
        """Write DIR/stack.env atomically, sourceable by any POSIX shell."""
        self.ensure_ports()
        self.ensure_token()
        lines = ["# flashsale stack in %s, written by deploy/stack start." % self.dir,
                 "# Source it (. %s) to run a daemon or a tool against this stack."
                 % self.env_file]
        for name, value, keep in self.env_entries():
            if keep:
                # Kept values are tokens, numbers and key=value lists: no
                # quoting needed inside ${NAME:-...}.
                if not re.fullmatch(r"[A-Za-z0-9_.,:/=@%+-]*", value):
                    raise StackError("cannot write %s=%r into stack.env" % (name, value))
                lines.append("export %s=${%s:-%s}" % (name, name, value))
            else:
                lines.append("export %s=%s" % (name, shell_quote(value)))
        lines.append("export GATEWAY_URL=http://127.0.0.1:$GATEWAY_PORT")
        lines.append("export GATEWAY_ADMIN_URL=http://127.0.0.1:$GATEWAY_ADMIN_PORT")
        with open(self.env_file + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(self.env_file + ".tmp", self.env_file)

    def load_env(self):
        """self.env: what a shell has after sourcing stack.env on top of
        base_env(), the environment every daemon and tool of the stack gets."""
        if not (os.path.isfile(self.env_file) and os.path.getsize(self.env_file) > 0):
            raise StackError("no env file %s (run: deploy/stack start --state %s)"
                             % (self.env_file, self.dir))
        env = self.base_env()
        # FLASHSALE_STACK_DIR is a fact of this stack, not a setting.
        env.pop("FLASHSALE_STACK_DIR", None)
        for name, value, keep in self.env_entries():
            if not keep or not env.get(name):
                env[name] = value
        env["GATEWAY_URL"] = "http://127.0.0.1:" + env.get("GATEWAY_PORT", "")
        env["GATEWAY_ADMIN_URL"] = "http://127.0.0.1:" + env.get("GATEWAY_ADMIN_PORT", "")
        self.env = env
        self.url = env["GATEWAY_URL"]
        self.admin_url = env["GATEWAY_ADMIN_URL"]
        self.admin_token = env["FLASHSALE_GATEWAY_ADMIN_TOKEN"]
        with open(env["FLASHSALE_GATEWAY_JWT_SECRET_FILE"]) as f:
            self.jwt_secret = f.read().strip()
        self.ports = {name: int(env[self.port_var(name)]) for name in DAEMONS}
        # /metrics and /admin live on the gateway's private listener.
        self.ports["gateway"] = int(env["GATEWAY_ADMIN_PORT"])
        return env

    def port_of(self, name):
        # The caller's environment (sourced env file) wins over the record.
        var = self.port_var(name)
        value = self.env.get(var) or dict(self.recorded_ports()).get(var)
        if not value:
            raise StackError("no port recorded for %s in %s" % (name, self.path("ports")))
        return int(value)

    # ------------------------------------------------------------ lifecycle

    def start(self, infra_only=False):
        """Start every component (those running already are kept) and wait
        until each is ready. Raises StackError with the failing log's tail."""
        self.started = True  # a failed start must still be stopped
        self.prepare_state()
        for name in INFRA:
            self.components[name].start()
        self.write_env()
        self.load_env()
        if infra_only:
            self.say("infrastructure up; env: %s" % self.env_file)
            return self
        self.reconciler_rebuild()
        for name in DAEMONS:
            self.components[name].start()
        self.say("stack up: %s (env: %s)" % (self.url, self.env_file))
        return self

    def reconciler_rebuild(self):
        binary = self.components["reconciler"].need_binary(
            os.path.join(BUILD_DIR, BINARIES["reconciler"]))
        log = self.path("logs", "reconciler-rebuild.log")
        with open(log, "ab") as out:
            out.write(b"# %s rebuild --if-missing\n"
                      % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode())
            out.flush()
            try:
                rc = subprocess.run([binary, "rebuild", "--if-missing", "-s", "http.port=0"],
                                    env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=300).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        if rc != 0:
            self.fail("reconciler-rebuild", "flashsale-reconciler rebuild --if-missing failed")
        self.say("reconciler rebuild --if-missing done")

    def stop(self):
        """Stop every component of a stack this object started (daemons
        first, Redis last). Never raises for a stack it did not start."""
        if self.started:
            self.shutdown()

    def shutdown(self):
        """Stop whatever runs in the state dir. Returns the logs with
        sanitizer reports. Raises StackError after trying every component
        if one could not be stopped."""
        if not os.path.isdir(self.dir):
            self.say("no state dir %s: nothing to stop" % self.dir)
            return []
        errors = []
        for name in tuple(reversed(DAEMONS)) + ("kafka", "postgres", "redis"):
            try:
                self.components[name].stop()
            except (OSError, subprocess.SubprocessError, StackError) as e:
                errors.append("%s: %s" % (name, e))
        reap()
        if errors:
            raise StackError("stop: " + "; ".join(errors))
        return self.sanitizer_logs()

    def daemon(self, action, name):
        """start|stop|kill|restart one component (gateway deductor
        order-writer reconciler redis postgres kafka); reloads the env
        (a restarted Kafka mock has a new bootstrap list)."""
        self.need_state()
        if name not in COMPONENTS:
            raise StackError("unknown component %s" % name)
        if action not in ACTIONS:
            raise StackError("unknown action %s" % action)
        comp = self.components[name]
        if action == "kill":
            comp.kill()
        elif action in ("stop", "restart"):
            comp.stop()
        if action in ("start", "restart"):
            self.prepare_state()
            if name == "kafka":
                comp.start()
                self.write_env()
                if comp.restart_note:
                    self.say(comp.restart_note)
            elif name in DAEMONS:
                self.load_env()
                comp.start()
            else:
                comp.start()
        if os.path.isfile(self.env_file):
            self.load_env()

    def status(self):
        """{component: True if running}."""
        return {name: ok for name, ok, _ in self.status_rows()}

    def status_rows(self):
        rows = []
        for name in COMPONENTS:
            ok, pid = self.components[name].status() if os.path.isdir(self.dir) else (False, None)
            rows.append((name, ok, pid))
        return rows

    # ------------------------------------------------------------ access

    def token(self, user, ttl=3600, secret=None, **claims):
        """A buyer token for user: HS256 with the stack's demo key (or
        secret), exp ttl seconds from now; claims add or override (iss,
        aud, nbf, exp...; None drops one)."""
        now = int(time.time())
        body = {"sub": user, "iat": now, "exp": now + ttl}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt_hs256(secret if secret is not None else self.jwt_secret, body)

    def http(self, method, path, body=None, token=None, headers=None, timeout=10,
             user=None):
        """One request to the gateway: /admin/... to its private listener,
        the rest to the public one. user signs a buyer token (token= sends
        one as is). Returns (status, JSON value or text)."""
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, bytes) else (
                body.encode() if isinstance(body, str) else json.dumps(body).encode())
            hdrs.setdefault("Content-Type", "application/json")
        if user is not None:
            token = self.token(user)
        if token is not None:
            hdrs["Authorization"] = "Bearer " + token
        base = self.admin_url if path.startswith("/admin") else self.url
        req = urllib.request.Request(base + path, data=data, method=method,
                                     headers=hdrs)
        try:
            with _LOCAL.open(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def metrics(self, name, timeout=5):
        """A daemon's /metrics as {"name{labels}": value}."""
        url = "http://127.0.0.1:%d/metrics" % self.ports[name]
        with _LOCAL.open(url, timeout=timeout) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and line[0] != "#":
                key, _, value = line.rpartition(" ")
                try:
                    out[key] = float(value)
                except ValueError:
                    pass
        return out

    def redis(self, *args):
        """redis-cli -s DIR/redis.sock ARGS; its output, stripped."""
        p = subprocess.run(["redis-cli", "-s", self.path("redis.sock"),
                            *[str(a) for a in args]],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=30)
        if p.returncode != 0:
            raise StackError("redis-cli %s: %s" % (args, p.stderr))
        return p.stdout.strip()

    def psql(self, sql):
        """Rows of the last statement, each a list of strings."""
        p = subprocess.run(["psql", "-X", "-h", self.path("pg"),
                            "-U", "postgres", "-d", "flashsale", "-At", "-F", "|",
                            "-v", "ON_ERROR_STOP=1", "-c", sql],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=60)
        if p.returncode != 0:
            raise StackError("psql %r: %s" % (sql, p.stderr))
        return [line.split("|") for line in p.stdout.splitlines() if line]

    def create_promotion(self, sku, stock, per_user_limit, hold_seconds,
                         start_ms=None, end_ms=None):
        """POST /admin/promotions; raises unless the gateway accepts it."""
        body = {"sku": sku, "stock": stock, "per_user_limit": per_user_limit,
                "hold_seconds": hold_seconds}
        if start_ms is not None:
            body["start_ms"] = start_ms
        if end_ms is not None:
            body["end_ms"] = end_ms
        status, reply = self.http("POST", "/admin/promotions", body,
                                  token=self.admin_token)
        if status not in (200, 201):
            raise StackError("create_promotion %s: HTTP %d %r" % (sku, status, reply))
        return reply

    def bin(self, name):
        """Path of a built binary: "gateway", "flashsale-gateway", "loadgen"..."""
        short = name[len("flashsale-"):] if name.startswith("flashsale-") else name
        if short in BINARIES:
            return os.path.join(BUILD_DIR, BINARIES[short])
        for sub in os.listdir(BUILD_DIR):
            p = os.path.join(BUILD_DIR, sub, "flashsale-" + short)
            if os.access(p, os.X_OK):
                return p
        raise StackError("no binary %s under %s" % (name, BUILD_DIR))

    def run(self, name, *args, check=False, timeout=300):
        """Run a built binary with the stack's environment (e.g. reconciler audit)."""
        return subprocess.run([self.bin(name), *[str(a) for a in args]],
                              env=self.env or self.base_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout,
                              check=check)

    # ------------------------------------------------------------ logs

    def log_files(self):
        d = self.path("logs")
        if not os.path.isdir(d):
            return []
        return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".log")]

    def log(self, name):
        try:
            with open(self.path("logs", name + ".log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def logs(self, tail=None):
        """Every log, each under a "==> name <==" header; tail: last N lines each."""
        out = []
        for path in self.log_files():
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
            if tail is not None:
                lines = lines[-tail:]
            out.append("==> %s <==" % os.path.basename(path))
            out.extend(lines)
        return "\n".join(out) + ("\n" if out else "")

    def sanitizer_reports(self):
        """Log lines (with their file) where a sanitizer reported an error."""
        found = []
        for path in self.log_files():
            with open(path, errors="replace") as f:
                for line in f:
                    if any(m in line for m in SANITIZER_MARKS):
                        found.append("%s: %s" % (os.path.basename(path), line.rstrip()))
        return found

    def sanitizer_logs(self):
        """Paths of the logs with a sanitizer report."""
        found = []
        for path in self.log_files():
            with open(path, errors="replace") as f:
                if any(any(m in line for m in SANITIZER_MARKS) for line in f):
                    found.append(path)
        return found

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(predicate, timeout=30.0, interval=0.2, what="condition"):
    """Poll predicate() until it returns a true value (returned), or raise
    after timeout seconds. For waiting on the pipeline, never for speed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------- commands

def say(msg):
    print("stack: " + msg, file=sys.stderr, flush=True)


def cmd_start(st, infra_only):
    st.start(infra_only=infra_only)
    return 0


def cmd_stop(st):
    if not os.path.isdir(st.dir):
        st.say("no state dir %s: nothing to stop" % st.dir)
        return 0
    reports = st.shutdown()
    # Sanitizer reports from a drained daemon are failures the caller must see.
    if reports:
        print("\n".join(reports), flush=True)
        st.say("sanitizer reports in the logs listed above")
    return 0


def cmd_daemon(st, args):
    if len(args) < 2:
        raise StackError("usage: deploy/stack daemon start|stop|kill|restart NAME")
    st.daemon(args[0], args[1])
    return 0


def cmd_status(st):
    rc = 0
    for name, ok, pid in st.status_rows():
        if ok:
            print("%s running pid=%s" % (name, pid))
        else:
            print("%s stopped" % name)
            rc = 3
    return rc


def cmd_env(st):
    if not (os.path.isfile(st.env_file) and os.path.getsize(st.env_file) > 0):
        raise StackError("no env file in %s" % st.dir)
    print(st.env_file)
    return 0


def cmd_demo(st):
    """A real sale on a fresh local stack: 5,000 buyers race for 100 units,
    20% retry with the same request id, half of the winners pay and the rest
    let their 5-second hold expire, so the reconciler returns those units.
    Prints what happened, from the buyers' side and from both stores, and
    the audit. Needs a build (deploy/stack demo builds first)."""
    buyers = int(os.environ.get("DEMO_BUYERS") or 5000)
    stock = int(os.environ.get("DEMO_STOCK") or 100)
    hold = int(os.environ.get("DEMO_HOLD_S") or 5)
    if os.path.isdir(st.dir):
        quiet = Stack(st.dir)
        try:
            quiet.shutdown()
        except StackError:
            pass
        shutil.rmtree(st.dir)
    # One load generator stands for thousands of buyers, all on 127.0.0.1.
    st.extra_env.setdefault("FLASHSALE_GATEWAY_MAX_CONNECTIONS_PER_IP", "100000")
    st.start()
    st.say("promotion demo-phone: %d units, 1 per buyer, %ds to pay" % (stock, hold))
    try:
        st.create_promotion("demo-phone", stock, 1, hold)
    except (StackError, OSError):
        raise StackError("could not create the promotion (see %s)"
                         % st.path("logs", "gateway.log"))
    st.say("%d buyers at once; 20%% retry with the same request id; half the winners pay"
           % buyers)
    report = st.path("demo-buyers.json")
    cmd = [os.path.join(BUILD_DIR, BINARIES["loadgen"]), "--url", st.url, "--sku", "demo-phone",
           "--buyers", str(buyers), "--concurrency", "256", "--dup-ratio", "0.2",
           "--pay-ratio", "0.5", "--poll-ms", "250", "--final-timeout-s", str(hold + 60),
           "--seed", "2026", "--json", report, "--quiet",
           "--jwt-secret-file", st.path("jwt.secret")]
    if sys.stderr.isatty():
        cmd.append("--progress")
    sys.stdout.flush()
    if subprocess.run(cmd, env=st.env).returncode != 0:
        raise StackError("the buyers did not all reach a final state (see %s and %s)"
                         % (report, st.path("logs")))
    audit = subprocess.run([os.path.join(BUILD_DIR, BINARIES["reconciler"]), "audit",
                            "--wait-drain", "60"], env=st.env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    demo_summary(st, report, audit.returncode, audit.stdout.rstrip("\n"))
    st.say("the stack keeps running: . %s/stack.env; curl $GATEWAY_URL/v1/promotions/demo-phone"
           % st.dir)
    st.say("stop it with: deploy/stack stop")
    return 0 if audit.returncode == 0 else 1


def demo_summary(st, report, audit_rc, audit_out):
    with open(report) as f:
        r = json.load(f)

    def sql(q):
        out = subprocess.run(["psql", "-X", "-h", st.path("pg"), "-U", "postgres",
                              "-d", "flashsale", "-Atc", q],
                             capture_output=True, text=True, check=True).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def redis(*a):
        return subprocess.run(["redis-cli", "-s", st.path("redis.sock")] + list(a),
                              capture_output=True, text=True, check=True).stdout.strip()

    orders = dict((s, int(n)) for s, n in sql("SELECT state, count(*) FROM orders GROUP BY state"))
    refusals = dict((s, int(n)) for s, n in
                    sql("SELECT reason, count(*) FROM refusals GROUP BY reason"))
    flat = redis("HGETALL", "fs:promo:demo-phone").split("\n")
    promo = dict(zip(flat[0::2], flat[1::2]))
    fs = r.get("final_states", {})
    lat = r.get("latency_ms", {}).get("purchase", {})
    won = sum(fs.get(k, 0) for k in ("paid", "expired", "cancelled", "reserved"))
    print()
    print("flashsale demo: %d buyers, %s units" % (r["buyers"], promo.get("initial", "?")))
    print("  accepted (202, queued to Kafka)   %d  (+%d duplicate retries answered, none deducted twice)"
          % (r["accepted"], r["duplicates_sent"]))
    print("  refused at the gateway            %d  %s" % (r["refused_total"], r.get("refused") or ""))
    print("  won a hold                        %d" % won)
    print("    paid                            %d" % fs.get("paid", 0))
    print("    let expire, released            %d" % fs.get("expired", 0))
    print("  sold out                          %d" % fs.get("sold_out", 0))
    print("  purchase call latency             p50 %.1f ms, p99 %.1f ms (from scheduled start)"
          % (lat.get("p50", 0), lat.get("p99", 0)))
    print("  PostgreSQL orders                 %s"
          % ", ".join("%s=%d" % kv for kv in sorted(orders.items())))
    print("  PostgreSQL refusals               %s"
          % ", ".join("%s=%d" % kv for kv in sorted(refusals.items())))
    print("  Redis stock                       remaining=%s held=%s sold=%s"
          % (promo.get("remaining"), promo.get("held"), promo.get("sold")))
    print("  audit                             %s" % ("clean" if audit_rc == 0 else "VIOLATIONS"))
    for line in audit_out.splitlines():
        print("    " + line)
    print()
    sys.stdout.flush()


def cmd_test_summary(args):
    """meson's results in build/meson-logs/testlog.json as "N passed, N
    failed[, N skipped]": OK and EXPECTEDFAIL pass, SKIP skips, the rest
    fail. Exit 1 if any failed (deploy/stack test)."""
    passed = failed = skipped = 0
    try:
        with open(args[0]) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                r = json.loads(line).get("result")
                if r in ("OK", "EXPECTEDFAIL"):
                    passed += 1
                elif r == "SKIP":
                    skipped += 1
                else:
                    failed += 1
    except FileNotFoundError:
        pass
    out = "%d passed, %d failed" % (passed, failed)
    if skipped:
        out += ", %d skipped" % skipped
    print(out)
    return 1 if failed else 0


def main(argv):
    cmd = argv[0] if argv else ""
    state, infra_only, args = None, False, []
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "--state":
            if i + 1 >= len(argv):
                say("error: --state needs a directory")
                return 1
            state = argv[i + 1]
            i += 2
            continue
        if a.startswith("--state="):
            state = a[len("--state="):]
        elif a == "--infra-only":
            infra_only = True
        elif a in ("-h", "--help"):
            print(__doc__.strip("\n"))
            return 0
        else:
            args.append(a)
        i += 1
    if cmd in ("", "-h", "--help", "help"):
        print(__doc__.strip("\n"))
        return 0
    try:
        if cmd == "test-summary":
            if not args:
                raise StackError("usage: deploy/stack.py test-summary TESTLOG.json")
            return cmd_test_summary(args)
        commands = {"start": lambda st: cmd_start(st, infra_only), "stop": cmd_stop,
                    "daemon": lambda st: cmd_daemon(st, args), "status": cmd_status,
                    "env": cmd_env, "demo": cmd_demo}
        if cmd not in commands:
            raise StackError("unknown command %s (see deploy/stack --help)" % cmd)
        st = Stack(state or os.path.join(REPO, "state"), echo=True)
        return commands[cmd](st)
    except StackError as e:
        if e.detail:
            print(e.detail, file=sys.stderr)
        say("error: " + e.message)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
