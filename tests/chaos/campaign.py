#!/usr/bin/env python3
"""flashsale's fault campaign: one run is one seed. A small sale under load
(several SKUs, qty up to the limit, retries with the same request id, pays,
cancels, expiries) while faults drawn from the seed happen one after
another; then every component runs again, the pipeline drains, and the
checker compares the buyers' history with Redis and PostgreSQL.

  tests/chaos/campaign.py run --seed N [--kafka KIND] [--netns] [--pg-tmpfs] [--keep]
  tests/chaos/campaign.py batch --seeds 1-1000 [--jobs 2] [--out DIR] [run options]

run prints one line per fault and a verdict, and exits 1 on a violation
with the command that replays the seed. batch runs seeds as separate
processes (each with its own stack, ports and temp dir, so batches run side
by side) and writes DIR/seeds.tsv and DIR/summary.md: seed, faults,
figures, verdict. Needs a build (FLASHSALE_BUILD_DIR) and runs as root
(PostgreSQL, tmpfs, network namespaces).

--netns runs the seed in a network namespace of its own (unshare -n), which
adds the network faults; --pg-tmpfs puts PostgreSQL's data on a 48 MB tmpfs
of the seed's, which adds the full disk. Both are on by default where they
work (as root, with unshare and nft)."""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "deploy"))
sys.path.insert(0, HERE)

import faults  # noqa: E402
from check import check, drain  # noqa: E402
from stack import Stack, StackError  # noqa: E402
from workload import Workload  # noqa: E402


def say(msg):
    print("chaos: " + msg, flush=True)


def can_netns():
    return os.geteuid() == 0 and shutil.which("unshare") and shutil.which("nft") and \
        subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def replay_command(a):
    cmd = ["tests/chaos/campaign.py", "run", "--seed", str(a.seed)]
    if a.kafka:
        cmd += ["--kafka", a.kafka]
    if a.faults:
        cmd += ["--faults", a.faults]
    cmd += ["--netns" if a.netns else "--no-netns", "--pg-tmpfs" if a.pg_tmpfs else "--no-pg-tmpfs"]
    return " ".join(cmd)


def schedule(rng, ctx, seconds, only=None):
    """The seed's faults: 2 to 4 of those available here (of only, a
    comma-separated list of names, when given), at random times within the
    load, each run to its end before the next."""
    unknown = set(only.split(",")) - set(faults.NAMES) if only else set()
    if unknown:
        raise SystemExit("unknown faults: %s (faults.NAMES)" % ", ".join(sorted(unknown)))
    avail = [f for f in ctx.available() if not only or f.name in only.split(",")]
    if not avail:
        raise SystemExit("no fault of %s is available here" % only)
    picks = [rng.choice(avail) for _ in range(rng.randint(2, 4))]
    starts = sorted(rng.uniform(1.0, seconds - 1.0) for _ in picks)
    return list(zip(starts, picks))


