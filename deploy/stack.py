#!/usr/bin/env python3
"""deploy/stack.py: a private flashsale stack (Redis, PostgreSQL 15, a Kafka
broker and the four daemons) in one state directory, with Unix sockets and
free ports only, so that several stacks run side by side (the integration
tests start one per test). Python 3, standard library only.

  deploy/stack.py start [--state DIR] [--infra-only]
  deploy/stack.py stop [--state DIR]
  deploy/stack.py daemon start|stop|kill|restart NAME [--state DIR]
                  NAME: gateway deductor order-writer reconciler redis postgres kafka,
                  and kafka-1..kafka-N: one node of a real Kafka (kinds kraft, kraft3)
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

Kafka kinds (KAFKA_KINDS; FLASHSALE_STACK_KAFKA or Stack(kafka=...) picks one,
start and demo say which on one line):
  kraft   Apache Kafka (KAFKA_VERSION, 4.1.1 unless FLASHSALE_KAFKA_VERSION),
          one broker+controller node in KRaft mode, run from the official jars
          that Maven fetches once (deploy/kafka/pom.xml) into
          $FLASHSALE_KAFKA_CACHE or ~/.cache/flashsale/kafka-VERSION. The
          default where Java >= 17 and Maven (or a complete cache) exist.
  kraft3  the same with three nodes: topics replicated 3 times,
          min.insync.replicas=2; kill one node and the leaders move, kill two
          and the controller quorum is lost until one is back.
  mock    librdkafka's mock cluster (deploy/kafka_mock.c), 3 brokers in one
          process, no JVM; the default without Java or Maven. It keeps its data
          in memory: restarting it ("daemon restart kafka") starts an empty
          cluster on new ports; restart the daemons after it.
A real broker keeps its ports and data across "daemon kill|start kafka" (or
kafka-N); the stack creates flashsale.intents and flashsale.ledger (12
partitions) and flashsale.deadletter (1).

Environment: FLASHSALE_BUILD_DIR (default <repo>/build), FLASHSALE_STACK_KAFKA
(mock, kraft or kraft3; a state dir whose broker runs keeps its kind),
FLASHSALE_STACK_REDIS_FSYNC (Redis' appendfsync: everysec, the default, or
always), FLASHSALE_KAFKA_VERSION, FLASHSALE_KAFKA_CACHE, JAVA_HOME, and any
FLASHSALE_* daemon setting: the env file never overrides a variable the
caller set. DIR defaults to <repo>/state.

Layout of DIR: logs/<name>.log, run/<name>.pid, redis/ (AOF), redis.sock,
pg/ (socket directory) and pg/data/, kafka.bootstrap, kafka.kind, ports,
admin.token, jwt.secret (the demo key buyer tokens are signed with),
stack.env; for a real Kafka kafka/ports, kafka/cluster.id and
kafka/node-N/ (server.properties, data/), logs/kafka-N.log, run/kafka-N.pid.
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


# Redis' appendfsync modes the stack runs (FLASHSALE_STACK_REDIS_FSYNC).
REDIS_FSYNC_MODES = ("everysec", "always")


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

    def wait_ready(self, pid, ready, what, interval=0.1, timeout=READY_TIMEOUT):
        """Poll ready() until true; fail if pid exits or after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = ready()
            if value:
                return value
            if not pid_alive(pid):
                self.stack.fail(self.name, "exited during start-up")
            if time.monotonic() >= deadline:
                self.stack.fail(self.name, "%s after %ds" % (what, timeout))
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
        # appendfsync everysec: a crash of the machine (or of Redis while
        # its disk is slow) loses the last second or two of writes. A Redis
        # that comes back older than the ledger is fenced and repaired from
        # PostgreSQL and the ledger (README, Operating notes), so that loss
        # is not an oversell. "always" fsyncs before every answer and
        # stalls every client behind a slow disk.
        fsync = os.environ.get("FLASHSALE_STACK_REDIS_FSYNC") or "everysec"
        if fsync not in REDIS_FSYNC_MODES:
            raise StackError("FLASHSALE_STACK_REDIS_FSYNC=%s: expected one of %s"
                             % (fsync, ", ".join(REDIS_FSYNC_MODES)))
        pid = self.spawn(["redis-server", "--port", "0", "--unixsocket", self.sock,
                          "--unixsocketperm", "700", "--dir", self.stack.path("redis"),
                          "--appendonly", "yes", "--appendfsync", fsync, "--save", "",
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
    description = ""
    client_settings = ""
    restart_note = None  # said after "daemon start|restart kafka"

    def any_running(self):
        return self.running()

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
    description = "librdkafka's mock cluster, 3 brokers in one process, data in memory"
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


# ---------------------------------------------------------------- Apache Kafka

KAFKA_VERSION = os.environ.get("FLASHSALE_KAFKA_VERSION") or "4.1.1"
KAFKA_POM = os.path.join(REPO, "deploy", "kafka", "pom.xml")
KAFKA_LOG4J = os.path.join(REPO, "deploy", "kafka", "log4j2.properties")
# A JVM on a shared 2-core machine: start-up, log recovery after a kill and
# the first elections take seconds, not the fraction of one the mock needs.
KAFKA_READY_TIMEOUT = 60
KAFKA_JVM_OPTS = ["-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                  "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
                  "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"]
# The flashsale topics (common/intent.h, proto/README.md): partition counts
# are part of the wire contract.
KAFKA_TOPICS = (("flashsale.intents", 12), ("flashsale.ledger", 12), ("flashsale.deadletter", 1))


def _kstr(s):
    if s is None:
        return b"\xff\xff"
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def _karray(items):
    return len(items).to_bytes(4, "big") + b"".join(items)


class _KReader:
    def __init__(self, data):
        self.d, self.i = data, 0

    def int(self, n):
        v = int.from_bytes(self.d[self.i:self.i + n], "big", signed=True)
        if self.i + n > len(self.d):
            raise OSError("short Kafka response")
        self.i += n
        return v

    def str(self):
        n = self.int(2)
        if n < 0:
            return None
        s = self.d[self.i:self.i + n].decode("utf-8", "replace")
        self.i += n
        return s

    def array(self, item):
        return [item() for _ in range(max(self.int(4), 0))]


def kafka_request(addr, api_key, version, body, timeout=5.0):
    """One request of the Kafka protocol (request header v1, non-flexible
    versions only) to addr=(host, port); the response body as a reader.
    Enough for the stack's probes: no client library in the standard one."""
    corr = int.from_bytes(os.urandom(4), "big") & 0x7fffffff
    msg = (api_key.to_bytes(2, "big") + version.to_bytes(2, "big") + corr.to_bytes(4, "big")
           + _kstr("flashsale-stack") + body)
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(len(msg).to_bytes(4, "big") + msg)
        f = s.makefile("rb")
        head = f.read(4)
        if len(head) < 4:
            raise OSError("Kafka closed the connection")
        data = f.read(int.from_bytes(head, "big"))
    r = _KReader(data)
    if r.int(4) != corr:
        raise OSError("Kafka answered another request")
    return r


def kafka_metadata(addr, topics, timeout=5.0):
    """Metadata v4: {"brokers": [node ids], "topics": {name: (error, [(partition,
    error, leader, [isr])])}}. Brokers are the registered, unfenced ones."""
    r = kafka_request(addr, 3, 4, _karray([_kstr(t) for t in topics]) + b"\x00", timeout)
    r.int(4)  # throttle
    brokers = r.array(lambda: (r.int(4), r.str(), r.int(4), r.str()))
    r.str()   # cluster id
    r.int(4)  # controller id

    def partition():
        err, index, leader = r.int(2), r.int(4), r.int(4)
        r.array(lambda: r.int(4))  # replicas
        return index, err, leader, r.array(lambda: r.int(4))

    def topic():
        err, name = r.int(2), r.str()
        r.int(1)  # internal
        return name, (err, r.array(partition))
    return {"brokers": sorted(b[0] for b in brokers), "topics": dict(r.array(topic))}


def kafka_create_topics(addr, topics, timeout_ms=15000):
    """CreateTopics v2 for [(name, partitions, replication, {config: value})];
    returns {name: (error code, message)} (36: it exists already)."""
    items = [_kstr(name) + parts.to_bytes(4, "big") + rf.to_bytes(2, "big") + _karray([])
             + _karray([_kstr(k) + _kstr(v) for k, v in configs.items()])
             for name, parts, rf, configs in topics]
    r = kafka_request(addr, 19, 2, _karray(items) + timeout_ms.to_bytes(4, "big") + b"\x00",
                      timeout=timeout_ms / 1000.0 + 5)
    r.int(4)  # throttle
    return dict((name, (err, msg)) for name, err, msg in r.array(lambda: (r.str(), r.int(2),
                                                                           r.str())))


def kafka_list_offsets(addr, partitions, timeout=5.0):
    """ListOffsets v1 (latest) for {topic: [partition]} on the broker at
    addr: {(topic, partition): error code}. A leader answers 0 only once it
    serves the partition, which its metadata announces a little earlier."""
    body = (-1).to_bytes(4, "big", signed=True) + _karray([
        _kstr(t) + _karray([p.to_bytes(4, "big") + (-1).to_bytes(8, "big", signed=True)
                            for p in ps]) for t, ps in partitions.items()])
    r = kafka_request(addr, 2, 1, body, timeout)
    out = {}
    for _ in range(max(r.int(4), 0)):
        t = r.str()
        for _ in range(max(r.int(4), 0)):
            p, err = r.int(4), r.int(2)
            r.int(8)  # timestamp
            r.int(8)  # offset
            out[(t, p)] = err
    return out


def kafka_uuid():
    """A Kafka Uuid as its tools print it (base64url, no padding), for the
    cluster id and the log directories' ids; never one starting with '-'."""
    while True:
        s = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not s.startswith("-"):
            return s


_java_versions = {}


def java_binary():
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return os.path.join(home, "bin", "java")
    return shutil.which("java")


def java_major(java):
    """The Java feature release of `java -version` (8 for 1.8), 0 if unknown."""
    if java not in _java_versions:
        try:
            out = subprocess.run([java, "-version"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
        major = int(m.group(1)) if m else 0
        _java_versions[java] = int(m.group(2) or 0) if major == 1 else major
    return _java_versions[java]


class KafkaDist:
    """Apache Kafka's jars and their runtime dependencies, fetched once with
    Maven (deploy/kafka/pom.xml) into a cache directory: CACHE/libs/*.jar,
    CACHE/format/bootstrap.checkpoint (what kafka.tools.StorageTool writes
    for a new KRaft node, independent of cluster and node) and the marker
    CACHE/complete, written last. CACHE is $FLASHSALE_KAFKA_CACHE or
    ~/.cache/flashsale/kafka-VERSION."""

    def __init__(self, version=KAFKA_VERSION):
        self.version = version
        self.dir = os.path.abspath(os.environ.get("FLASHSALE_KAFKA_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "flashsale", "kafka-" + version))
        self.libs = os.path.join(self.dir, "libs")
        self.marker = os.path.join(self.dir, "complete")
        self.checkpoint = os.path.join(self.dir, "format", "bootstrap.checkpoint")

    @property
    def coordinates(self):
        return "org.apache.kafka:kafka_2.13:" + self.version

    def complete(self):
        try:
            with open(self.marker) as f:
                jars = f.read().split()
        except OSError:
            return False
        return (bool(jars) and os.path.isfile(self.checkpoint)
                and all(os.path.isfile(os.path.join(self.libs, j)) for j in jars))

    def java(self):
        """The java binary, or StackError in one line if there is none >= 17."""
        java = java_binary()
        if not java:
            raise StackError("kafka: Apache Kafka %s needs Java 17 or newer and there is no "
                             "java (install default-jre-headless, or FLASHSALE_STACK_KAFKA=mock)"
                             % self.version)
        major = java_major(java)
        if major < 17:
            raise StackError("kafka: Apache Kafka %s needs Java 17 or newer; %s is Java %s "
                             "(set JAVA_HOME, or FLASHSALE_STACK_KAFKA=mock)"
                             % (self.version, java, major or "of an unknown version"))
        return java

    def classpath(self):
        return os.path.join(self.libs, "*")

    def ensure(self, say):
        """Fetch and prepare the cache unless complete; one fetch at a time
        per cache (several stacks may start at once). StackError in one line."""
        if self.complete():
            return
        java = self.java()
        mvn = shutil.which("mvn")
        if not mvn:
            raise StackError("kafka: fetching Apache Kafka %s needs Maven and there is no mvn "
                             "(install maven, or FLASHSALE_STACK_KAFKA=mock)" % self.version)
        import fcntl
        os.makedirs(os.path.dirname(self.dir), exist_ok=True)
        with open(self.dir + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.complete():
                return
            os.makedirs(self.dir, exist_ok=True)
            say("kafka: fetching %s and its dependencies with Maven into %s (once)"
                % (self.coordinates, self.dir))
            t0 = time.monotonic()
            self._fetch(mvn)
            self._format_template(java)
            jars = sorted(j for j in os.listdir(self.libs) if j.endswith(".jar"))
            with open(self.marker + ".tmp", "w") as f:
                f.write("\n".join(jars) + "\n")
            os.replace(self.marker + ".tmp", self.marker)
            say("kafka: %d jars ready in %.1f s" % (len(jars), time.monotonic() - t0))

    def _fetch(self, mvn):
        log = os.path.join(self.dir, "fetch.log")
        tmp = self.libs + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with open(log, "w") as out:
            try:
                rc = subprocess.run([mvn, "-B", "-q", "-f", KAFKA_POM,
                                     "-Dkafka.version=" + self.version,
                                     "dependency:copy-dependencies", "-DoutputDirectory=" + tmp],
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=1800).returncode
            except subprocess.TimeoutExpired:
                rc = "a timeout"
        jars = os.listdir(tmp) if os.path.isdir(tmp) else []
        if rc != 0 or not any(j.startswith("kafka_2.13-") for j in jars):
            with open(log, errors="replace") as f:
                # Maven 3.8 colours its output even with -B.
                errors = [re.sub(r"\x1b\[[0-9;]*m", "", line).replace("[ERROR]", "").strip()
                          for line in f if "ERROR" in line] or ["no error line"]
            raise StackError("kafka: Maven could not fetch %s (exit %s; see %s): %s"
                             % (self.coordinates, rc, log, errors[0][:300]))
        shutil.rmtree(self.libs, ignore_errors=True)
        os.replace(tmp, self.libs)

    def _format_template(self, java):
        """kafka.tools.StorageTool format of a throwaway node: its
        bootstrap.checkpoint (the metadata.version and feature levels of this
        release) is what every new node of every stack starts from."""
        work = os.path.join(self.dir, "format.tmp")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        props = os.path.join(work, "server.properties")
        with open(props, "w") as f:
            f.write("process.roles=broker,controller\nnode.id=1\n"
                    "controller.quorum.voters=1@127.0.0.1:9093\n"
                    "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093\n"
                    "controller.listener.names=CONTROLLER\nlog.dirs=%s\n"
                    % os.path.join(work, "data"))
        p = subprocess.run([java, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
                            "-Dlog4j2.configurationFile=" + KAFKA_LOG4J, "-cp", self.classpath(),
                            "kafka.tools.StorageTool", "format", "-t", kafka_uuid(),
                            "-c", props], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300)
        made = os.path.join(work, "data", "bootstrap.checkpoint")
        if p.returncode != 0 or not os.path.isfile(made):
            lines = [x for x in p.stdout.splitlines() if x.strip()] or ["no output"]
            raise StackError("kafka: kafka.tools.StorageTool format failed (exit %d): %s"
                             % (p.returncode, lines[-1][:300]))
        os.makedirs(os.path.dirname(self.checkpoint), exist_ok=True)
        shutil.copy(made, self.checkpoint + ".tmp")
        os.replace(self.checkpoint + ".tmp", self.checkpoint)
        shutil.rmtree(work, ignore_errors=True)


def default_kafka_kind():
    """"kraft" where Apache Kafka can run (Java >= 17, and Maven or a complete
    cache), else "mock"."""
    java = java_binary()
    if java and java_major(java) >= 17 and (shutil.which("mvn") or KafkaDist().complete()):
        return "kraft"
    return "mock"


class KafkaNode(Component):
    """One Apache Kafka node of a KRaft cluster, broker and controller in one
    JVM: DIR/kafka/node-N/server.properties, its data in DIR/kafka/node-N/data,
    run/kafka-N.pid, logs/kafka-N.log. Its ports are the cluster's, kept for
    the state dir, so the data and the clients' bootstrap list survive a
    restart."""

    comm = "java"

    def __init__(self, cluster, index):
        super().__init__(cluster.stack)
        self.cluster = cluster
        self.index = index
        self.name = "kafka-%d" % index

    @property
    def dir(self):
        return self.stack.path("kafka", "node-%d" % self.index)

    @property
    def props(self):
        return os.path.join(self.dir, "server.properties")

    @property
    def data(self):
        return os.path.join(self.dir, "data")

    def alive(self, pid):
        """pid is this node's JVM (java, with this node's server.properties)."""
        if not pid_alive(pid, self.comm):
            return False
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                return self.props.encode() in f.read().split(b"\0")
        except OSError:
            return False

    def running(self):
        return self.alive(self.pid())

    def status(self):
        pid = self.pid()
        ok = self.alive(pid)
        return ok, (pid if ok else None)

    @property
    def addr(self):
        return ("127.0.0.1", self.cluster.ports()[self.index][0])

    def registered(self):
        """This node's broker answers and the controller counts it among the
        live (registered, unfenced) brokers."""
        try:
            return self.index in kafka_metadata(self.addr, [], timeout=2.0)["brokers"]
        except OSError:
            return False

    def configure(self):
        c = self.cluster
        ports = c.ports()
        n = c.node_count
        rf = c.replication
        isr = c.min_isr
        voters = ",".join("%d@127.0.0.1:%d" % (i, ports[i][1]) for i in sorted(ports))
        broker, controller = ports[self.index]
        settings = [
            ("process.roles", "broker,controller"),
            ("node.id", self.index),
            ("controller.quorum.voters", voters),
            ("listeners", "PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d"
             % (broker, controller)),
            ("advertised.listeners", "PLAINTEXT://127.0.0.1:%d" % broker),
            ("listener.security.protocol.map", "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"),
            ("controller.listener.names", "CONTROLLER"),
            ("inter.broker.listener.name", "PLAINTEXT"),
            ("log.dirs", self.data),
            # Topics are created by the stack with the contract's partition
            # counts, as in production (deploy/docker-compose.yml).
            ("auto.create.topics.enable", "false"),
            ("num.partitions", 12),
            ("default.replication.factor", rf),
            ("min.insync.replicas", isr),
            ("offsets.topic.replication.factor", rf),
            ("offsets.topic.num.partitions", 12),
            ("transaction.state.log.replication.factor", rf),
            ("transaction.state.log.min.isr", isr),
            ("transaction.state.log.num.partitions", 4),
            ("share.coordinator.state.topic.replication.factor", rf),
            ("share.coordinator.state.topic.min.isr", isr),
            # A group forms as soon as its first member joins.
            ("group.initial.rebalance.delay.ms", 0),
            ("group.min.session.timeout.ms", 1000),
            # A killed node is fenced (its partitions led elsewhere, its
            # replicas out of the ISR) within seconds, not the default 9 s.
            ("broker.heartbeat.interval.ms", 500),
            ("broker.session.timeout.ms", 4000),
            ("replica.lag.time.max.ms", 10000),
            ("unclean.leader.election.enable", "false"),
            # Small files and few threads: a test stack on a 2-core machine.
            ("log.segment.bytes", 16 * 1024 * 1024),
            ("log.index.size.max.bytes", 1024 * 1024),
            ("num.network.threads", 2),
            ("num.io.threads", 4),
            ("num.recovery.threads.per.data.dir", 2),
            ("background.threads", 4),
            ("log.cleaner.threads", 1),
            ("log.cleaner.dedupe.buffer.size", 8 * 1024 * 1024),
        ]
        text = ("# written by deploy/stack.py (Kafka kind %s); rewritten at every start\n"
                % c.kind + "".join("%s=%s\n" % kv for kv in settings))
        os.makedirs(self.dir, exist_ok=True)
        with open(self.props + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.props + ".tmp", self.props)

    def format(self):
        """What `kafka-storage.sh format -t CLUSTER -c server.properties`
        writes for a node of a static quorum: the release's
        bootstrap.checkpoint (made once per cache by StorageTool) and
        meta.properties with the cluster's and the node's ids."""
        if os.path.isfile(os.path.join(self.data, "meta.properties")):
            return
        os.makedirs(self.data, exist_ok=True)
        shutil.copy(self.cluster.dist.checkpoint, os.path.join(self.data, "bootstrap.checkpoint"))
        meta = os.path.join(self.data, "meta.properties")
        with open(meta + ".tmp", "w") as f:
            f.write("#\n#written by deploy/stack.py\nnode.id=%d\ndirectory.id=%s\nversion=1\n"
                    "cluster.id=%s\n" % (self.index, kafka_uuid(), self.cluster.cluster_id()))
        os.replace(meta + ".tmp", meta)

    def launch(self, java):
        env = self.stack.base_env()
        for k in ("LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_RESET"):
            env.pop(k, None)
        with open(self.stack.path("logs", self.name + ".log"), "ab") as out:
            out.write(b"# %s start\n" % time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                       time.gmtime()).encode())
        return self.spawn([java] + KAFKA_JVM_OPTS + ["-Dlog4j2.configurationFile=" + KAFKA_LOG4J,
                                                     "-cp", self.cluster.dist.classpath(),
                                                     "kafka.Kafka", self.props],
                          env)

    def start(self):
        """Start this node; once the whole cluster runs again, wait for the
        topics to be served as after a cluster start."""
        if self.cluster.start_nodes([self]) and self.cluster.running():
            self.cluster.ensure_topics()

    def stop(self):
        self.cluster.stop_nodes([self], signal.SIGTERM)

    def kill(self):
        self.cluster.stop_nodes([self], signal.SIGKILL)


class KafkaKRaft(Kafka):
    """Apache Kafka in KRaft mode from the official jars (KafkaDist): node_count
    nodes, each broker and controller, on free ports of 127.0.0.1 chosen once
    per state dir (DIR/kafka/ports), cluster id in DIR/kafka/cluster.id. Its
    data survives a restart. The stack creates the flashsale topics
    (KAFKA_TOPICS) with the cluster's replication and min.insync.replicas.
    "daemon kill|start kafka-N" acts on one node; "kafka" on all of them."""

    kind = "kraft"
    comm = "java"
    node_count = 1
    client_settings = ""  # a real broker needs nothing beyond the daemons' defaults

    def __init__(self, stack):
        super().__init__(stack)
        self.dist = KafkaDist()
        self.nodes = [KafkaNode(self, i) for i in range(1, self.node_count + 1)]

    @property
    def replication(self):
        return min(3, self.node_count)

    @property
    def min_isr(self):
        return 2 if self.node_count >= 3 else 1

    description = "Apache Kafka %s, KRaft, 1 broker+controller node" % KAFKA_VERSION

    def create_topic(self, name, partitions):
        """A topic beside the flashsale ones, with the cluster's replication
        (bench/run warms a fresh broker up on one that no daemon reads); one
        that exists is kept. StackError when no node takes the request."""
        configs = {"min.insync.replicas": str(self.min_isr)}
        last = "no node running"
        for n in self.nodes:
            if not n.running():
                continue
            try:
                err, msg = kafka_create_topics(n.addr, [(name, partitions, self.replication,
                                                         configs)]).get(name, (-1, "no answer"))
            except OSError as e:
                last = str(e)
                continue
            if err in (0, 36):
                return
            last = "error %d: %s" % (err, msg)
        raise StackError("kafka: create topic %s: %s" % (name, last))

    def node(self, name):
        for n in self.nodes:
            if n.name == name:
                return n
        return None

    # The cluster's pid is its first node's; it runs when every node runs.
    @property
    def pidfile(self):
        return self.nodes[0].pidfile

    def running(self):
        return all(n.running() for n in self.nodes)

    def any_running(self):
        return any(n.running() for n in self.nodes)

    def status(self):
        ok = self.running()
        return ok, (self.nodes[0].pid() if ok else None)

    def ports(self):
        """{node index: (broker port, controller port)}, chosen once."""
        f = self.stack.path("kafka", "ports")
        ports = {}
        try:
            with open(f) as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) == 3 and all(p.isdigit() for p in parts):
                        ports[int(parts[0])] = (int(parts[1]), int(parts[2]))
        except FileNotFoundError:
            pass
        missing = [n.index for n in self.nodes if n.index not in ports]
        if missing:
            socks = []
            try:
                for _ in range(2 * len(missing)):
                    s = socket.socket()
                    s.bind(("127.0.0.1", 0))
                    socks.append(s)
                got = [s.getsockname()[1] for s in socks]
            finally:
                for s in socks:
                    s.close()
            for k, i in enumerate(missing):
                ports[i] = (got[2 * k], got[2 * k + 1])
            os.makedirs(os.path.dirname(f), exist_ok=True)
            with open(f + ".tmp", "w") as out:
                out.write("# node broker-port controller-port\n")
                out.write("".join("%d %d %d\n" % (i, b, c) for i, (b, c) in sorted(ports.items())))
            os.replace(f + ".tmp", f)
        return ports

    def cluster_id(self):
        f = self.stack.path("kafka", "cluster.id")
        try:
            with open(f) as fh:
                cid = fh.read().strip()
            if cid:
                return cid
        except FileNotFoundError:
            pass
        cid = kafka_uuid()
        os.makedirs(os.path.dirname(f), exist_ok=True)
        with open(f + ".tmp", "w") as out:
            out.write(cid + "\n")
        os.replace(f + ".tmp", f)
        return cid

    def bootstrap_list(self):
        ports = self.ports()
        return ",".join("127.0.0.1:%d" % ports[n.index][0] for n in self.nodes)

    def start(self):
        """Start every node that is not running, wait until all are
        registered, create the topics if missing and wait until every
        partition has a leader and enough in-sync replicas."""
        t0 = time.monotonic()
        started = self.start_nodes(self.nodes)
        self.ensure_topics()
        with open(self.bootstrap_file + ".tmp", "w") as f:
            f.write(self.bootstrap_list() + "\n")
        os.replace(self.bootstrap_file + ".tmp", self.bootstrap_file)
        if started:
            self.stack.say("kafka %s ready in %.1f s (%s; pid %s; %s)"
                           % (self.kind, time.monotonic() - t0, self.description,
                              ",".join(str(n.pid()) for n in self.nodes), self.bootstrap()))

    def start_nodes(self, nodes):
        """Start those of nodes not running; wait for each to register if a
        controller quorum can form (a majority of the nodes running), else
        leave it waiting for one. Returns the nodes started."""
        java = self.dist.java()
        self.dist.ensure(self.stack.say)
        self.ports()
        self.cluster_id()
        todo = [n for n in nodes if not n.running()]
        for n in todo:
            n.configure()
            n.format()
        t0 = time.monotonic()
        pids = {n: n.launch(java) for n in todo}
        live = sum(1 for n in self.nodes if n.running())
        if live < self.node_count // 2 + 1:
            for n in todo:
                self.stack.say("%s started (pid %d); no controller quorum yet: %d of %d nodes "
                               "running" % (n.name, pids[n], live, self.node_count))
            return todo
        for n in todo:
            n.wait_ready(pids[n], n.registered, "not registered with the controller",
                         interval=0.2, timeout=KAFKA_READY_TIMEOUT)
            if self.node_count > 1 or len(nodes) == 1:
                self.stack.say("%s ready in %.1f s (pid %d, 127.0.0.1:%d)"
                               % (n.name, time.monotonic() - t0, pids[n], n.addr[1]))
        return todo

    def stop_nodes(self, nodes, sig):
        """Signal every running one of nodes at once (a node of three shuts
        down faster while the others' controllers still run), wait up to
        STOP_TIMEOUT, then SIGKILL."""
        pids = {}
        for n in nodes:
            pid = n.pid()
            if n.alive(pid):
                pids[n] = pid
                signal_pid(pid, sig)
            else:
                n._unlink_pidfile()
        deadline = time.monotonic() + STOP_TIMEOUT
        for n, pid in pids.items():
            while n.alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if n.alive(pid):
                self.stack.say("%s (pid %d) still running after %ds: SIGKILL"
                               % (n.name, pid, STOP_TIMEOUT))
                signal_pid(pid, signal.SIGKILL)
                end = time.monotonic() + 5
                while n.alive(pid) and time.monotonic() < end:
                    time.sleep(0.1)
            n._unlink_pidfile()
            self.stack.say("%s %s" % (n.name, "killed" if sig == signal.SIGKILL else "stopped"))

    def stop(self):
        self.stop_nodes(self.nodes, signal.SIGTERM)

    def kill(self):
        self.stop_nodes(self.nodes, signal.SIGKILL)

    def ensure_topics(self):
        """Create the flashsale topics where missing; wait until each of their
        partitions has a leader and min.insync.replicas in sync (so that an
        acks=all produce succeeds at once)."""
        want = dict(KAFKA_TOPICS)
        configs = {"min.insync.replicas": str(self.min_isr)}
        deadline = time.monotonic() + KAFKA_READY_TIMEOUT
        last = "no answer"
        created = False
        while True:
            for n in self.nodes:
                if not n.running():
                    continue
                try:
                    if not created:
                        res = kafka_create_topics(n.addr, [(t, p, self.replication, configs)
                                                          for t, p in KAFKA_TOPICS])
                        bad = {t: e for t, e in res.items() if e[0] not in (0, 36)}
                        if bad:
                            raise OSError("create topics: %s" % bad)
                        created = True
                    md = kafka_metadata(n.addr, list(want))
                except OSError as e:
                    last = str(e)
                    continue
                problems = []
                led = {}  # leader -> {topic: [partition]}
                for t, parts in want.items():
                    err, plist = md["topics"].get(t, (-1, []))
                    if err == 0 and len(plist) != parts:
                        raise StackError("kafka: topic %s has %d partitions, not %d (a state "
                                         "dir from another layout? remove %s)"
                                         % (t, len(plist), parts, self.stack.dir))
                    if err != 0:
                        problems.append("%s: error %d" % (t, err))
                        continue
                    for p, perr, leader, isr in plist:
                        if perr != 0 or leader < 0 or len(isr) < self.min_isr:
                            problems.append("%s[%d]: leader %d, isr %s" % (t, p, leader, isr))
                        else:
                            led.setdefault(leader, {}).setdefault(t, []).append(p)
                for leader, parts in led.items() if not problems else ():
                    node = self.nodes[leader - 1]
                    try:
                        errs = kafka_list_offsets(node.addr, parts)
                    except OSError as e:
                        errs = {("node %d" % leader, -1): str(e)}
                    problems += ["%s[%s] on node %d: error %s" % (t, p, leader, e)
                                 for (t, p), e in errs.items() if e != 0]
                if not problems:
                    return
                last = "; ".join(problems[:3])
                break
            if time.monotonic() >= deadline:
                self.stack.fail(self.nodes[0].name, "topics not ready after %ds: %s"
                                % (KAFKA_READY_TIMEOUT, last))
            time.sleep(0.2)


class KafkaKRaft3(KafkaKRaft):
    """Three nodes, each broker and controller: topics replicated 3 times
    with min.insync.replicas=2. One node down: leaders move, writes go on;
    two down: no controller quorum and no acks=all write until one is back."""

    kind = "kraft3"
    node_count = 3
    description = "Apache Kafka %s, KRaft, 3 broker+controller nodes" % KAFKA_VERSION


KAFKA_KINDS = {"mock": KafkaMock, "kraft": KafkaKRaft, "kraft3": KafkaKRaft3}


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
    kind (KAFKA_KINDS): default $FLASHSALE_STACK_KAFKA, else the kind
    recorded in the state dir (DIR/kafka.kind), else default_kafka_kind();
    a state dir whose broker runs keeps its kind. echo: print progress
    ("stack: redis ready ...") on stderr."""

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
        self.kafka_kind, self.kafka_why = self.choose_kafka_kind(kafka)
        kafka = KAFKA_KINDS[self.kafka_kind](self)
        self.components = {"redis": Redis(self), "postgres": Postgres(self), "kafka": kafka}
        # The nodes of a cluster of several are components of their own
        # (daemon kill kafka-2); a one-node cluster is just "kafka".
        nodes = getattr(kafka, "nodes", [])
        if len(nodes) > 1:
            for node in nodes:
                self.components[node.name] = node
        for name in DAEMONS:
            self.components[name] = (Deductor if name == "deductor" else Daemon)(self, name)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def redis_aof_increment(self):
        """(path, size) of the AOF file Redis appends to (its newest
        increment), or (None, 0) before it has one: for faults that cut it."""
        d = self.path("redis", "appendonlydir")
        incr = sorted((f for f in os.listdir(d) if f.endswith(".incr.aof")),
                      key=lambda f: int(f.split(".")[-3]))
        if not incr:
            return None, 0
        path = os.path.join(d, incr[-1])
        return path, os.path.getsize(path)

    def choose_kafka_kind(self, explicit):
        """(kind, why): the kind of broker this stack runs and why that one."""
        for kind, why in ((explicit, "asked for"),
                          (os.environ.get("FLASHSALE_STACK_KAFKA"), "FLASHSALE_STACK_KAFKA")):
            if kind and kind not in KAFKA_KINDS:
                raise StackError("unknown Kafka kind %r (%s; known: %s)"
                                 % (kind, why, ", ".join(sorted(KAFKA_KINDS))))
        requested = explicit or os.environ.get("FLASHSALE_STACK_KAFKA")
        recorded = None
        try:
            with open(self.path("kafka.kind")) as f:
                recorded = f.read().strip() or None
        except OSError:
            if KafkaMock(self).running():  # a state dir from before kafka.kind
                recorded = "mock"
        if recorded in KAFKA_KINDS and recorded != requested and requested:
            if KAFKA_KINDS[recorded](self).any_running():
                if explicit:
                    raise StackError("%s runs a Kafka of kind %s, not %s: stop it first"
                                     % (self.dir, recorded, explicit))
                self.say("FLASHSALE_STACK_KAFKA=%s ignored: this state dir runs a Kafka of "
                         "kind %s" % (requested, recorded))
                return recorded, "running in the state dir"
        if requested:
            return requested, "asked for" if explicit else "FLASHSALE_STACK_KAFKA"
        if recorded in KAFKA_KINDS:
            return recorded, "the state dir's"
        kind = default_kafka_kind()
        return kind, ("default: Java >= 17 and Maven found" if kind == "kraft" else
                      "default: no Java >= 17 with Maven for a real broker")

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
        self.say("kafka: %s (%s; %s)" % (self.kafka_kind, self.components["kafka"].description,
                                         self.kafka_why))
        self.record_kafka_kind()
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
        self.say("stack up: %s (kafka %s; env: %s)" % (self.url, self.kafka_kind, self.env_file))
        return self

    def record_kafka_kind(self):
        with open(self.path("kafka.kind.tmp"), "w") as f:
            f.write(self.kafka_kind + "\n")
        os.replace(self.path("kafka.kind.tmp"), self.path("kafka.kind"))

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
        order-writer reconciler redis postgres kafka, and kafka-N: one node
        of a real Kafka); reloads the env (a restarted Kafka mock has a new
        bootstrap list)."""
        self.need_state()
        comp = self.components.get(name)
        if comp is None and name.startswith("kafka-"):
            node = getattr(self.components["kafka"], "node", None)
            comp = node(name) if node else None
        if comp is None:
            raise StackError("unknown component %s (Kafka kind %s)" % (name, self.kafka_kind))
        if action not in ACTIONS:
            raise StackError("unknown action %s" % action)
        if action == "kill":
            comp.kill()
        elif action in ("stop", "restart"):
            comp.stop()
        if action in ("start", "restart"):
            self.prepare_state()
            if name.startswith("kafka"):
                self.record_kafka_kind()
                comp.start()
                self.write_env()
                if getattr(comp, "restart_note", None):
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
        for name in self.components:
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
        # The gateway connects to PostgreSQL on its loop after it listens:
        # right after a start, "retry later" (503) is what it says, so retry.
        deadline = time.monotonic() + 30
        while True:
            status, reply = self.http("POST", "/admin/promotions", body,
                                      token=self.admin_token)
            if (status != 503 or not isinstance(reply, dict) or
                    reply.get("error") != "store_unavailable" or time.monotonic() > deadline):
                break
            time.sleep(0.2)
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
        # A fresh stack: its Kafka kind is chosen anew, not the old one's.
        st = Stack(st.dir, env=st.extra_env, echo=st.echo)
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
           # a buyer waits for the decision in one long poll, on a connection
           # of its own as on a phone
           "--wait-ms", "5000", "--wait-concurrency", "256",
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
    print("  kafka                             %s (%s)"
          % (st.kafka_kind, st.components["kafka"].description))
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
