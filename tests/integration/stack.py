"""A private flashsale stack for one integration test.

Stack wraps `deploy/stack` on a temp state dir: Redis, PostgreSQL, the Kafka
mock broker and the four daemons, reachable through Unix sockets and free
ports. Standard library only. The fixtures live in conftest.py.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

SOURCE_ROOT = os.path.abspath(
    os.environ.get("FLASHSALE_SOURCE_ROOT")
    or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD_DIR = os.path.abspath(
    os.environ.get("FLASHSALE_BUILD_DIR") or os.path.join(SOURCE_ROOT, "build"))
STACK_SCRIPT = os.path.join(SOURCE_ROOT, "deploy", "stack")

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


def source_root():
    return SOURCE_ROOT


def build_dir():
    return BUILD_DIR


class StackError(Exception):
    pass


class Stack:
    """One stack in its own state dir. Call start(); always call stop()."""

    def __init__(self, state_dir=None, env=None):
        if state_dir is None:
            state_dir = tempfile.mkdtemp(prefix="flashsale-", dir="/tmp")
        os.chmod(state_dir, 0o755)  # the postgres user must traverse it
        self.dir = state_dir
        self.extra_env = {k: str(v) for k, v in (env or {}).items()}
        self.env = {}
        self.url = None
        self.admin_token = None
        self.ports = {}  # daemon name -> its /healthz and /metrics port
        self.started = False

    # ------------------------------------------------------------ lifecycle

    def _base_env(self):
        env = dict(os.environ)
        env["FLASHSALE_BUILD_DIR"] = BUILD_DIR
        env.update(self.extra_env)
        return env

    def script(self, *args, check=True, timeout=300):
        """Run deploy/stack ARGS --state DIR with the test's extra env."""
        cmd = [STACK_SCRIPT, *args, "--state", self.dir]
        p = subprocess.run(cmd, env=self._base_env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise StackError("%s failed (exit %d):\n%s"
                             % (" ".join(cmd), p.returncode, p.stdout))
        return p

    def start(self):
        self.started = True
        self.script("start")
        self._load_env()
        return self

    def stop(self):
        if self.started:
            self.script("stop", check=False)

    def _load_env(self):
        """Evaluate DIR/stack.env the way a shell would (caller values win)."""
        path = os.path.join(self.dir, "stack.env")
        p = subprocess.run(["bash", "-c", '. "$1" && env -0', "_", path],
                           env=self._base_env(), stdout=subprocess.PIPE,
                           check=True, timeout=30)
        env = {}
        for item in p.stdout.decode().split("\0"):
            if "=" in item:
                k, v = item.split("=", 1)
                env[k] = v
        self.env = env
        self.url = env["GATEWAY_URL"]
        self.admin_token = env["FLASHSALE_GATEWAY_ADMIN_TOKEN"]
        self.ports = {name: int(env[name.upper().replace("-", "_") + "_PORT"])
                      for name in ("gateway", "deductor", "order-writer", "reconciler")}

    def daemon(self, action, name):
        """deploy/stack daemon start|stop|kill|restart NAME; reloads the env
        (a restarted Kafka mock has a new bootstrap list)."""
        self.script("daemon", action, name)
        self._load_env()

    def status(self):
        """{component: True if running}."""
        p = self.script("status", check=False)
        out = {}
        for line in p.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1] in ("running", "stopped"):
                out[parts[0]] = parts[1] == "running"
        return out

    # ------------------------------------------------------------ access

    def http(self, method, path, body=None, token=None, headers=None, timeout=10):
        """One request to the gateway. Returns (status, JSON value or text)."""
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, bytes) else (
                body.encode() if isinstance(body, str) else json.dumps(body).encode())
            hdrs.setdefault("Content-Type", "application/json")
        if token is not None:
            hdrs["Authorization"] = "Bearer " + token
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
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
        with urllib.request.urlopen(url, timeout=timeout) as r:
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
        p = subprocess.run(["redis-cli", "-s", os.path.join(self.dir, "redis.sock"),
                            *[str(a) for a in args]],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=30)
        if p.returncode != 0:
            raise StackError("redis-cli %s: %s" % (args, p.stderr))
        return p.stdout.strip()

    def psql(self, sql):
        """Rows of the last statement, each a list of strings."""
        p = subprocess.run(["psql", "-X", "-h", os.path.join(self.dir, "pg"),
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
                              env=self.env or self._base_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout,
                              check=check)

    # ------------------------------------------------------------ logs

    def log_files(self):
        d = os.path.join(self.dir, "logs")
        if not os.path.isdir(d):
            return []
        return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".log")]

    def log(self, name):
        path = os.path.join(self.dir, "logs", name + ".log")
        try:
            with open(path, errors="replace") as f:
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