def run_seed(a):
    rng = random.Random(a.seed)
    state = tempfile.mkdtemp(prefix="chaos-%d-" % a.seed, dir="/tmp")
    os.chmod(state, 0o755)
    mounted = None
    if a.pg_tmpfs:
        mounted = os.path.join(state, "pg")
        os.makedirs(mounted)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", mounted],
                       check=True)
    if a.netns:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = {
        # Short holds and a short repair quiesce keep a seed under a minute.
        "FLASHSALE_RECONCILER_REBUILD_QUIESCE_MS": "4000",
        "FLASHSALE_GATEWAY_MAX_CONNECTIONS_PER_IP": "100000",
    }
    if a.seed % 2:
        # The campaign's stocks are small (5-30 units): odd seeds lease
        # budget whatever its size, so that every fault meets leases too
        # (proto/README.md, "Leases"; without a draw, seeds stay as they were).
        env["FLASHSALE_GATEWAY_ADMISSION_LEASE_MIN_FREE"] = "0"
    st = Stack(state_dir=state, env=env, kafka=a.kafka)
    verdict, violations, stats, done = "error", [], {}, []
    t0 = time.time()
    try:
        st.start()
        skus = {}
        for i in range(rng.randint(2, 4)):
            sku = "c%d-%s" % (a.seed, "abcd"[i])
            stock, limit = rng.randint(5, 30), rng.randint(1, 3)
            st.create_promotion(sku, stock, limit, rng.randint(2, 4))
            skus[sku] = (stock, limit)
        seconds = rng.uniform(10.0, 16.0)
        wl = Workload(st, a.seed, skus, buyers=rng.randint(120, 260), seconds=seconds)
        ctx = faults.Context(st, rng, say, netns=a.netns, pg_tmpfs=mounted, workload=wl)
        plan = schedule(rng, ctx, seconds, a.faults)
        say("seed %d: skus %s, %d buyers over %.0fs, faults %s" % (
            a.seed, skus, wl.buyers, seconds,
            ", ".join("%s@%.1fs" % (f.name, at) for at, f in plan)))

        def run_faults():
            start = time.time()
            if any(f.name == "redis_rollback" for _, f in plan):
                time.sleep(0.5)
                ctx.snapshot_redis()
            for at, f in plan:
                time.sleep(max(0, start + at - time.time()))
                t = time.time()
                try:
                    what = f.apply(ctx)
                    done.append((f.name, what, round(t - start, 1), round(time.time() - t, 1)))
                    say("fault %s %s at %.1fs (%.1fs)" % (f.name, what or "", t - start,
                                                         time.time() - t))
                except Exception as e:  # noqa: BLE001 - a fault that failed is reported
                    done.append((f.name, "failed: %s" % e, round(t - start, 1), 0))
                    say("fault %s failed: %s" % (f.name, e))

        ft = threading.Thread(target=run_faults, daemon=True)
        ft.start()
        wl.run()
        ft.join()
        # Heal: every component running again (those running are kept).
        st.start()
        states = drain(st, wl)
        violations, stats = check(st, wl, states)
        wl.history.dump(os.path.join(state, "history.jsonl"))
        verdict = "ok" if not violations else "VIOLATION"
    except (StackError, OSError, subprocess.SubprocessError, AssertionError, KeyError) as e:
        violations = ["harness: %s: %s" % (type(e).__name__, e)]
        verdict = "error"
    finally:
        try:
            st.stop()
        except StackError as e:
            violations.append("stop: %s" % e)
        if mounted:
            subprocess.run(["umount", "-l", mounted], capture_output=True)
    result = {"seed": a.seed, "verdict": verdict, "seconds": round(time.time() - t0, 1),
              "faults": [{"name": n, "what": w, "at": at, "took": took}
                         for n, w, at, took in done],
              "stats": stats, "violations": violations, "state": state}
    if verdict == "ok" and not a.keep:
        shutil.rmtree(state, ignore_errors=True)
        result["state"] = None
    for line in violations:
        say("violation: " + line)
    say("seed %d: %s in %.0fs %s" % (a.seed, verdict, result["seconds"], json.dumps(stats)))
    if verdict != "ok":
        say("state kept in %s; replay: %s" % (state, replay_command(a)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f)
    return 0 if verdict == "ok" else 1


def cmd_run(a):
    if a.netns and os.environ.get("FLASHSALE_CHAOS_IN_NETNS") != "1":
        # Again, in a network namespace of its own: its loopback is the
        # seed's, so the network faults touch nothing else.
        env = dict(os.environ, FLASHSALE_CHAOS_IN_NETNS="1")
        return subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__)] +
                              sys.argv[1:], env=env).returncode
    return run_seed(a)


