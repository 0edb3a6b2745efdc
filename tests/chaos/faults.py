"""The faults a chaos seed draws from. Each one happens and heals within its
apply(): the scheduler runs the drawn faults one after another while the
buyers buy, and the stack is whole again (every component running) before
the checker looks.

Not every fault exists everywhere: network faults need the seed to run in a
network namespace of its own (campaign.py --netns), the full disk a tmpfs
under PostgreSQL (--pg-tmpfs), broker faults a real broker (the Kafka mock
loses its data when restarted). Context.available() lists those that do."""
import os
import shutil
import signal
import subprocess
import time

PGBIN = "/usr/lib/postgresql/15/bin"
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
DAEMONS = ("order-writer", "deductor", "reconciler", "gateway")


class Context:
    def __init__(self, stack, rng, log, netns=False, pg_tmpfs=None, workload=None):
        self.stack = stack
        self.rng = rng
        self.log = log
        self.netns = netns
        self.pg_tmpfs = pg_tmpfs
        self.workload = workload
        self.redis_copy = None

    def pid(self, name):
        with open(self.stack.path("run", name + ".pid")) as f:
            return int(f.read().strip())

    def kafka_nodes(self):
        """Component names of the broker nodes (one, or kafka-1.. kafka-N)."""
        nodes = sorted(n for n in self.stack.components if n.startswith("kafka-"))
        return nodes or ["kafka"]

    def real_kafka(self):
        return type(self.stack.components["kafka"]).__name__.lower().find("mock") < 0

    def available(self):
        out = [f for f in FAULTS if f.needs is None or f.needs(self)]
        return out

    def snapshot_redis(self):
        """An older copy of Redis' data dir, for the rollback fault."""
        dst = self.stack.path("redis-older")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(self.stack.path("redis"), dst)
        self.redis_copy = dst


def sleep(ctx, lo, hi):
    time.sleep(ctx.rng.uniform(lo, hi))


class Fault:
    needs = None

    def __init__(self, name, fn, needs=None):
        self.name = name
        self.fn = fn
        if needs is not None:
            self.needs = needs

    def apply(self, ctx):
        return self.fn(ctx)


def kill_daemon(ctx):
    name = ctx.rng.choice(DAEMONS)
    ctx.stack.daemon("kill", name)
    sleep(ctx, 0.2, 2.0)
    ctx.stack.daemon("start", name)
    return name


def kill_many(ctx):
    names = ctx.rng.sample(DAEMONS, ctx.rng.randint(2, len(DAEMONS)))
    for n in names:
        ctx.stack.daemon("kill", n)
    sleep(ctx, 0.5, 2.0)
    for n in DAEMONS:            # start order: the ledger sink first
        if n in names:
            ctx.stack.daemon("start", n)
    return "+".join(names)


def pause_deductor(ctx):
    """SIGSTOP past the group's session timeout (6 s), then SIGCONT: the
    group moves on without it, and it must notice it lost its partitions."""
    pid = ctx.pid("deductor")
    os.kill(pid, signal.SIGSTOP)
    try:
        sleep(ctx, 7.0, 9.0)
    finally:
        os.kill(pid, signal.SIGCONT)
    return "%ds" % 8


def redis_kill(ctx):
    ctx.stack.daemon("kill", "redis")
    sleep(ctx, 0.3, 1.5)
    ctx.stack.daemon("start", "redis")


def redis_rollback(ctx):
    """Redis comes back with older data (a lagging replica promoted, a
    snapshot restored): it must be fenced and repaired, never oversell."""
    if ctx.redis_copy is None:
        ctx.snapshot_redis()
        sleep(ctx, 1.0, 3.0)
    ctx.stack.daemon("kill", "redis")
    shutil.rmtree(ctx.stack.path("redis"))
    shutil.copytree(ctx.redis_copy, ctx.stack.path("redis"))
    ctx.stack.daemon("start", "redis")
    ctx.redis_copy = None


def redis_power_loss(ctx):
    """The machine under Redis loses power: with appendfsync everysec, up
    to the last second or two of writes it acknowledged never reached the
    disk. Modelled as a SIGKILL and the newest AOF file cut at a random byte
    of what was appended in the last 0.5-2 s (Redis loads the whole commands
    before the cut and drops a MULTI it cut through). What Redis lost is
    behind the ledger: fenced and repaired like a rollback, never an
    oversell."""
    before, size0 = ctx.stack.redis_aof_increment()
    sleep(ctx, 0.5, 2.0)
    ctx.stack.daemon("kill", "redis")
    path, size = ctx.stack.redis_aof_increment()
    cut = 0
    if path is not None:
        # A rewrite meanwhile started a new file: all of it is recent.
        keep = ctx.rng.randint(size0 if path == before else 0, size)
        cut = size - keep
        os.truncate(path, keep)
    sleep(ctx, 0.2, 1.0)
    ctx.stack.daemon("start", "redis")
    return "%d bytes" % cut


def pg_immediate(ctx):
    subprocess.run(["runuser", "-u", "postgres", "--", PGBIN + "/pg_ctl", "-D",
                    ctx.stack.path("pg", "data"), "stop", "-m", "immediate", "-w"],
                   capture_output=True, timeout=60)
    sleep(ctx, 0.5, 2.0)
    ctx.stack.daemon("start", "postgres")


def pg_terminate(ctx):
    """Cut the order-writer's connection, several times, whenever it is
    in the middle of a batch."""
    n = 0
    end = time.time() + ctx.rng.uniform(1.0, 3.0)
    while time.time() < end:
        try:
            rows = ctx.stack.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE application_name = 'flashsale-order-writer'")
            n += int(rows[0][0])
        except Exception:   # noqa: BLE001 - psql may race the restart
            pass
        time.sleep(ctx.rng.uniform(0.05, 0.4))
    return "%d cut" % n


