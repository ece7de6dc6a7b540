"""sirius-agent: registration, heartbeats and every command type against a grpcio server."""
import signal
import time

from conftest import wait_for
from test_agent_basic import agents, data, fake  # noqa: F401 - pytest fixtures


def test_registers_with_metadata_and_heartbeats(fake, agents):  # noqa: F811
    a = agents(fake.addr, "--id", "a1", "--capabilities", "scan_type=nmap,os=linux",
               "--version-tag", "1.2.3", "--segment", "10.0.0.0/24", "--max-concurrent", "3",
               "--weight", "2.5", "--heartbeat-interval", "0.2")
    st = fake.stream("a1")
    assert st.headers.get("agent-id") == "a1"
    first = st.msgs[0]
    assert first.agent_id == "a1"
    assert first.status == fake.pb.agent_pb2.IDLE
    md = dict(first.metadata)
    assert md["capabilities"] == "scan_type=nmap,os=linux"
    assert md["version"] == "1.2.3"
    assert md["segment"] == "10.0.0.0/24"
    assert md["max_concurrent"] == "3"
    assert md["weight"] == "2.5"
    assert md["hostname"]
    wait_for(lambda: len(st.heartbeats()) >= 3, timeout=5, what="3 heartbeats")
    hb = st.heartbeats()[-1].heartbeat
    assert 0 <= hb.cpu_usage <= 100 and 0 < hb.memory_usage <= 100
    assert abs(hb.timestamp - time.time()) < 5
    assert hb.active_commands == 0
    assert a.stop() == 0
    wait_for(lambda: st.closed, timeout=5, what="stream closed by the agent")


def test_env_settings_and_flag_wins(fake, agents):  # noqa: F811
    agents(None, "--id", "flagid", env={"SERVER_ADDR": fake.addr, "AGENT_ID": "envid",
                                        "CAPABILITIES": "a=b"})
    st = fake.stream("flagid")
    assert dict(st.msgs[0].metadata)["capabilities"] == "a=b"


def test_echo_status_unknown(fake, agents):  # noqa: F811
    agents(fake.addr, "--id", "e1")
    st = fake.stream("e1")
    cid = fake.send(st, "echo", {"x": "1", "hello": "world"})
    r = fake.final(st, cid)
    assert r.status == "completed" and data(r) == {"x": "1", "hello": "world"}
    assert r.completed_at > 0
    assert [x.status for x in st.results(cid)][0] == "accepted"

    cid = fake.send(st, "status")
    r = fake.final(st, cid)
    d = data(r)
    assert r.status == "completed"
    for k in ("hostname", "os", "kernel", "cpus", "load_1m", "memory_total_kb", "uptime_seconds"):
        assert d.get(k), k
    assert int(d["cpus"]) >= 1

    cid = fake.send(st, "frobnicate")
    r = fake.final(st, cid)
    assert r.status == "rejected" and "unknown" in r.error


def test_sleep_scan_update(fake, agents):  # noqa: F811
    agents(fake.addr, "--id", "s1", "--max-concurrent", "4", "--scan-duration-ms", "100")
    st = fake.stream("s1")
    t0 = time.monotonic()
    sl = fake.send(st, "sleep", {"seconds": "0.3"})
    sc = fake.send(st, "scan", {"target": "10.0.0.5"})
    up = fake.send(st, "update", {"version": "2.0.0"})
    r = fake.final(st, sc)
    assert r.status == "completed"
    d = data(r)
    assert d["target"] == "10.0.0.5" and "open_ports" in d and int(d["findings"]) >= 0
    assert fake.final(st, up).status == "completed"
    r = fake.final(st, sl)
    assert r.status == "completed"
    assert time.monotonic() - t0 >= 0.3
    statuses = [x.status for x in st.results(sl)]
    assert statuses == ["accepted", "running", "completed"]
    # bad parameters are rejected
    assert fake.final(st, fake.send(st, "sleep", {"seconds": "abc"})).status == "rejected"
    assert fake.final(st, fake.send(st, "scan", {})).status == "rejected"


