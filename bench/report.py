"""The report of a bench/run: report.md and PNG plots (gnuplot) next to
results.json in the results directory. Reads only the results dict and the
files bench/run wrote, so that a report can be made again from a kept
results directory: python3 bench/report.py DIR.
"""

import csv
import json
import os
import subprocess
import sys

# What each ratio compares, in the order of the pipeline.
RATIOS = (
    ("accept_vs_ceiling", "accept", "gateway accept path (202 after Kafka ack)",
     "trivial libevent server answering a fixed 202"),
    ("soldout_vs_ceiling", "soldout", "gateway sold-out refusal",
     "the same HTTP ceiling"),
    ("slowloris_vs_calm", "slowloris", "gateway sold-out refusal under slowloris connections",
     "the same run without them"),
    ("deduct_hot_vs_evalsha", "deduct", "deductor, one hot SKU",
     "redis-benchmark EVALSHA deduct.lua, 1 intent per call, unpipelined"),
    ("deduct_hot_vs_evalsha_pipelined", "deduct", "deductor, one hot SKU",
     "the same EVALSHA, pipelined at the deductor's batch size"),
    ("deduct_hot_vs_pgbench", "deduct", "deductor, one hot SKU",
     "pgbench row-lock design (UPDATE stock + INSERT order, 32 clients)"),
    ("deduct_spread_vs_evalsha", "deduct", "deductor, spread over SKUs",
     "redis-benchmark EVALSHA, unpipelined"),
    ("deduct_spread_vs_pgbench", "deduct", "deductor, spread over SKUs",
     "pgbench row-lock design"),
    ("persist_vs_copy", "persist", "order-writer into PostgreSQL",
     "COPY of the same rows into the same tables"),
    ("persist_vs_pgbench", "persist", "order-writer into PostgreSQL",
     "pgbench row-lock design"),
)

TS_COLUMNS = ("t_s", "answers_per_s", "purchases_per_s", "purchase_p50_ms",
              "purchase_p99_ms", "sent", "accepted", "refused", "final")


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = round(v, 3) if abs(v) < 10 else round(v)
    if isinstance(v, (int, float)) and abs(v) >= 10000:
        return "{:,}".format(v) + unit
    return str(v) + unit


def figures(res, key):
    """(flashsale figure, baseline figure, unit) behind a ratio."""
    s = res.get("stages", {})
    acc, sold = s.get("accept") or {}, s.get("soldout") or {}
    d, p = s.get("deduct") or {}, s.get("persist") or {}
    hot, spr = d.get("hot") or {}, d.get("spread") or {}
    pgb = (p.get("pgbench") or {}).get("tps")
    unp = (d.get("evalsha_unpipelined") or {}).get("rps")
    pip = (d.get("evalsha_pipelined") or {}).get("rps")
    return {
        "accept_vs_ceiling": (acc.get("rps"), acc.get("ceiling_rps"), "req/s"),
        "soldout_vs_ceiling": (sold.get("rps"), sold.get("ceiling_rps"), "req/s"),
        "slowloris_vs_calm": ((s.get("slowloris") or {}).get("rps"),
                              (s.get("slowloris") or {}).get("calm_rps"), "req/s"),
        "deduct_hot_vs_evalsha": (hot.get("rate"), unp, "intents/s"),
        "deduct_hot_vs_evalsha_pipelined": (hot.get("rate"), pip, "intents/s"),
        "deduct_hot_vs_pgbench": (hot.get("rate"), pgb, "purchases/s"),
        "deduct_spread_vs_evalsha": (spr.get("rate"), unp, "intents/s"),
        "deduct_spread_vs_pgbench": (spr.get("rate"), pgb, "purchases/s"),
        "persist_vs_copy": (p.get("rate"), p.get("copy_rate"), "events/s"),
        "persist_vs_pgbench": (p.get("rate"), pgb, "events/s"),
    }.get(key, (None, None, ""))