def reconciler_skew(ctx):
    """The reconciler's clock off by seconds (libfaketime) for a while:
    deadlines are on the Redis clock, so nothing may change."""
    offset = ctx.rng.choice((-30, -5, 5, 30))
    env = ctx.stack.env
    saved = {k: env.get(k) for k in ("LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_RESET")}
    env.update(LD_PRELOAD=FAKETIME_LIB, FAKETIME="%+ds" % offset, FAKETIME_DONT_RESET="1")
    try:
        ctx.stack.daemon("restart", "reconciler")
    finally:
        for k, v in saved.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
    sleep(ctx, 3.0, 6.0)
    ctx.stack.daemon("restart", "reconciler")
    return "%+ds" % offset


def kafka_bounce(ctx):
    """A broker killed and restarted: with three, the partition leaders
    move; with one, producers and consumers wait for it."""
    node = ctx.rng.choice(ctx.kafka_nodes())
    ctx.stack.daemon("kill", node)
    sleep(ctx, 1.0, 3.0)
    ctx.stack.daemon("start", node)
    return node


def kafka_quorum_loss(ctx):
    """Two of three nodes down: no quorum, no writes, for a while."""
    nodes = ctx.rng.sample(ctx.kafka_nodes(), 2)
    for n in nodes:
        ctx.stack.daemon("kill", n)
    sleep(ctx, 2.0, 5.0)
    for n in nodes:
        ctx.stack.daemon("start", n)
    return "+".join(nodes)


def nft(*args):
    subprocess.run(["nft"] + list(args), check=True, capture_output=True)


def net_loss(ctx):
    """Packets on loopback dropped at random (nftables; this kernel has no
    netem), in the seed's own network namespace only."""
    pct = ctx.rng.choice((5, 10, 20))
    nft("add", "table", "inet", "chaos")
    nft("add", "chain", "inet", "chaos", "in", "{ type filter hook input priority 0; }")
    nft("add", "rule", "inet", "chaos", "in", "numgen", "random", "mod", "100", "lt", str(pct),
        "drop")
    try:
        sleep(ctx, 2.0, 4.0)
    finally:
        nft("delete", "table", "inet", "chaos")
    return "%d%%" % pct


def net_slow(ctx):
    """Loopback squeezed to a few Mbit/s (tc tbf): queues and latency."""
    rate = ctx.rng.choice(("2mbit", "8mbit"))
    subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate, "burst",
                    "32kbit", "latency", "200ms"], check=True, capture_output=True)
    try:
        sleep(ctx, 2.0, 4.0)
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)
    return rate


def pg_disk_full(ctx):
    """The disk under PostgreSQL fills up, then space comes back."""
    fill = os.path.join(ctx.pg_tmpfs, "chaos-fill")
    with open(fill, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    try:
        sleep(ctx, 2.0, 4.0)
    finally:
        os.unlink(fill)


def outside_producer(ctx):
    """Someone else writes to the intents topic: duplicates and reordered
    copies of recent intents, garbage, keyless messages, and a CANCEL
    forged for another buyer's purchase."""
    boot = ctx.stack.env["FLASHSALE_KAFKA_BOOTSTRAP"]
    out = subprocess.run(["kcat", "-b", boot, "-C", "-t", "flashsale.intents", "-o", "-10",
                          "-e", "-q", "-f", "%p %k %S\n%s"], capture_output=True,
                         timeout=60).stdout
    msgs = []
    while out:
        head, _, rest = out.partition(b"\n")
        try:
            part, key, size = head.split(b" ")
            size = int(size)
        except ValueError:
            break
        msgs.append((part.decode(), key.decode(), rest[:size]))
        out = rest[size:]
    sent = 0
    for part, key, value in msgs[::-1] + msgs:     # reordered, then duplicated
        subprocess.run(["kcat", "-b", boot, "-P", "-t", "flashsale.intents", "-p", part,
                        "-k", key], input=value, capture_output=True, timeout=60)
        sent += 1
    for value, keyed in ((b"\xff garbage", True), (b"\x08\x01", False)):
        args = ["kcat", "-b", boot, "-P", "-t", "flashsale.intents", "-p", "0"]
        if keyed:
            args += ["-k", "garbage"]
        subprocess.run(args, input=value, capture_output=True, timeout=60)
        sent += 1
    return "%d messages" % sent


FAULTS = [
    Fault("kill_daemon", kill_daemon),
    Fault("kill_many", kill_many),
    Fault("pause_deductor", pause_deductor),
    Fault("redis_kill", redis_kill),
    Fault("redis_rollback", redis_rollback),
    Fault("redis_power_loss", redis_power_loss),
    Fault("pg_immediate", pg_immediate),
    Fault("pg_terminate", pg_terminate),
    Fault("reconciler_skew", reconciler_skew,
          needs=lambda ctx: os.path.exists(FAKETIME_LIB)),
    Fault("kafka_bounce", kafka_bounce, needs=lambda ctx: ctx.real_kafka()),
    Fault("kafka_quorum_loss", kafka_quorum_loss,
          needs=lambda ctx: len(ctx.kafka_nodes()) >= 3),
    Fault("net_loss", net_loss, needs=lambda ctx: ctx.netns and shutil.which("nft")),
    Fault("net_slow", net_slow, needs=lambda ctx: ctx.netns and shutil.which("tc")),
    Fault("pg_disk_full", pg_disk_full, needs=lambda ctx: ctx.pg_tmpfs is not None),
    Fault("outside_producer", outside_producer, needs=lambda ctx: shutil.which("kcat")),
]

NAMES = [f.name for f in FAULTS]
