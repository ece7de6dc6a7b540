"""Runs the HTTP/2 attacks of h2attack.py against one sirius-manager, each for DURATION seconds
from ATTACKERS processes (reconnecting whenever the server ends a connection), while a grpcio
Ping and a GET /health run in this process; prints a table. See run.sh."""
import collections
import multiprocessing as mp
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "test", "integration"))
import h2attack as A  # noqa: E402

DURATION = float(os.environ.get("DURATION", "10"))
ATTACKERS = int(os.environ.get("ATTACKERS", "1"))
ONLY = [x for x in os.environ.get("ONLY", "").split(",") if x]


def make_pb(out):
    from grpc_tools import protoc
    for name in ("agent.proto", "health.proto"):
        assert protoc.main(["protoc", f"-I{ROOT}/proto", f"--python_out={out}",
                            f"--grpc_python_out={out}", f"{ROOT}/proto/{name}"]) == 0
    sys.path.insert(0, out)
    import agent_pb2, agent_pb2_grpc  # noqa: E401

    class NS:
        pass
    ns = NS()
    ns.agent_pb2, ns.agent_pb2_grpc = agent_pb2, agent_pb2_grpc
    return ns


def zero_window(addr, seconds, admin_url=None):
    from conftest import http
    c = A.zero_window_connect(addr, f"stalled-{os.getpid()}")
    time.sleep(0.3)
    for _ in range(20):
        http("POST", admin_url + "/api/commands",
             {"type": "echo", "agent_id": f"stalled-{os.getpid()}", "params": {"p": "x" * 60000}})
    t0 = time.monotonic()
    c.wait_end(seconds)
    r = A._result(c, t0)
    c.close()
    return r


def idle(addr, seconds):
    r = A.idle_connections(addr, count=1000, hold=seconds)
    for c in r.pop("conns"):
        c.close()
    return r


# name, function(addr, seconds) -> result, unit of "frames"
ATTACKS = [
    ("rapid reset", lambda a, s: A.rapid_reset(a, seconds=s), "streams"),
    ("CONTINUATION flood", lambda a, s: A.continuation_flood(a, seconds=s), "frames"),
    ("SETTINGS flood", lambda a, s: A.settings_flood(a, seconds=s), "frames"),
    ("PING flood", lambda a, s: A.ping_flood(a, seconds=s), "frames"),
    ("empty DATA flood", lambda a, s: A.empty_data_flood(a, seconds=s), "frames"),
    ("WINDOW_UPDATE flood", lambda a, s: A.window_update_flood(a, seconds=s), "frames"),
    ("huge headers (128 KiB)", lambda a, s: A.huge_headers(a, seconds=s), "requests"),
    ("HPACK bomb (8 x 16 KiB refs)",
     lambda a, s: A.hpack_bomb(a, seconds=s, continuations=7), "requests"),
    ("zero-window reader", zero_window, "conns"),
    ("slow preface", lambda a, s: A.slow_preface(a, seconds=s, interval=0.2), "bytes"),
    ("1000 idle connections", idle, "conns"),
]


def worker(name, addr, admin_url, seconds, q):
    fn = dict((n, f) for n, f, _ in ATTACKS)[name]
    deadline = time.monotonic() + seconds
    total, ends = 0, collections.Counter()
    while time.monotonic() < deadline - 0.05:
        left = deadline - time.monotonic()
        try:
            r = fn(addr, left, admin_url) if fn is zero_window else fn(addr, left)
        except OSError as e:
            ends[f"connect error {e.__class__.__name__}"] += 1
            time.sleep(0.05)
            continue
        unit = dict((n, u) for n, _, u in ATTACKS)[name]
        total += {"requests": r.get("requests", 0),
                  "conns": 1 if fn is zero_window else r.get("frames", 0),
                  "bytes": r.get("bytes", 0)}.get(unit, r.get("frames", 0))
        ends[r["end"].split(" x")[0] if "RST_STREAM" in r["end"] else r["end"]] += 1
        if name in ("1000 idle connections", "zero-window reader", "slow preface"):
            break
    q.put((total, dict(ends)))


def main():
    from conftest import Manager
    import tempfile
    tmp = tempfile.mkdtemp(prefix="sm-abuse-")
    pb = make_pb(tmp)
    m = Manager(tmp, env={"SIRIUS_LOG_LEVEL": "warn"}).start()
    pid = m.proc.pid
    ping = A.grpc_pinger(m.grpc_addr, pb)
    ping(5.0)

    def probe_for(seconds):
        with A.Probe(m.grpc_addr, m.admin_port, interval=0.02, ping=ping) as p:
            time.sleep(seconds)
        return p

    base = probe_for(min(DURATION, 5))
    rss0 = A.proc_status(pid, "VmRSS")
    print(f"sirius-manager {os.environ.get('SM_BUILD_DIR')}, attack {DURATION:g} s x "
          f"{ATTACKERS} process(es); RSS at start {rss0 / 1024:.1f} MiB; baseline Ping "
          f"p50 {A.Probe.pct(base.ping_ms, 50):.2f} ms p99 {A.Probe.pct(base.ping_ms, 99):.2f} ms, "
          f"/health p50 {A.Probe.pct(base.health_ms, 50):.2f} ms\n")
    hdr = (f"| {'attack':30} | {'rate achieved':>20} | {'RSS peak':>9} | {'CPU':>5} | "
           f"{'Ping p50/p99 ms':>16} | {'health p99':>10} | {'fail':>4} | how the connection ended")
    print(hdr)
    print("|" + "|".join("-" * (len(c) + 0) for c in hdr.split("|")[1:]))
    for name, _, unit in ATTACKS:
        if ONLY and not any(o.lower() in name.lower() for o in ONLY):
            continue
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM
        cpu0, t0 = A.proc_cpu(pid), time.monotonic()
        q = mp.Queue()
        procs = [mp.Process(target=worker, args=(name, m.grpc_addr, m.admin_url, DURATION, q))
                 for _ in range(ATTACKERS)]
        for p in procs:
            p.start()
        with A.Probe(m.grpc_addr, m.admin_port, interval=0.02, ping=ping) as probe:
            res = [q.get(timeout=DURATION + 60) for _ in procs]
        for p in procs:
            p.join(10)
        wall = time.monotonic() - t0
        cpu = (A.proc_cpu(pid) - cpu0) / wall * 100
        total = sum(r[0] for r in res)
        ends = collections.Counter()
        for _, e in res:
            ends.update(e)
        peak = A.proc_status(pid, "VmHWM") / 1024
        alive = m.proc.poll() is None
        rate = f"{total / wall:,.0f} {unit}/s" if unit not in ("conns",) else f"{total} {unit}"
        endtxt = "; ".join(f"{k} x{v}" for k, v in ends.most_common(3))
        print(f"| {name:30} | {rate:>20} | {peak:6.1f} MiB | {cpu:4.0f}% | "
              f"{A.Probe.pct(probe.ping_ms, 50):6.2f}/{A.Probe.pct(probe.ping_ms, 99):7.2f} | "
              f"{A.Probe.pct(probe.health_ms, 99):7.2f} ms | {len(probe.failures):>4} | "
              f"{endtxt}{'' if alive else ' MANAGER DIED'}", flush=True)
        if not alive:
            sys.exit(1)
        time.sleep(0.5)
    ping.channel.close()
    m.stop()


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
