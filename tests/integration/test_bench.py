"""bench/run keeps working: a smoke run at tiny sizes must produce every
stage's figures, the report, the JSON and the plots, with every invariant
held. Figures are never compared with thresholds here (benchmarks are not
timed tests); they must only exist and be positive.
"""

import json
import os
import subprocess
import sys
import tempfile

import pytest

from stack import build_dir, source_root

PNGS = ("throughput.png", "latency.png", "stock.png", "scaling.png")


@pytest.fixture(scope="module")
def smoke():
    out = tempfile.mkdtemp(prefix="fsb-smoke-", dir="/tmp")
    cmd = [sys.executable, os.path.join(source_root(), "bench", "run"), "--smoke",
           "--soldout-rounds", "3", "--no-setup", "--build", build_dir(), "--results", out]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=840)
    res_path = os.path.join(out, "results.json")
    res = json.load(open(res_path)) if os.path.exists(res_path) else {}
    yield p, res, out
    subprocess.run(["rm", "-rf", out])


def positive(v):
    return isinstance(v, (int, float)) and v > 0


def test_run_succeeds_with_invariants_held(smoke):
    p, res, _ = smoke
    assert p.returncode == 0, p.stdout[-6000:]
    assert res.get("invariants") == [], res.get("invariants")
    assert res.get("errors") == [], res.get("errors")


def test_accept_warmup_runs_each_on_a_sku_of_their_own(smoke):
    """Every wrk run sends the same buyers from the start: warm-up runs on
    one SKU met the per-user limit, and the deductor refused what the
    gateway had answered 202 (the accept stage's held == 202s check)."""
    _, res, _ = smoke
    runs = res["stages"]["accept"]["warmup_runs"]
    assert len(runs) >= 2, runs
    assert len({r["sku"] for r in runs}) == len(runs), runs


def test_every_broker_is_warmed_up_before_it_is_measured(smoke):
    """A fresh JVM broker spent 110-130 us of CPU per message until it had
    compiled its produce path, 10-20 us after: the accept stage measured
    the compiler (0.22x of the ceiling where a warm broker gave 0.33-0.48x).
    The stages' stack, when its broker is a process of its own, is warmed
    up first."""
    _, res, _ = smoke
    if res["machine"]["kafka"].startswith("mock"):
        pytest.skip("the Kafka mock has no JVM to warm up")
    warm = res.get("broker_warmups", {})
    assert "stages" in warm, warm
    for tag, w in warm.items():
        assert w["kafka_us_per_message"] and all(positive(c) for c in w["kafka_us_per_message"]), w


def test_every_stage_produced_a_figure(smoke):
    _, res, _ = smoke
    s = res["stages"]
    assert positive(s["accept"]["rps"]) and positive(s["accept"]["ceiling_rps"])
    assert positive(s["accept"]["accepted"])
    assert positive(s["soldout"]["rps"])
    # Each gateway run is compared with the ceilings measured next to it,
    # before and after, and its ratio is against their mean (a drifting
    # machine). The sold-out stage's rounds each have their own pair; the
    # stage reports the round of median ratio.
    rounds = s["soldout"]["rounds"]
    assert len(rounds) == 3, rounds
    tags = ["ceiling-1", "ceiling-2", "ceiling-2-r2", "ceiling-2-r3"]
    mid = sorted(range(3), key=lambda i: rounds[i]["ratio"])[1]
    assert s["soldout"]["rps"] == rounds[mid]["rps"]
    assert res["ratios"]["soldout_cpu_vs_ceiling"] == \
        sorted(r["cpu_ratio"] for r in rounds)[1]
    for stage, want in (("soldout", tags[mid:mid + 2]), ("accept", ["ceiling-2-r3", "ceiling-3"])):
        runs = s[stage]["ceiling_runs"]
        assert [c["tag"] for c in runs] == want and all(positive(c["rps"]) for c in runs)
        assert s[stage]["ceiling_rps"] == sum(c["rps"] for c in runs) / 2
        assert res["ratios"]["%s_vs_ceiling" % stage] == \
            round(s[stage]["rps"] / s[stage]["ceiling_rps"], 3)
    for run in ("hot", "spread"):
        assert positive(s["deduct"][run]["rate"])
        assert s["deduct"][run]["intents"] == res["settings"]["deduct_intents"]
    assert positive(s["deduct"]["evalsha_unpipelined"]["rps"])
    assert positive(s["deduct"]["evalsha_pipelined"]["rps"])
    assert positive(s["persist"]["rate"]) and positive(s["persist"]["copy_rate"])
    assert positive(s["persist"]["pgbench"]["tps"])
    sale = s["sale"]
    assert positive(sale["seconds_to_all_final"])
    for k in ("p50", "p99", "p999"):
        assert positive(sale["purchase_ms"][k])
    assert sale["stock"]["sold"] + sale["stock"]["held"] + sale["stock"]["remaining"] \
        == sale["stock"]["initial"]
    # Retries answered differently are reported by kind, and the kinds add up.
    assert sale["duplicates_sent"] > 0
    assert sum(sale["duplicate_mismatch_kinds"].values()) == sale["duplicate_mismatches"]
    grid = {(r["buyers"], r["skus"]) for r in s["scaling"]}
    assert grid == {(b, k) for b in res["settings"]["scale_buyers"]
                    for k in res["settings"]["scale_skus"]}
    for r in s["scaling"]:
        assert positive(r["seconds_to_all_final"]) and positive(r["peak_rss_server_mib"])
    for name, value in res["ratios"].items():
        assert positive(value), name


def test_report_json_and_plots_written(smoke):
    _, res, out = smoke
    report = open(os.path.join(out, "report.md")).read()
    assert "## Stage by stage" in report and "## Scaling" in report
    assert "Slowest pipeline stage" in report
    for png in PNGS:
        path = os.path.join(out, png)
        assert os.path.getsize(path) > 1000, png
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
    assert sorted(res["plots"]) == sorted(PNGS)