def slowest(res):
    """The pipeline stage with the lowest sustained rate: it bounds how fast
    a spike's accepted purchases become orders."""
    s = res.get("stages", {})
    rates = {
        "gateway accept": (s.get("accept") or {}).get("rps"),
        "deductor (hot SKU)": ((s.get("deduct") or {}).get("hot") or {}).get("rate"),
        "order-writer": (s.get("persist") or {}).get("rate"),
    }
    rates = {k: v for k, v in rates.items() if v}
    if not rates:
        return None
    k = min(rates, key=rates.get)
    return k, rates[k]


def ratio_table(res):
    out = ["| stage | flashsale | baseline (same run) | ratio | target |",
           "|---|---|---|---|---|"]
    targets = res.get("targets", {})
    for key, _, what, base in RATIOS:
        r = res.get("ratios", {}).get(key)
        ours, theirs, unit = figures(res, key)
        t = targets.get(key)
        verdict = ""
        if t is not None and r is not None:
            verdict = ">= %sx %s" % (t, "met" if r >= t else "**not met**")
        out.append("| %s | %s %s | %s: %s %s | %s | %s |" % (
            what, fmt(ours), unit, base, fmt(theirs), unit,
            "%.2fx" % r if r is not None else "n/a", verdict))
    return out


def pct(lat, k):
    return fmt((lat or {}).get(k), " ms")


def write_series(out, res):
    """timeseries-sale.csv -> sale.dat (whitespace, NaN for gaps) for gnuplot."""
    src = os.path.join(out, "timeseries-sale.csv")
    if not os.path.exists(src):
        return None
    dat = os.path.join(out, "sale.dat")
    with open(src) as f, open(dat, "w") as g:
        g.write("# " + " ".join(TS_COLUMNS) + "\n")
        for row in csv.DictReader(f):
            g.write(" ".join((row.get(c) or "NaN") for c in TS_COLUMNS) + "\n")
    return dat


def write_scaling(out, rows):
    """scaling.dat: one gnuplot data block per SKU count."""
    dat = os.path.join(out, "scaling.dat")
    by_skus = {}
    for r in rows:
        by_skus.setdefault(r["skus"], []).append(r)
    with open(dat, "w") as g:
        for skus in sorted(by_skus):
            g.write("# skus=%d: buyers seconds_to_all_final server_peak_rss_mib"
                    " loadgen_peak_rss_mib\n" % skus)
            for r in sorted(by_skus[skus], key=lambda r: r["buyers"]):
                g.write("%d %s %s %s\n" % (r["buyers"], r.get("seconds_to_all_final") or "NaN",
                                           r.get("peak_rss_server_mib") or "NaN",
                                           (r.get("peak_rss_mib") or {}).get("loadgen (client)",
                                                                             "NaN")))
            g.write("\n\n")
    return dat, sorted(by_skus)


