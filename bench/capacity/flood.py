#!/usr/bin/python3
"""Fills a sirius-manager with commands that wait: POST /api/commands arrays of --batch `sleep`
commands for --agent (an agent that is connected but busy, so every one of them stays queued),
over --conns keep-alive connections, 429/503 retried with the same ids. Every --every seconds
it samples GET /api/status and the manager's RSS. Stops at --n accepted, when the RSS passes
--rss-limit-mb, after --max-seconds, or when nothing was accepted for --stall-seconds; prints
progress lines on stderr and one JSON summary on stdout (stop reason included).
"""
import argparse
import http.client
import json
import sys
import threading
import time


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.next_batch = 0
        self.accepted = 0
        self.refused = {}
        self.errors = 0
        self.stop = False


def submitter(a, st):
    conn = None
    while True:
        with st.lock:
            if st.stop or st.next_batch * a.batch >= a.n:
                return
            b = st.next_batch
            st.next_batch += 1
        lo = b * a.batch
        hi = min(a.n, lo + a.batch)
        body = json.dumps([{"id": f"{a.prefix}-{i}", "type": "sleep", "agent_id": a.agent,
                            "params": {"seconds": "3600"}, "timeout_seconds": 7200}
                           for i in range(lo, hi)]).encode()
        while True:
            if st.stop:
                return
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=60)
                conn.request("POST", "/api/commands", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
            except (OSError, http.client.HTTPException):
                conn = None
                with st.lock:
                    st.errors += 1
                time.sleep(0.2)
                continue
            if r.status == 202:
                with st.lock:
                    st.accepted += hi - lo
                break
            with st.lock:
                st.refused[r.status] = st.refused.get(r.status, 0) + 1
            time.sleep(0.05)


def status(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/api/status")
        return json.loads(c.getresponse().read()).get("commands", {})
    except (OSError, ValueError, http.client.HTTPException):
        return {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True, help="admin API port")
    ap.add_argument("--pid", type=int, required=True, help="manager pid (RSS)")
    ap.add_argument("--agent", required=True)
    ap.add_argument("--n", type=int, default=1000000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--prefix", default="cap")
    ap.add_argument("--rss-limit-mb", type=float, default=2048)
    ap.add_argument("--max-seconds", type=float, default=240)
    ap.add_argument("--stall-seconds", type=float, default=20)
    ap.add_argument("--every", type=float, default=5)
    a = ap.parse_args()
    st = State()
    ths = [threading.Thread(target=submitter, args=(a, st), daemon=True) for _ in range(a.conns)]
    t0 = time.time()
    for t in ths:
        t.start()
    reason = "target reached"
    samples = []
    last_acc, last_change = 0, t0
    while True:
        time.sleep(a.every)
        now = time.time()
        c = status(a.port)
        r = rss_kb(a.pid)
        with st.lock:
            acc = st.accepted
        active = c.get("queued", 0) + c.get("parked", 0) + c.get("inflight", 0)
        s = {"t": round(now - t0, 1), "accepted": acc, "active": active, "rss_kb": r,
             "pending_writes": c.get("pending_writes", 0)}
        samples.append(s)
        print("flood " + " ".join(f"{k}={v}" for k, v in s.items()), file=sys.stderr, flush=True)
        if acc != last_acc:
            last_acc, last_change = acc, now
        if acc >= a.n:
            break
        if r > a.rss_limit_mb * 1024:
            reason = f"manager RSS passed {a.rss_limit_mb:.0f} MB"
            break
        if now - t0 > a.max_seconds:
            reason = f"time limit {a.max_seconds:.0f} s"
            break
        if now - last_change > a.stall_seconds:
            reason = f"nothing accepted for {a.stall_seconds:.0f} s"
            break
        if not any(t.is_alive() for t in ths):
            break
    with st.lock:
        st.stop = True
    elapsed = time.time() - t0
    # Let queued store writes land, then read the final counters.
    time.sleep(2)
    c = status(a.port)
    out = {"accepted": st.accepted, "elapsed_s": round(elapsed, 1),
           "accept_rate": round(st.accepted / elapsed, 1) if elapsed > 0 else 0,
           "active": c.get("queued", 0) + c.get("parked", 0) + c.get("inflight", 0),
           "received": c.get("received", 0), "rss_kb": rss_kb(a.pid),
           "max_rss_kb": max([s["rss_kb"] for s in samples] + [rss_kb(a.pid)]),
           "refused": {str(k): v for k, v in st.refused.items()}, "conn_errors": st.errors,
           "stop_reason": reason, "samples": samples}
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
