"""The sirius-manager process as an operator meets it: --help and --version, bad settings
(one line naming the setting, non-zero exit), log formats, and the shutdown sequence (SIGTERM
drains and exits 0; a second signal exits at once)."""
import json
import os
import signal
import subprocess
import time

import grpc

from conftest import MANAGER_BIN, wait_for


def run(args, env=None, timeout=10):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([MANAGER_BIN] + args, env=e, capture_output=True, text=True,
                          timeout=timeout)


def test_help_and_version():
    r = run(["--help"])
    assert r.returncode == 0
    for setting in ("GRPC_SERVER_ADDR", "ADMIN_API_ADDR", "AGENT_TIMEOUT", "MAX_AGENT_LOAD",
                    "VALKEY_HOST", "RABBITMQ_URL", "LOAD_BALANCING_STRATEGY", "--drain-timeout"):
        assert setting in r.stdout
    r = run(["--version"])
    assert r.returncode == 0 and r.stdout.startswith("sirius-manager ")


def test_bad_values_name_the_setting():
    cases = [
        ({"MAX_AGENT_LOAD": "2"}, [], "MAX_AGENT_LOAD"),
        ({"AGENT_TIMEOUT": "soon"}, [], "AGENT_TIMEOUT"),
        ({"SIRIUS_LOG_LEVEL": "loud"}, [], "SIRIUS_LOG_LEVEL"),
        ({}, ["--grpc-server-addr", "nohost"], "--grpc-server-addr"),
        ({}, ["--no-such-option"], "--no-such-option"),
        ({"TLS_ENABLED": "true"}, [], "TLS_ENABLED"),
    ]
    for env, args, name in cases:
        r = run(args, env=env)
        assert r.returncode != 0, (env, args)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0], r.stderr


def test_flag_wins_over_environment(manager_factory):
    m = manager_factory(env={"INSTANCE_ID": "from-env"}, args=["--instance-id", "from-flag"])
    status, _, body = m.get("/api/status")
    assert status == 200 and body["instance"] == "from-flag"


def test_json_logs_one_object_per_line(manager):
    manager.get("/api/agents")
    lines = [ln for ln in manager.logs().splitlines() if ln.strip()]
    assert lines
    for ln in lines:
        ev = json.loads(ln)
        assert {"ts", "level", "component", "msg"} <= ev.keys()


def test_console_logs(manager_factory):
    m = manager_factory(env={"SIRIUS_LOG_FORMAT": "console", "SIRIUS_LOG_LEVEL": "info"})
    m.get("/health")
    text = m.logs()
    assert " info  manager: started " in text
    assert not text.lstrip().startswith("{")


def test_sigterm_drains_and_exits_zero(pb, manager_factory):
    m = manager_factory()
    ch = grpc.insecure_channel(m.grpc_addr)
    stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
    stub.Ping(pb.agent_pb2.PingRequest(agent_id="x"), timeout=5)
    t0 = time.monotonic()
    assert m.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 5
    events = [e.get("msg") for e in m.log_events()]
    assert "shutting down: draining" in events and "stopped" in events
    ch.close()


def test_second_signal_exits_at_once(manager_factory, pb):
    # A drain that cannot finish (a command runs on an agent for 30 s, drain timeout 60 s):
    # the second signal must end the process at once.
    import threading
    m = manager_factory(env={"DRAIN_TIMEOUT": "60"})
    ch = grpc.insecure_channel(m.grpc_addr)
    stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
    got = threading.Event()

    def gen():
        yield pb.agent_pb2.AgentMessage(agent_id="slow", status=pb.agent_pb2.IDLE)
        got.wait(30)
        time.sleep(30)

    responses = stub.Connect(gen())

    def reader():
        try:
            for msg in responses:
                got.set()
        except grpc.RpcError:
            pass
    threading.Thread(target=reader, daemon=True).start()
    wait_for(lambda: m.agent_ids() == ["slow"], what="agent registered")
    status, _, body = m.get("/health")
    from conftest import http
    status, _, body = http("POST", m.admin_url + "/api/commands",
                           {"type": "sleep", "params": {"seconds": "30"}, "agent_id": "slow"})
    assert status == 202, body
    assert got.wait(10), "command not dispatched"
    m.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "shutting down: draining" in m.logs(), what="drain started")
    time.sleep(0.5)
    assert m.proc.poll() is None, "the drain should still wait for the running command"
    m.proc.send_signal(signal.SIGTERM)
    rc = m.proc.wait(timeout=3)
    assert rc != 0
    ch.close()
