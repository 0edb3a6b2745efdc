"""The checker of a chaos seed: after the faults have healed and the pipeline
drained, the history of what the buyers were told against what Redis and
PostgreSQL hold. Returns a list of violations (empty: the seed passed)."""
import subprocess
import time
from collections import defaultdict

from stack import scoped_id
from workload import FINAL

TERMINAL_ORDER = {"paid", "cancelled", "expired"}


def promo(stack, sku):
    flat = stack.redis("HGETALL", "fs:promo:" + sku).split("\n")
    return {k: int(v) for k, v in zip(flat[0::2], flat[1::2]) if v.lstrip("-").isdigit()}


def drain(stack, workload, timeout=150):
    """Wait until no unit is held and every purchase the gateway took has a
    final state its buyer can read. Returns the states seen."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(promo(stack, sku).get("held", 1) == 0 for sku in workload.skus):
            break
        time.sleep(0.5)
    states = {}
    pending = dict(workload.accepted)
    while pending and time.time() < deadline:
        for (user, rid) in list(pending):
            try:
                code, body = stack.http("GET", "/v1/purchases/" + rid, user=user, timeout=5)
            except OSError:
                continue
            state = body.get("state") if code == 200 and isinstance(body, dict) else None
            if state in FINAL:
                states[(user, rid)] = state
                del pending[(user, rid)]
        if pending:
            time.sleep(0.5)
    for key in pending:
        states[key] = None
    return states


def check(stack, workload, states, wait_drain=90):
    hist = workload.history.entries
    skus = workload.skus
    v = []

    # The audit: Redis equals PostgreSQL, counters add up, nothing stuck.
    r = subprocess.run([stack.bin("flashsale-reconciler"), "audit", "--wait-drain",
                        str(wait_drain)], env=stack.env, capture_output=True, text=True,
                       timeout=wait_drain + 120)
    if r.returncode != 0 or "verdict=ok" not in r.stdout + r.stderr:
        v.append("audit: exit %d: %s" % (r.returncode, (r.stdout + r.stderr)[-1500:]))

    sku_list = ",".join("'%s'" % s for s in skus)
    orders = stack.psql("SELECT request_id, sku, user_id, qty, state FROM orders "
                        "WHERE sku IN (%s)" % sku_list)
    refusals = stack.psql("SELECT request_id, sku, user_id, reason FROM refusals "
                          "WHERE sku IN (%s)" % sku_list)
    events = stack.psql("SELECT request_id, kind FROM ledger_events WHERE sku IN (%s)" % sku_list)
    by_order = defaultdict(list)
    for rid, sku, user, qty, state in orders:
        by_order[rid].append((sku, user, int(qty), state))
    refused = {row[0] for row in refusals}
    kinds = defaultdict(list)
    for rid, kind in events:
        kinds[rid].append(kind)

    # 1. Counters of every SKU.
    for sku, (stock, limit) in skus.items():
        p = promo(stack, sku)
        if p.get("remaining", -1) < 0:
            v.append("%s: remaining %s < 0" % (sku, p.get("remaining")))
        total = p.get("remaining", 0) + p.get("held", 0) + p.get("sold", 0)
        if total != stock:
            v.append("%s: remaining+held+sold = %d != initial %d (%s)" % (sku, total, stock, p))
        got = sum(q for rows in by_order.values() for (s, _, q, st) in rows
                  if s == sku and st in ("held", "paid"))
        if got != p.get("held", 0) + p.get("sold", 0):
            v.append("%s: orders hold %d units, Redis held+sold %d" % (
                sku, got, p.get("held", 0) + p.get("sold", 0)))

    # 2. One order per request id; no user over the limit.
    per_user = defaultdict(int)
    for rid, rows in by_order.items():
        if len(rows) > 1:
            v.append("request %s has %d orders" % (rid, len(rows)))
        for sku, user, qty, st in rows:
            if st in ("held", "paid"):
                per_user[(sku, user)] += qty
            if "reserved" not in kinds[rid]:
                v.append("order %s without a deduction in the ledger" % rid)
    for (sku, user), n in per_user.items():
        if n > skus[sku][1]:
            v.append("%s holds %d of %s, limit %d" % (user, n, sku, skus[sku][1]))
    for rid, ks in kinds.items():
        if "reserved" in ks and rid not in by_order:
            v.append("deduction %s without an order once drained" % rid)

    # 3. The history: what each buyer was told.
    told = defaultdict(list)
    for e in hist:
        if e["op"] == "purchase":
            told[(e["user"], e["rid"])].append(e)
    n_ok = n_fail = n_unknown = 0
    for (user, rid), es in told.items():
        internal = scoped_id(user, rid)
        outcomes = {e["outcome"] for e in es}
        rows = by_order.get(internal, [])
        applied = kinds.get(internal, [])
        if "ok" in outcomes:
            n_ok += 1
            state = states.get((user, rid))
            if state is None:
                v.append("%s/%s: answered 202, never reached a final state" % (user, rid))
            finals = [st for (_, _, _, st) in rows if st in TERMINAL_ORDER]
            if len(finals) + (internal in refused) != 1:
                v.append("%s/%s: answered 202, final states: orders %s refused %s" % (
                    user, rid, [r[3] for r in rows], internal in refused))
        elif outcomes == {"fail"}:
            n_fail += 1
            if rows or applied or internal in refused:
                v.append("%s/%s: refused at the door (%s) yet applied: %s %s" % (
                    user, rid, sorted({e["error"] or e["status"] for e in es}, key=str),
                    applied, rows))
        else:
            n_unknown += 1
            if applied.count("reserved") > 1 or len(rows) > 1:
                v.append("%s/%s: unknown outcome applied twice: %s" % (user, rid, applied))
            if rows and rows[0][3] not in TERMINAL_ORDER:
                v.append("%s/%s: unknown outcome left %s" % (user, rid, rows[0][3]))
    stats = {"purchases": len(told), "ok": n_ok, "fail": n_fail, "unknown": n_unknown,
             "orders": len(by_order), "refusals": len(refused),
             "paid": sum(1 for rows in by_order.values() for r in rows if r[3] == "paid")}
    return v, stats
