"""The buyers of one chaos seed, and their history.

Buyers (threads) race for a few SKUs with qty up to the limit, retry with
the same request id, pay, cancel or let holds expire, while faults happen.
Every call is one history entry, in the manner of a Jepsen history: what was
asked, what came back, and what that tells about the system's state:

  ok       the gateway took it (202: the intent is on Kafka)
  fail     definitely not taken: a refusal, 503 queue_unavailable or busy
  unknown  may or may not have been taken: 503 outcome_unknown, a timeout,
           a connection cut

The checker (check.py) judges the system against this history."""
import json
import random
import socket
import threading
import time
import urllib.error

FINAL = {"paid", "cancelled", "expired", "sold_out", "limit_reached", "not_started",
         "ended", "unknown_sku", "qty_invalid"}
REFUSALS = FINAL - {"paid", "cancelled", "expired"}


def classify(op, status, body):
    """ok | fail | unknown for one answer (None status: no answer)."""
    if status is None:
        return "unknown"
    if status == 202:
        return "ok"
    if status == 503:
        err = body.get("error") if isinstance(body, dict) else None
        return "unknown" if err == "outcome_unknown" else "fail"
    return "fail"


class History:
    def __init__(self):
        self.lock = threading.Lock()
        self.entries = []

    def add(self, **e):
        with self.lock:
            self.entries.append(e)

    def dump(self, path):
        with open(path, "w") as f:
            for e in self.entries:
                f.write(json.dumps(e, sort_keys=True) + "\n")


class Workload:
    """seed: the rng's; skus: {sku: (stock, limit)}; buyers: how many
    purchase attempts in all, by `threads` threads over `seconds`."""

    def __init__(self, stack, seed, skus, buyers=240, threads=12, seconds=12.0,
                 users=40, history=None):
        self.stack = stack
        self.seed = seed
        self.skus = skus
        self.buyers = buyers
        self.threads = threads
        self.seconds = seconds
        self.users = ["s%d-u%d" % (seed, i) for i in range(users)]
        self.history = history or History()
        self.next_id = 0
        self.lock = threading.Lock()
        self.accepted = {}   # (user, client id) -> sku, qty of a purchase ever answered 202

    def call(self, op, method, path, user, body=None, **fields):
        t0 = time.time()
        try:
            status, resp = self.stack.http(method, path, body, user=user, timeout=5)
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
            status, resp = None, {"error": type(e).__name__}
        outcome = classify(op, status, resp)
        self.history.add(op=op, user=user, status=status,
                         error=resp.get("error") if isinstance(resp, dict) else None,
                         state=resp.get("state") if isinstance(resp, dict) else None,
                         outcome=outcome, t0=round(t0, 3), t1=round(time.time(), 3), **fields)
        return status, resp, outcome

    def buyer(self, rng, deadline):
        with self.lock:
            n = self.next_id
            self.next_id += 1
        user = rng.choice(self.users)
        sku = rng.choice(sorted(self.skus))
        stock, limit = self.skus[sku]
        qty = rng.randint(1, limit + 1 if rng.random() < 0.1 else limit)
        rid = "s%d-r%d" % (self.seed, n)
        body = {"sku": sku, "qty": qty, "request_id": rid}
        tries = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
        took = False
        for _ in range(tries):
            status, resp, outcome = self.call("purchase", "POST", "/v1/purchases", user, body,
                                              rid=rid, sku=sku, qty=qty)
            if outcome == "ok":
                took = True
                with self.lock:
                    self.accepted[(user, rid)] = (sku, qty)
            if outcome != "unknown" and rng.random() < 0.7:
                break
            time.sleep(rng.uniform(0.05, 0.4))
        if not took:
            return
        # Wait for the hold, then pay, cancel, or let it expire.
        state = None
        while time.time() < deadline + 3:
            status, resp, _ = self.call("get", "GET", "/v1/purchases/" + rid, user, rid=rid,
                                        sku=sku)
            state = resp.get("state") if status == 200 and isinstance(resp, dict) else None
            if state not in (None, "queued"):
                break
            time.sleep(0.1)
        if state != "reserved":
            return
        r = rng.random()
        if r < 0.55:
            action = "pay"
        elif r < 0.7:
            action = "cancel"
        else:
            return       # the hold expires: the reconciler returns the units
        time.sleep(rng.uniform(0, 1.5))
        for _ in range(1 + (rng.random() < 0.3)):
            self.call(action, "POST", "/v1/purchases/%s/%s" % (rid, action), user, rid=rid,
                      sku=sku)

    def run(self):
        """Run the buyers; returns when every thread is done."""
        deadline = time.time() + self.seconds
        per_thread = [self.buyers // self.threads + (i < self.buyers % self.threads)
                      for i in range(self.threads)]

        def worker(i):
            rng = random.Random("%d-%d" % (self.seed, i))
            gap = self.seconds / max(1, per_thread[i])
            for _ in range(per_thread[i]):
                start = time.time()
                self.buyer(rng, deadline)
                time.sleep(max(0, gap * rng.uniform(0.2, 1.0) - (time.time() - start)))

        ts = [threading.Thread(target=worker, args=(i,), daemon=True)
              for i in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