def test_duplicate_command_runs_once(fake, agents):  # noqa: F811
    agents(fake.addr, "--id", "dup1", "--max-concurrent", "3")
    st = fake.stream("dup1")
    cid = fake.send(st, "sleep", {"seconds": "0.5"})
    wait_for(lambda: any(x.status == "running" for x in st.results(cid)), timeout=5,
             what="running")
    fake.send(st, "sleep", {"seconds": "0.5"}, cid=cid)
    assert fake.final(st, cid).status == "completed"
    time.sleep(0.8)
    assert len([x for x in st.results(cid) if x.status == "completed"]) == 1
    assert [x.status for x in st.results(cid)].count("accepted") == 1


def test_busy_and_status_field(fake, agents):  # noqa: F811
    agents(fake.addr, "--id", "b1", "--max-concurrent", "1", "--heartbeat-interval", "0.1")
    st = fake.stream("b1")
    c1 = fake.send(st, "sleep", {"seconds": "1"})
    wait_for(lambda: any(x.status == "running" for x in st.results(c1)), timeout=5,
             what="running")
    c2 = fake.send(st, "echo", {"a": "b"})
    r = fake.final(st, c2)
    assert r.status == "rejected" and r.error == "busy"
    wait_for(lambda: any(m.heartbeat.active_commands == 1 and m.status == fake.pb.agent_pb2.BUSY
                         for m in st.heartbeats()), timeout=5, what="BUSY heartbeat")
    assert fake.final(st, c1).status == "completed"


def test_timeout_and_cancel(fake, agents):  # noqa: F811
    agents(fake.addr, "--id", "t1", "--max-concurrent", "2")
    st = fake.stream("t1")
    c1 = fake.send(st, "sleep", {"seconds": "5"}, timeout_seconds=1)
    t0 = time.monotonic()
    r = fake.final(st, c1)
    assert r.status == "failed" and r.error == "timeout"
    assert 0.8 < time.monotonic() - t0 < 3
    c2 = fake.send(st, "sleep", {"seconds": "30"})
    wait_for(lambda: any(x.status == "running" for x in st.results(c2)), timeout=5,
             what="running")
    cc = fake.send(st, "cancel", {"command_id": c2})
    assert fake.final(st, c2).status == "cancelled"
    assert fake.final(st, cc).status == "completed"
    # cancelling something unknown fails the cancel
    assert fake.final(st, fake.send(st, "cancel", {"command_id": "nope"})).status == "failed"


def test_exec_needs_allow_exec(fake, agents):  # noqa: F811
    agents(fake.addr, "--id", "x0")
    st = fake.stream("x0")
    r = fake.final(st, fake.send(st, "exec", {"command": "echo hi"}))
    assert r.status == "rejected" and "allow-exec" in r.error


def test_exec_runs_shell(fake, agents):  # noqa: F811
    agents(fake.addr, "--id", "x1", "--allow-exec", "--max-concurrent", "3")
    st = fake.stream("x1")
    r = fake.final(st, fake.send(st, "exec", {"command": "echo hello; echo world"}))
    assert r.status == "completed"
    assert data(r)["stdout"] == "hello\nworld\n" and data(r)["exit_code"] == "0"
    r = fake.final(st, fake.send(st, "exec", {"command": "exit 7"}))
    assert r.status == "failed" and data(r)["exit_code"] == "7"
    # a big output is capped, not buffered without limit
    r = fake.final(st, fake.send(st, "exec", {"command": "head -c 1000000 /dev/zero | tr '\\0' a"}))
    assert r.status == "completed" and data(r).get("stdout_truncated") == "true"
    assert len(data(r)["stdout"]) == 65536
    # timeout kills the process
    t0 = time.monotonic()
    r = fake.final(st, fake.send(st, "exec", {"command": "sleep 30"}, timeout_seconds=1))
    assert r.status == "failed" and r.error == "timeout" and time.monotonic() - t0 < 5
    # cancel kills it too
    c = fake.send(st, "exec", {"command": "sleep 30"})
    wait_for(lambda: any(x.status == "running" for x in st.results(c)), timeout=5, what="running")
    fake.send(st, "cancel", {"command_id": c})
    assert fake.final(st, c).status == "cancelled"


def test_sigterm_closes_cleanly(fake, agents):  # noqa: F811
    a = agents(fake.addr, "--id", "q1", "--allow-exec")
    st = fake.stream("q1")
    fake.send(st, "exec", {"command": "sleep 30"})
    time.sleep(0.2)
    t0 = time.monotonic()
    assert a.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 5
    wait_for(lambda: st.closed, timeout=5, what="stream end")
