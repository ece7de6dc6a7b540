"""hello.HelloService (SiriusScan's agent protocol) through the real sirius-manager: a Python
grpcio hello agent generated from proto/hello.proto at test time registers, is listed with its
protocol, gets an exec command submitted over REST, answers with a RESULT that carries no id,
and the command completes with the output in its result; other command types fail naming the
protocol; a result after the command timed out is counted, and the command stays timed_out."""
import os
import queue
import sys
import threading
import time
import urllib.request

import grpc
import pytest

from conftest import ROOT, http, wait_for


@pytest.fixture(scope="module")
def hpb(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hello_pb"))
    from grpc_tools import protoc
    proto_dir = os.path.join(ROOT, "proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}",
                      f"--grpc_python_out={out}", os.path.join(proto_dir, "hello.proto")])
    assert rc == 0, "protoc failed for hello.proto"
    sys.path.insert(0, out)
    import hello_pb2
    import hello_pb2_grpc
    return hello_pb2, hello_pb2_grpc


class HelloAgent:
    """One hello.HelloService/ConnectStream: the test puts AgentMessages, a thread collects the
    ServerMessages."""

    def __init__(self, hpb, channel, agent_id):
        self.pb, pbg = hpb
        self.agent_id = agent_id
        self.q = queue.Queue()
        self.msgs = []
        self.done = threading.Event()
        stub = pbg.HelloServiceStub(channel)
        self.call = stub.ConnectStream(self._requests(), metadata=[("agent_id", agent_id)],
                                       timeout=60)
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self):
        while True:
            m = self.q.get()
            if m is None:
                return
            yield m

    def _read(self):
        try:
            for m in self.call:
                self.msgs.append(m)
        except grpc.RpcError:
            pass
        finally:
            self.done.set()

    def heartbeat(self):
        pb = self.pb
        self.q.put(pb.AgentMessage(agent_id=self.agent_id, type=pb.HEARTBEAT,
                                   heartbeat=pb.HeartbeatMessage(timestamp=int(time.time()),
                                                                 cpu_usage=5.0,
                                                                 memory_usage=10.0)))

    def result(self, command, output, exit_code=0, error=""):
        pb = self.pb
        self.q.put(pb.AgentMessage(agent_id=self.agent_id, type=pb.RESULT,
                                   result=pb.CommandResult(command=command, output=output,
                                                           error=error, exit_code=exit_code,
                                                           execution_time=7)))

    def commands(self):
        return [m for m in self.msgs if m.type == self.pb.COMMAND]

    def acks(self):
        return [m for m in self.msgs if m.type == self.pb.ACKNOWLEDGMENT]

    def close(self):
        self.q.put(None)


def post(m, body):
    return http("POST", m.admin_url + "/api/commands", body=body)


def get_cmd(m, cid):
    status, _, body = m.get("/api/commands/" + cid)
    assert status == 200, body
    return body


def wait_status(m, cid, want, timeout=15):
    return wait_for(lambda: (lambda c: c if c["status"] == want else None)(get_cmd(m, cid)),
                    timeout=timeout, what=f"{cid} {want}")


def metric(m, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{m.metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


@pytest.fixture
def hello(hpb, manager):
    ch = grpc.insecure_channel(manager.grpc_addr)
    a = HelloAgent(hpb, ch, "hello-1")
    a.heartbeat()
    wait_for(lambda: "hello-1" in manager.agent_ids(), what="hello agent registered")
    yield a
    a.close()
    ch.close()


def test_ping(hpb, manager):
    pb, pbg = hpb
    with grpc.insecure_channel(manager.grpc_addr) as ch:
        r = pbg.HelloServiceStub(ch).Ping(pb.PingRequest(agent_id="x"), timeout=5)
        assert r.message and r.timestamp > 1600000000
        with pytest.raises(grpc.RpcError) as e:
            pbg.HelloServiceStub(ch).ExecuteCommand(pb.CommandRequest(command="id"), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_listed_with_protocol(manager, hello):
    status, _, a = manager.get("/api/agents/hello-1")
    assert status == 200, a
    assert a["protocol"] == "hello.HelloService"
    assert a["capabilities"] == {"protocol": "hello"}
    status, _, body = manager.get("/api/agents?capability=protocol:hello")
    assert [x["id"] for x in body["agents"]] == ["hello-1"]


def test_exec_over_rest_completes(manager, hello):
    status, _, body = post(manager, {"type": "exec", "params": {"command": "echo hi"},
                                     "agent_id": "hello-1"})
    assert status == 202, body
    cid = body["id"]
    wait_for(lambda: hello.commands(), what="command at the agent")
    c = hello.commands()[0]
    assert c.id == cid and c.command.command == "echo hi"
    hello.result("echo hi", "hi\n")
    done = wait_status(manager, cid, "completed")
    data = done["result"]["data"]
    assert data["output"] == "hi\n" and data["exit_code"] == "0"
    assert data["execution_time"] == "7"
    wait_for(lambda: hello.acks(), what="acknowledgment")
    assert hello.acks()[0].acknowledgment.command_id == cid
    # a non-zero exit code fails the command; internal:status for `status`
    _, _, body = post(manager, {"type": "status", "agent_id": "hello-1"})
    wait_for(lambda: len(hello.commands()) == 2, what="status command at the agent")
    assert hello.commands()[1].command.command == "internal:status"
    hello.result("internal:status", "", exit_code=3, error="broken")
    failed = wait_status(manager, body["id"], "failed")
    assert failed["result"]["data"]["exit_code"] == "3"


def test_other_types_fail_naming_the_protocol(manager, hello):
    status, _, body = post(manager, {"type": "scan", "params": {"target": "10.0.0.1"},
                                     "agent_id": "hello-1"})
    assert status == 202, body
    c = wait_status(manager, body["id"], "failed")
    assert "hello.HelloService" in c["result"]["error"], c
    assert hello.commands() == []
    assert metric(manager, "sirius_hello_rejected_commands_total") == 1


def test_unmatched_and_late_results_are_counted(manager, hello):
    hello.result("never sent", "")
    wait_for(lambda: metric(manager, "sirius_hello_unmatched_results_total") == 1,
             what="unmatched counted")
    status, _, body = post(manager, {"type": "exec", "params": {"command": "sleep 60"},
                                     "agent_id": "hello-1", "timeout_seconds": 1})
    assert status == 202, body
    cid = body["id"]
    wait_status(manager, cid, "timed_out", timeout=20)
    hello.result("sleep 60", "too late")
    wait_for(lambda: metric(manager, "sirius_hello_unmatched_results_total") == 2,
             what="late result counted")
    assert get_cmd(manager, cid)["status"] == "timed_out"
    assert not hello.done.is_set()  # the stream goes on
