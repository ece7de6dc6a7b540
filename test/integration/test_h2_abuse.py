"""HTTP/2 abuse on the gRPC port (issue 12), against the real sirius-manager, with raw frames
(bench/abuse/h2attack.py: python3-h2 refuses to misbehave): rapid reset, CONTINUATION flood,
SETTINGS / PING / empty DATA / WINDOW_UPDATE floods, huge header blocks, an HPACK bomb, a
zero-window stalled reader, a slow preface, many idle connections.

For each: the manager stays up, its memory stays under a stated bound (VmHWM from /proc; not
checked on an ASan build, whose quarantine keeps freed memory), the offending connection ends the
way it should (GOAWAY with its code, RST_STREAM, or a plain close after a flood), and a grpcio
Ping and an HTTP/1.1 GET /health on the admin port are served throughout; their latency is
printed (run with -s). No assertion is about time except generous upper limits. The admin-port
abuse is in test_admin_abuse.py, partial-message abuse in test_grpc_abuse.py; bench/abuse/run.sh
runs these attacks longer and prints a table."""
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "bench", "abuse"))
import h2attack as A  # noqa: E402

MIB = 1024
BOUND_KIB = 64 * MIB  # the manager's peak RSS stays under its RSS at start + this


@pytest.fixture
def run_attack(pb, manager_factory):
    """Starts a manager (env as given), runs fn(manager) while the probes run, checks that the
    manager is up, its peak RSS bounded and the probes served; returns (result, manager)."""
    def run(fn, env=None, bound_kib=BOUND_KIB, name=""):
        e = {"SIRIUS_LOG_LEVEL": "info"}
        e.update(env or {})
        m = manager_factory(env=e)
        pid = m.proc.pid
        ping = A.grpc_pinger(m.grpc_addr, pb)
        ping(5.0)  # connected before the base figures
        base = A.proc_status(pid, "VmRSS")
        cpu0 = A.proc_cpu(pid)
        with A.Probe(m.grpc_addr, m.admin_port, ping=ping) as probe:
            time.sleep(0.2)
            r = fn(m)
            time.sleep(0.2)
        cpu = A.proc_cpu(pid) - cpu0
        peak = A.proc_status(pid, "VmHWM")
        ping.channel.close()
        shown = {k: v for k, v in r.items() if k not in ("conns",)}
        print(f"\n{name}: {shown}\n  manager RSS base {base} KiB, peak {peak} KiB, "
              f"CPU {cpu:.2f} s; {probe.summary()}")
        assert m.proc.poll() is None, "the manager died"
        assert not probe.failures, probe.failures[:5]
        assert probe.ping_ms and probe.health_ms
        if not A.sanitized(pid):
            assert peak < base + bound_kib, (base, peak)
        assert m.health() == 200
        r["cpu"] = cpu
        return r, m
    return run


def test_rapid_reset(run_attack):
    """CVE-2023-44487: nghttp2's stream reset rate limit (Debian's backport, 1000 streams burst,
    33/s) ends the connection with GOAWAY (INTERNAL_ERROR is what nghttp2 sends)."""
    r, _ = run_attack(lambda m: A.rapid_reset(m.grpc_addr, seconds=5), name="rapid reset")
    assert r["goaway"] in (2, 11), r
    assert r["frames"] < 5000, r  # streams opened before it was cut off
    assert r["eof"], r


@pytest.mark.parametrize("payload", [True, False])
def test_continuation_flood(run_attack, payload):
    """CVE-2024-27316 family: CONTINUATION frames without END_HEADERS, with header bytes or
    empty. nghttp2 (CVE-2024-28182 fix) allows 8 and then fails the session: closed."""
    r, _ = run_attack(lambda m: A.continuation_flood(m.grpc_addr, seconds=5, payload=payload),
                      name=f"CONTINUATION flood (payload {payload})")
    assert r["eof"], r
    assert r["frames"] < 2000, r