def parse_seeds(text):
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def cmd_batch(a):
    seeds = parse_seeds(a.seeds)
    os.makedirs(a.out, exist_ok=True)
    tsv = os.path.join(a.out, "seeds.tsv")
    done = set()
    if os.path.exists(tsv):      # resumable: seeds already judged are kept
        with open(tsv) as f:
            done = {int(line.split("\t")[0]) for line in f if line[:1].isdigit()}
    else:
        with open(tsv, "w") as f:
            f.write("seed\tverdict\tseconds\tfaults\tpurchases\tok\tfail\tunknown\tpaid\t"
                    "violations\n")
    todo = [s for s in seeds if s not in done]
    lock = threading.Lock()
    base = [sys.executable, os.path.abspath(__file__), "run"]
    if a.kafka:
        base += ["--kafka", a.kafka]
    if a.faults:
        base += ["--faults", a.faults]
    base += ["--netns" if a.netns else "--no-netns",
             "--pg-tmpfs" if a.pg_tmpfs else "--no-pg-tmpfs"]

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                seed = todo.pop(0)
            js = os.path.join(a.out, "seed-%d.json" % seed)
            log = os.path.join(a.out, "seed-%d.log" % seed)
            with open(log, "w") as out:
                subprocess.run(base + ["--seed", str(seed), "--json", js], stdout=out,
                               stderr=subprocess.STDOUT)
            try:
                r = json.load(open(js))
            except (OSError, ValueError):
                r = {"seed": seed, "verdict": "error", "seconds": 0, "faults": [], "stats": {},
                     "violations": ["no result; see %s" % log]}
            s = r["stats"]
            row = [seed, r["verdict"], r["seconds"],
                   ",".join(f["name"] for f in r["faults"]),
                   s.get("purchases", ""), s.get("ok", ""), s.get("fail", ""),
                   s.get("unknown", ""), s.get("paid", ""),
                   " | ".join(v.replace("\t", " ").replace("\n", " ")[:300]
                              for v in r["violations"])]
            with lock:
                with open(tsv, "a") as f:
                    f.write("\t".join(str(x) for x in row) + "\n")
                print("seed %d %s %.0fs %s" % (seed, r["verdict"], r["seconds"], row[3]),
                      flush=True)
            if r["verdict"] == "ok":
                os.unlink(log)

    ts = [threading.Thread(target=worker) for _ in range(a.jobs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return summarize(tsv, os.path.join(a.out, "summary.md"))


def summarize(tsv, md):
    rows = []
    with open(tsv) as f:
        next(f)
        for line in f:
            rows.append(line.rstrip("\n").split("\t"))
    by_fault, bad = {}, []
    for r in rows:
        for name in filter(None, r[3].split(",")):
            n = by_fault.setdefault(name, [0, 0])
            n[0] += 1
            n[1] += r[1] != "ok"
        if r[1] != "ok":
            bad.append(r)
    with open(md, "w") as f:
        f.write("# Fault campaign\n\n%d seeds, %d ok, %d not ok.\n\n" % (
            len(rows), sum(r[1] == "ok" for r in rows), len(bad)))
        f.write("| fault | seeds with it | of them not ok |\n|---|---|---|\n")
        for name in sorted(by_fault):
            f.write("| %s | %d | %d |\n" % (name, by_fault[name][0], by_fault[name][1]))
        if bad:
            f.write("\n| seed | verdict | faults | violations |\n|---|---|---|---|\n")
            for r in bad:
                f.write("| %s | %s | %s | %s |\n" % (r[0], r[1], r[3], r[9][:400]))
    print(open(md).read())
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "batch"):
        s = sub.add_parser(name)
        s.add_argument("--kafka", help="Kafka kind (deploy/stack.py KAFKA_KINDS)")
        s.add_argument("--faults", help="draw only from these faults, e.g. "
                       "redis_power_loss,kill_daemon (faults.NAMES)")
        s.add_argument("--netns", dest="netns", action="store_true", default=None)
        s.add_argument("--no-netns", dest="netns", action="store_false")
        s.add_argument("--pg-tmpfs", dest="pg_tmpfs", action="store_true", default=None)
        s.add_argument("--no-pg-tmpfs", dest="pg_tmpfs", action="store_false")
        if name == "run":
            s.add_argument("--seed", type=int, required=True)
            s.add_argument("--keep", action="store_true", help="keep the state dir of a pass")
            s.add_argument("--json", help="write the result here")
        else:
            s.add_argument("--seeds", required=True, help="e.g. 1-1000 or 3,7,9-12")
            s.add_argument("--jobs", type=int, default=2)
            s.add_argument("--out", default="chaos-results")
    a = p.parse_args()
    root = os.geteuid() == 0
    if a.netns is None:
        a.netns = bool(can_netns())
    if a.pg_tmpfs is None:
        a.pg_tmpfs = root
    sys.exit(cmd_run(a) if a.cmd == "run" else cmd_batch(a))


if __name__ == "__main__":
    main()