def gnuplot(out, script):
    p = subprocess.run(["gnuplot"], input=script, text=True, cwd=out,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        print("report: gnuplot failed: %s" % p.stderr[-2000:], file=sys.stderr)
    return p.returncode == 0


def plots(out, res):
    made = []
    term = "set terminal pngcairo size 900,480 font ',10'\nset grid\n"
    if write_series(out, res):
        ok = gnuplot(out, term + """
set output 'throughput.png'
set title 'Whole sale: answers and purchase answers per second'
set xlabel 'seconds since the first request'; set ylabel 'per second'
plot 'sale.dat' using 1:2 with lines lw 2 title 'HTTP answers/s', \\
     '' using 1:3 with lines lw 2 title 'purchase answers/s'
set output 'latency.png'
set title 'Whole sale: purchase latency from scheduled start (answers in each interval)'
set ylabel 'ms'
plot 'sale.dat' using 1:4 with lines lw 2 title 'p50', '' using 1:5 with lines lw 2 title 'p99'
""")
        if ok:
            made += ["throughput.png", "latency.png"]
    if os.path.exists(os.path.join(out, "stock-sale.dat")):
        ok = gnuplot(out, term + """
set output 'stock.png'
set title 'Whole sale: units by state over time (Redis, sampled every 50 ms)'
set xlabel 'seconds since the load generator started'; set ylabel 'units'
plot 'stock-sale.dat' using 1:2 with lines lw 2 title 'remaining', \\
     '' using 1:3 with lines lw 2 title 'held (awaiting payment)', \\
     '' using 1:4 with lines lw 2 title 'sold (paid)'
""")
        if ok:
            made.append("stock.png")
    rows = (res.get("stages") or {}).get("scaling") or []
    if rows:
        _, sku_counts = write_scaling(out, rows)
        time_plot = ", ".join("'scaling.dat' index %d using 1:2 with linespoints lw 2 "
                              "title '%d SKUs'" % (i, s) for i, s in enumerate(sku_counts))
        mem_plot = ", ".join("'scaling.dat' index %d using 1:3 with linespoints lw 2 "
                             "title 'servers, %d SKUs'" % (i, s)
                             for i, s in enumerate(sku_counts))
        ok = gnuplot(out, """set terminal pngcairo size 900,800 font ',10'
set grid
set output 'scaling.png'
set multiplot layout 2,1
set logscale x
set xlabel 'buyers'
set title 'Whole sale: seconds from the first request to every buyer final'
set ylabel 'seconds'
plot %s
set title 'Peak resident memory, sum over the stack''s processes'
set ylabel 'MiB'
plot %s, 'scaling.dat' index 0 using 1:4 with linespoints dt 2 title 'load generator'
unset multiplot
""" % (time_plot, mem_plot))
        if ok:
            made.append("scaling.png")
    return made


def broker_warmup_lines(res):
    """How each stack's broker was warmed up before it was measured."""
    w = res.get("broker_warmups") or {}
    if not w:
        return []
    return ["- A fresh broker compiles its produce path under its first load; the broker "
            "of the stages' stack first took small produce requests on a scratch topic "
            "(chunks of 40,000 messages). Its CPU per message, chunk by chunk: " + "; ".join(
                "%s %s us (%s s)" % (tag, ", ".join("%s" % c for c in v["kafka_us_per_message"]),
                                     v["seconds"]) for tag, v in sorted(w.items())) + "."]


def markdown(res, made):
    m = res.get("machine", {})
    s = res.get("stages", {})
    L = ["# flashsale benchmark report", "",
         "Command: `%s`  " % res.get("command", "bench/run"),
         "Machine: %s cores (%s), %s GiB, Linux %s; %s; %s  " % (
             m.get("cores"), m.get("cpu"), m.get("memory_gib"), m.get("kernel"),
             m.get("redis"), m.get("postgres")),
         "Run: %s to %s" % (res.get("started"), res.get("finished")), ""]
    bad = res.get("invariants", [])
    errs = res.get("errors", [])
    L.append("**Result: %s.**" % ("every invariant held, every stage produced its figures"
                                  if not bad and not errs else
                                  "FAILED (%d invariant violations, %d stage errors; see below)"
                                  % (len(bad), len(errs))))
    L += ["", "## Stage by stage, against baselines measured in the same run", ""]
    L += ratio_table(res)
    sl = slowest(res)
    if sl:
        L += ["", "Slowest pipeline stage in this run: **%s** at %s per second." % (
            sl[0], fmt(sl[1]))]

    acc = s.get("accept")
    if acc:
        st = acc.get("settings", {})
        # Before the tenth session one pair of ceilings served both stages.
        own_runs = (s.get("soldout") or {}).get("ceiling_runs")
        sold_runs = own_runs or acc.get("ceiling_runs", [])
        L += ["", "### 1-2. HTTP front door", "",
              "wrk, %d thread(s), %d keep-alive connections, %d s per run, the same Lua "
              "script (a distinct purchase per request) against both servers. %s" % (
                  st.get("threads", 0), st.get("connections", 0), st.get("seconds", 0),
                  ("Each gateway run is compared with the mean of the ceiling measured "
                   "before and after it: %s req/s around the sold-out run, %s req/s "
                   "around the accept run (the first before its warm-up)." % (
                       " and ".join(fmt(c.get("rps")) for c in sold_runs),
                       " and ".join(fmt(c.get("rps")) for c in acc.get("ceiling_runs", []))))
                  if own_runs else
                  "The ceiling was measured before and after the gateway runs: %s req/s." %
                  " and ".join(fmt(c.get("rps")) for c in sold_runs)),
              "The accept stage runs with the deductor and order-writer stopped, so that "
              "it measures the front door (gateway and Kafka acknowledgement) rather than "
              "the two cores shared with Redis work; they drain its %s intents afterwards "
              "and the run checks every one was held." % fmt(acc.get("accepted")),
              "Answers by status: accept %s, sold out %s." % (
                  acc.get("wrk", {}).get("status"),
                  (s.get("soldout") or {}).get("wrk", {}).get("status"))]
        for name, w in (("accept", acc.get("wrk", {})),
                        ("sold out", (s.get("soldout") or {}).get("wrk", {}))):
            cpu = w.get("cpu_us_per_request")
            if cpu:
                L += ["", "CPU per request, %s (us, by process): %s." % (
                    name, ", ".join("%s %s" % kv for kv in
                                    sorted(cpu.items(), key=lambda kv: -kv[1])))]
            rw = w.get("redis_per_request")
            if rw:
                L += ["", "Redis work per request, %s: %s commands (scripts' included), "
                      "%s bytes of AOF (counts, not times: they compare builds "
                      "whatever the machine does)." % (
                          name, fmt(rw.get("commands")),
                          fmt(rw.get("aof_bytes")) if rw.get("aof_bytes") is not None
                          else "- (rewritten meanwhile)")]
        sold_cpu = [c.get("cpu_us_per_request", {}).get("ceiling") for c in sold_runs]
        ceil_cpu = [c.get("cpu_us_per_request", {}).get("ceiling")
                    for c in acc.get("ceiling_runs", [])]
        if all(sold_cpu) and sold_cpu:
            L += ["", "CPU per request of the HTTP ceiling: %s us; over the gateway's per "
                  "sold-out refusal: %sx (the sold-out ratio in CPU, steadier than rates "
                  "on a shared machine)." % (
                      " and ".join(fmt(c) for c in sold_cpu),
                      fmt(res.get("ratios", {}).get("soldout_cpu_vs_ceiling")))]
        rounds = (s.get("soldout") or {}).get("rounds") or []
        if len(rounds) > 1:
            L += ["", "Sold-out rounds (each a sold-out run and the ceiling after it, against "
                  "the ceilings on either side), rate ratio and CPU ratio: %s. The table has "
                  "the round of median rate ratio; the CPU ratio above is the rounds' "
                  "median." % "; ".join(
                      "%s req/s, %sx, %sx" % (fmt(r.get("rps")), fmt(r.get("ratio")),
                                              fmt(r.get("cpu_ratio"))) for r in rounds)]
        if all(ceil_cpu) and ceil_cpu and res.get("ratios", {}).get("accept_cpu_vs_ceiling"):
            L += ["", "The ceiling's CPU per request around the accept run (%s us) over the "
                  "gateway's per accepted purchase: %sx (what the gateway alone would reach "
                  "with Redis and the broker on other cores)." % (
                      " and ".join(fmt(c) for c in ceil_cpu),
                      fmt(res["ratios"]["accept_cpu_vs_ceiling"]))]
        if acc.get("warmup_s"):
            curve = ", ".join("%s" % w.get("cpu_us_per_request", {}).get("kafka", "-")
                              for w in acc.get("warmup_runs", []))
            L += ["", "The accept run follows %s s of untimed accept-path load that warms "
                  "the gateway up, and the broker to the gateway's requests%s."
                  % (acc["warmup_s"],
                     "; the broker's CPU per intent over its runs: %s us" % curve
                     if curve else "")]
        op = s.get("accept_open")
        if op:
            L += ["", "Open loop (flashsale-loadgen, buyers arriving at %s/s = %sx the "
                  "ceiling whatever the answers, %s connections): %s of %s accepted, "
                  "%s/s; purchase from scheduled arrival p50 %s, p99 %s, p99.9 %s; "
                  "send to answer p99 %s." % (
                      fmt(op.get("offered_rps")), op.get("offered_vs_ceiling"),
                      op.get("connections"), fmt(op.get("accepted")), fmt(op.get("buyers")),
                      fmt(op.get("achieved_rps")), pct(op.get("purchase_ms"), "p50"),
                      pct(op.get("purchase_ms"), "p99"), pct(op.get("purchase_ms"), "p999"),
                      pct(op.get("request_ms"), "p99"))]
    d = s.get("deduct")
    if d:
        L += ["", "### 3. Deductor", "",
              "The intents topic is pre-filled with the deductor stopped "
              "(flashsale-bench-fill, the production producer), then the deductor "
              "starts. Its rate is the number of ledger events over the span of their "
              "Kafka timestamps (plus one mean batch), so the consumer group's join is "
              "not counted.",
              "",
              "| run | intents | seconds | intents/s | mean batch |", "|---|---|---|---|---|",
              "| one hot SKU | %s | %s | %s | %s ms |" % (
                  fmt(d["hot"]["intents"]), d["hot"]["seconds"], fmt(d["hot"]["rate"]),
                  d["hot"].get("mean_batch_ms")),
              "| %d SKUs | %s | %s | %s | %s ms |" % (
                  d.get("skus", 0), fmt(d["spread"]["intents"]), d["spread"]["seconds"],
                  fmt(d["spread"]["rate"]), d["spread"].get("mean_batch_ms")),
              "| redis-benchmark EVALSHA, 1 connection, unpipelined | %s | | %s | |" % (
                  fmt(d["evalsha_unpipelined"]["calls"]), fmt(d["evalsha_unpipelined"]["rps"])),
              "| redis-benchmark EVALSHA, 1 connection, pipeline %d | %s | | %s | |" % (
                  d["evalsha_pipelined"]["pipeline"], fmt(d["evalsha_pipelined"]["calls"]),
                  fmt(d["evalsha_pipelined"]["rps"]))]
    p = s.get("persist")
    if p:
        pg = p.get("pgbench") or {}
        L += ["", "### 4. Order-writer", "",
              "The order-writer, stopped while stage 3 ran, drains its %s ledger "
              "events into PostgreSQL (timed by polling its metrics every 20 ms, from the "
              "last poll that saw nothing applied): %s s, %s events/s. COPY of the rows it "
              "wrote (%s) into copies of the same tables with the same indexes, in one "
              "transaction: %s s. pgbench, %s clients, %s s: %s purchases/s." % (
                  fmt(p.get("events")), p.get("seconds"), fmt(p.get("rate")),
                  (p.get("copy") or {}).get("rows"), (p.get("copy") or {}).get("seconds"),
                  pg.get("clients"), pg.get("seconds"), fmt(pg.get("tps")))]
    sale = s.get("sale")
    if sale:
        L += ["", "### 5. Whole sale", "",
              "%s buyers over %d SKU(s), %s units per SKU; every buyer polls until its "
              "purchase is final, half of the winners pay and the rest let the hold expire "
              "(%s s), so the reconciler returns those units." % (
                  fmt(sale["buyers"]), sale["skus"], fmt(sale["stock_per_sku"]),
                  res.get("settings", {}).get("hold_seconds")),
              "",
              "- First request to every buyer final: **%s s**%s" % (
                  sale.get("seconds_to_all_final"),
                  " (target: 2 x buyers / this run's HTTP ceiling = %s s)"
                  % sale["all_final_target_s"] if sale.get("all_final_target_s") else ""),
              "- Purchase call, from each buyer's scheduled arrival: p50 %s, p99 %s, "
              "p99.9 %s" % (pct(sale.get("purchase_ms"), "p50"),
                            pct(sale.get("purchase_ms"), "p99"),
                            pct(sale.get("purchase_ms"), "p999")),
              "- Every request, send to answer: p50 %s, p99 %s, p99.9 %s" % (
                  pct(sale.get("request_ms"), "p50"), pct(sale.get("request_ms"), "p99"),
                  pct(sale.get("request_ms"), "p999")),
              "- Funnel: %s" % json.dumps(sale.get("funnel")),
              "- Accepted %s, refused at the gateway %s; final states %s" % (
                  fmt(sale.get("accepted")), fmt(sale.get("refused")),
                  sale.get("final_states")),
              "- Retries with the same request id: %s sent, %s answered differently from "
              "the first send %s" % (fmt(sale.get("duplicates_sent")),
                                     fmt(sale.get("duplicate_mismatches")),
                                     sale.get("duplicate_mismatch_kinds") or ""),
              "- Stock at the end: %s" % sale.get("stock"),
              "- Peak memory (MiB): %s" % sale.get("peak_rss_mib"),
              "- Cores busy, by process, over the sale's %s s (CPU seconds / wall seconds): %s"
              % (sale.get("wall_seconds"), sale.get("cores_busy")), ""]
        for png in ("throughput.png", "latency.png", "stock.png"):
            if png in made:
                L.append("![%s](%s)" % (png[:-4], png))
    rows = s.get("scaling")
    if rows:
        L += ["", "## Scaling", "",
              "| buyers | SKUs | units/SKU | accepted | first request to all final | "
              "purchase p99 | peak RSS, servers | gateway | deductor | broker | Redis | "
              "PostgreSQL (largest) | load generator |", "|" + "---|" * 13]
        for r in rows:
            mem = r.get("peak_rss_mib") or {}
            L.append("| %s | %s | %s | %s | %s s | %s | %s MiB | %s | %s | %s | %s | %s | %s |" % (
                fmt(r["buyers"]), fmt(r["skus"]), fmt(r["stock_per_sku"]), fmt(r.get("accepted")),
                r.get("seconds_to_all_final"), pct(r.get("purchase_ms"), "p99"),
                r.get("peak_rss_server_mib"), mem.get("gateway"), mem.get("deductor"),
                mem.get("kafka"), mem.get("redis"), mem.get("postgres"),
                mem.get("loadgen (client)")))
        if "scaling.png" in made:
            L += ["", "![scaling](scaling.png)"]
    L += ["", "## Invariants", ""]
    if bad:
        L += ["- **%s**: %s" % (v["stage"], v["violation"]) for v in bad]
    else:
        L.append("All held: `flashsale-reconciler audit` was clean after every stack "
                 "(per SKU sold + held + remaining == initial, remaining >= 0, Redis equals "
                 "PostgreSQL once drained, one order per request id, nobody over the limit, "
                 "no hold past its deadline); every buyer with a 202 saw a final state; "
                 "the accept and deductor stages held exactly one unit per accepted intent.")
    if errs:
        L += ["", "## Stage errors", ""]
        L += ["- **%s**: `%s`" % (e["stage"], e["error"].splitlines()[-1][:300] if e["error"]
                                  else "") for e in errs]
    L += ["", "## How it is measured", "",
          "- Ratios, not absolute figures, are the result: the machine is shared. Each "
          "gateway run has its ceiling measured before and after it, and the "
          "slowloris run its calm run right before; the deductor and order-writer baselines "
          "run minutes from the stages they are compared with.",
          "- Latency of the whole sale is counted from each buyer's *scheduled* arrival "
          "(the spike's ramp), not from when the load generator got a connection to send "
          "it, so a slow server cannot hide queueing (coordinated omission). wrk's own "
          "latencies in stages 1-2 are closed-loop and are not reported as latency.",
          "- The load tools run on the same cores as the servers; so do the baselines.",
          ] + broker_warmup_lines(res) + [
          "- Raw outputs: wrk-*.txt, loadgen-*.json, timeseries-sale.csv, pgbench.txt, "
          "audit-*.txt and every daemon's log under logs/.", ""]
    return "\n".join(L)


def write(out, res):
    made = plots(out, res)
    res["plots"] = made
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown(res, made))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    d = sys.argv[1]
    write(d, json.load(open(os.path.join(d, "results.json"))))