@pytest.mark.parametrize("attack", ["settings_flood", "ping_flood"])
def test_ack_floods_are_closed(run_attack, attack):
    """SETTINGS and PING each want an answer; a peer that sends them and never reads fills the
    output, then nghttp2's outbound ACK limit (1000) fails the session: closed."""
    r, _ = run_attack(lambda m: getattr(A, attack)(m.grpc_addr, seconds=10), name=attack)
    assert r["eof"], r
    assert r["seconds"] < 10, r


def test_settings_with_too_many_entries(run_attack):
    r, _ = run_attack(lambda m: A.settings_many_entries(m.grpc_addr), name="SETTINGS x100")
    assert r["goaway"] == 11, r  # ENHANCE_YOUR_CALM


@pytest.mark.parametrize("attack", ["empty_data_flood", "window_update_flood"])
def test_floods_that_cost_no_output_are_absorbed(run_attack, attack):
    """Empty DATA and WINDOW_UPDATE(1) frames make no output and hold no memory: they cost what
    reading 9 or 13 bytes costs. The connection stays open; the manager's CPU per frame is
    bounded (a generous 5 us; measured about 0.1 us)."""
    r, _ = run_attack(lambda m: getattr(A, attack)(m.grpc_addr, seconds=3), name=attack)
    assert r["goaway"] is None and not r["eof"], r
    assert r["frames"] > 10000, r
    assert r["cpu"] / r["frames"] < 5e-6, r


def test_window_overflow_is_flow_control_error(run_attack):
    r, _ = run_attack(lambda m: A.window_overflow(m.grpc_addr), name="window overflow")
    assert r["goaway"] == 3, r  # FLOW_CONTROL_ERROR


def test_huge_headers(run_attack):
    """Over GRPC_MAX_HEADER_LIST_BYTES (16 KiB): RESOURCE_EXHAUSTED; over 4 times it (the
    header-bomb bound): RST_STREAM INTERNAL_ERROR, the rest of the block skipped. The
    connection serves on either way."""
    def attack(m):
        over = A.huge_headers(m.grpc_addr, field=8000, continuations=1, max_requests=5)
        far = A.huge_headers(m.grpc_addr, field=8000, continuations=7, max_requests=5)
        return {"over": over, "far": far}
    r, _ = run_attack(attack, name="huge headers")
    assert r["over"]["statuses"] == [8] and r["over"]["answers"] == 5, r["over"]
    assert r["over"]["goaway"] is None, r["over"]
    assert r["far"]["resets"].get(2) == 5, r["far"]
    assert r["far"]["goaway"] is None, r["far"]


def test_hpack_bomb(run_attack):
    """A 4000-byte header in the HPACK table, then referenced by each byte of 8 x 16 KiB header
    blocks: 530 MB of header fields per request if decoded. Before the bomb bound the manager
    validated them all (about 80 ms of CPU per request); now the stream is reset after
    4 x GRPC_MAX_HEADER_LIST_BYTES and the rest skipped (about 2 ms)."""
    n = 40
    r, m = run_attack(lambda m: A.hpack_bomb(m.grpc_addr, seconds=30, continuations=7,
                                             max_requests=n), name="HPACK bomb")
    assert r["requests"] == n, r
    assert r["resets"].get(2, 0) >= n - 1, r  # the first request set the table, unanswered
    assert r["goaway"] is None, r
    print(f"  manager CPU per bomb request: {r['cpu'] / n * 1000:.1f} ms")
    if not A.sanitized(m.proc.pid):
        assert r["cpu"] / n < 0.030, r


