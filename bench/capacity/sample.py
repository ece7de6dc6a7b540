#!/usr/bin/python3
"""Samples a running sirius-manager until SIGTERM: GET /api/status (commands in flight and
waiting) and the process's RSS, every --interval seconds. On exit prints one JSON object with
the maxima (and writes every sample to --log when given).

Usage: sample.py --admin http://127.0.0.1:PORT --pid PID [--interval 0.5] [--log FILE]
"""
import argparse
import http.client
import json
import signal
import sys
import time
import urllib.parse


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--log")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.admin)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    best = {"max_inflight": 0, "max_waiting": 0, "max_active": 0, "max_rss_kb": 0, "samples": 0}
    log = open(a.log, "w") if a.log else None
    conn = None
    while not stop:
        t = time.time()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
            conn.request("GET", "/api/status")
            st = json.loads(conn.getresponse().read())
            c = st.get("commands", {})
            inflight = c.get("inflight", 0)
            waiting = c.get("queued", 0) + c.get("parked", 0)
            r = rss_kb(a.pid)
            best["samples"] += 1
            best["max_inflight"] = max(best["max_inflight"], inflight)
            best["max_waiting"] = max(best["max_waiting"], waiting)
            best["max_active"] = max(best["max_active"], inflight + waiting)
            best["max_rss_kb"] = max(best["max_rss_kb"], r)
            if log:
                log.write(f"{t:.1f} rss_kb={r} inflight={inflight} waiting={waiting} "
                          f"completed={c.get('completed', 0)} store_retries="
                          f"{c.get('store_retries', 0)} pending_writes={c.get('pending_writes', 0)}\n")
                log.flush()
        except (OSError, ValueError, http.client.HTTPException):
            conn = None
        time.sleep(max(0.0, a.interval - (time.time() - t)))
    best["end_rss_kb"] = rss_kb(a.pid)
    print(json.dumps(best))


if __name__ == "__main__":
    sys.exit(main())
