"""The agent listener against Python grpcio clients (stubs generated from proto/):
scan.AgentService Ping and Connect, the registry behind it, grpc.health.v1, and the gRPC error
statuses a client sees."""
import signal
import time

import grpc
import pytest

from conftest import wait_for
from test_grpc_helpers import AgentStream, agent, wait_gone, wait_registered


@pytest.fixture
def chan(manager):
    ch = grpc.insecure_channel(manager.grpc_addr)
    yield ch
    ch.close()


def test_ping(pb, chan):
    stub = pb.agent_pb2_grpc.AgentServiceStub(chan)
    r = stub.Ping(pb.agent_pb2.PingRequest(agent_id="whoever"), timeout=5)
    assert r.message == "pong"
    assert abs(r.timestamp - time.time()) < 5


def test_connect_registers_and_heartbeats_update(pb, manager, chan):
    s = AgentStream(pb, chan)
    s.register("agent-a", hostname="scanner-1", version="2.1.0",
               capabilities="scan_type=nmap,os=linux", max_concurrent="4")
    a = wait_registered(manager, "agent-a")
    assert a["hostname"] == "scanner-1"
    assert a["version"] == "2.1.0"
    assert a["status"] == "idle"
    assert a.get("capabilities", {}).get("scan_type") == "nmap"

    s.heartbeat("agent-a", cpu=50.0, mem=30.0, active=2, status=pb.agent_pb2.BUSY)
    a = wait_for(lambda: (lambda x: x if x and x["status"] == "busy" else None)(
        agent(manager, "agent-a")), what="heartbeat applied")
    assert a["active_commands"] == 2

    s.close()  # the agent leaves: the stream ends OK and the agent is detached
    assert s.wait() == grpc.StatusCode.OK
    wait_gone(manager, "agent-a")


def test_agent_id_from_header(pb, manager, chan):
    s = AgentStream(pb, chan, metadata=[("agent-id", "agent-hdr")])
    s.register("")  # no agent_id in the message
    wait_registered(manager, "agent-hdr")
    s.cancel()
    wait_gone(manager, "agent-hdr")


def test_missing_id_is_unauthenticated(pb, chan):
    s = AgentStream(pb, chan)
    s.register("")
    assert s.wait() == grpc.StatusCode.UNAUTHENTICATED
    assert "agent id" in s.details


def test_same_id_replaces_the_old_stream(pb, manager):
    ch1 = grpc.insecure_channel(manager.grpc_addr)
    ch2 = grpc.insecure_channel(manager.grpc_addr)
    try:
        old = AgentStream(pb, ch1)
        old.register("agent-dup", hostname="old-host")
        wait_for(lambda: (agent(manager, "agent-dup") or {}).get("hostname") == "old-host",
                 what="old stream registered")
        new = AgentStream(pb, ch2)
        new.register("agent-dup", hostname="new-host")
        assert old.wait() == grpc.StatusCode.ABORTED
        assert "replaced" in old.details
        wait_for(lambda: (agent(manager, "agent-dup") or {}).get("hostname") == "new-host",
                 what="new stream owns the agent")
        # the old stream's end must not take the new one's registration with it
        time.sleep(0.3)
        assert agent(manager, "agent-dup") is not None
        new.heartbeat("agent-dup", active=1)
        new.close()
        assert new.wait() == grpc.StatusCode.OK
        wait_gone(manager, "agent-dup")
    finally:
        ch1.close()
        ch2.close()


def test_client_cancel_detaches(pb, manager, chan):
    s = AgentStream(pb, chan)
    s.register("agent-cancel")
    wait_registered(manager, "agent-cancel")
    s.cancel()
    wait_gone(manager, "agent-cancel")


def test_oversized_message_is_resource_exhausted(pb, manager_factory):
    m = manager_factory(env={"GRPC_MAX_MESSAGE_BYTES": "65536"})
    with grpc.insecure_channel(m.grpc_addr) as ch:
        stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Ping(pb.agent_pb2.PingRequest(agent_id="x" * 70000), timeout=5)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # on a Connect stream too, and the connection stays usable
        s = AgentStream(pb, ch)
        s.register("agent-big", hostname="h" * 70000)
        assert s.wait() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Ping(pb.agent_pb2.PingRequest(), timeout=5).message == "pong"


def test_unknown_method_and_service_are_unimplemented(chan):
    for path in ("/scan.AgentService/Nope", "/scan.Other/Ping", "/grpc.health.v1.Health/Nope"):
        call = chan.unary_unary(path, request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            call(b"", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED, path


def test_garbage_protobuf_is_internal(chan):
    for path in ("/scan.AgentService/Ping", "/grpc.health.v1.Health/Check"):
        call = chan.unary_unary(path, request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            call(b"\xff\xff\xff\xff\x0f", timeout=5)
        assert e.value.code() == grpc.StatusCode.INTERNAL, path
    stream = chan.stream_stream("/scan.AgentService/Connect", request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        list(stream(iter([b"\x0a\xff\xff"]), timeout=5))
    assert e.value.code() == grpc.StatusCode.INTERNAL


def test_stream_without_first_message_is_ended(pb, manager_factory):
    m = manager_factory(env={"GRPC_FIRST_MESSAGE_TIMEOUT": "1"})
    with grpc.insecure_channel(m.grpc_addr) as ch:
        t0 = time.monotonic()
        s = AgentStream(pb, ch)  # sends nothing
        assert s.wait(timeout=10) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.8 < time.monotonic() - t0 < 5
        assert "first message" in s.details


def test_health_check(pb, chan):
    h = pb.health_pb2
    stub = pb.health_pb2_grpc.HealthStub(chan)
    for svc in ("", "scan.AgentService"):
        r = stub.Check(h.HealthCheckRequest(service=svc), timeout=5)
        assert r.status == h.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        stub.Check(h.HealthCheckRequest(service="no.Such"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_sees_drain(pb, manager):
    h = pb.health_pb2
    ch = grpc.insecure_channel(manager.grpc_addr)
    stub = pb.health_pb2_grpc.HealthStub(ch)
    unknown = stub.Watch(h.HealthCheckRequest(service="no.Such"), timeout=20)
    assert next(unknown).status == h.HealthCheckResponse.SERVICE_UNKNOWN
    unknown.cancel()
    watch = stub.Watch(h.HealthCheckRequest(service="scan.AgentService"), timeout=20)
    assert next(watch).status == h.HealthCheckResponse.SERVING
    manager.proc.send_signal(signal.SIGTERM)  # drain: health goes NOT_SERVING
    assert next(watch).status == h.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    ch.close()
    assert manager.proc.wait(timeout=20) == 0


def test_many_agents_on_many_connections(pb, manager):
    # a local subchannel pool: one TCP connection per channel (grpcio shares them otherwise,
    # and GRPC_MAX_CONCURRENT_STREAMS would queue the streams past 16 at the client)
    chans = [grpc.insecure_channel(manager.grpc_addr,
                                   options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(10)]
    try:
        streams = []
        for i, ch in enumerate(chans):
            for j in range(5):
                s = AgentStream(pb, ch)
                s.register(f"fleet-{i}-{j}")
                streams.append(s)
        wait_for(lambda: len([a for a in manager.agent_ids() if a.startswith("fleet-")]) == 50,
                 what="50 agents registered")
        for s in streams:
            s.close()
        for s in streams:
            assert s.wait() == grpc.StatusCode.OK
        wait_for(lambda: not [a for a in manager.agent_ids() if a.startswith("fleet-")],
                 what="fleet gone")
    finally:
        for ch in chans:
            ch.close()