def test_zero_window_stalled_reader(run_attack):
    """A Connect stream whose client advertises a zero window and never reads, while commands
    for it arrive: what waits is bounded by the agent's dispatch window (one command here), not
    by what is submitted; the unanswered keepalive PING closes the connection."""
    def attack(m):
        c = A.zero_window_connect(m.grpc_addr, "stalled")
        from conftest import http, wait_for
        wait_for(lambda: "stalled" in m.agent_ids(), timeout=10, what="the agent registered")
        for _ in range(40):
            st, _, _ = http("POST", m.admin_url + "/api/commands",
                            {"type": "echo", "agent_id": "stalled", "params": {"p": "x" * 60000}})
            assert st == 202
        t0 = time.monotonic()
        end = c.wait_end(15)
        r = A._result(c, t0)
        r["closed_after"] = time.monotonic() - t0
        c.close()
        wait_for(lambda: "stalled" not in m.agent_ids(), timeout=10, what="the agent gone")
        return r
    r, _ = run_attack(attack, env={"GRPC_KEEPALIVE_INTERVAL": "1"}, name="zero window")
    assert r["eof"], r


def test_slow_preface_is_ended_by_the_idle_timeout(run_attack):
    r, _ = run_attack(lambda m: A.slow_preface(m.grpc_addr, seconds=10, interval=0.3),
                      env={"GRPC_IDLE_TIMEOUT": "2"}, name="slow preface")
    assert r["goaway"] == 0 and r["seconds"] < 5, r  # GOAWAY NO_ERROR at the idle timeout


def test_silent_connections_are_closed_after_the_preface_timeout(run_attack):
    """Connections that send nothing, or only part of the 24-byte client preface, are closed
    about 10 s after accept (the preface timeout, docs/agent-protocol.md), not after
    GRPC_IDLE_TIMEOUT (left at its 300 s default here); Ping and /health served meanwhile."""
    def attack(m):
        silent = A.idle_connections(m.grpc_addr, count=20, hold=0.1, preface=False)["conns"]
        half = A.idle_connections(m.grpc_addr, count=20, hold=0.1, preface=False)["conns"]
        for c in half:
            c.send(A.PREFACE[:12])
        conns = silent + half
        t0 = time.monotonic()
        while time.monotonic() - t0 < 40 and not all(c.eof for c in conns):
            for c in conns:
                c.poll()
            time.sleep(0.2)
        r = {"closed": sum(1 for c in conns if c.eof), "seconds": time.monotonic() - t0,
             "goaway": sorted({c.goaway for c in conns if c.goaway is not None})}
        for c in conns:
            c.close()
        return r
    r, m = run_attack(attack, name="silent connections")
    assert r["closed"] == 40, r
    assert r["goaway"] == [], r  # no preface, no HTTP/2: a plain close
    from conftest import wait_for
    wait_for(lambda: "no HTTP/2 preface in time" in m.logs(), timeout=5,
             what="the log line")


def test_many_idle_connections(run_attack):
    """400 connections that send the preface and sit: about 15 KiB of RSS each (bound: 64 KiB),
    all closed with GOAWAY NO_ERROR by GRPC_IDLE_TIMEOUT; Ping and /health served meanwhile."""
    count = 400

    def attack(m):
        base = A.proc_status(m.proc.pid, "VmRSS")
        r = A.idle_connections(m.grpc_addr, count=count, hold=0.5)
        held = A.proc_status(m.proc.pid, "VmRSS")
        r["per_conn_kib"] = (held - base) / count
        deadline = time.monotonic() + 10
        conns = r.pop("conns")
        while time.monotonic() < deadline and not all(c.eof for c in conns):
            for c in conns:
                c.poll()
            time.sleep(0.1)
        r["closed"] = sum(1 for c in conns if c.eof)
        r["goaway_codes"] = sorted({c.goaway for c in conns if c.goaway is not None})
        for c in conns:
            c.close()
        return r
    r, m = run_attack(attack, env={"GRPC_IDLE_TIMEOUT": "2"}, name="idle connections")
    assert r["closed"] == count, r
    assert r["goaway_codes"] == [0], r
    if not A.sanitized(m.proc.pid):
        assert r["per_conn_kib"] < 64, r
