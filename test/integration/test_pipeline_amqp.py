"""End-to-end command lifecycle over AMQP with a real redis-server and rabbitmq-server: commands
published to AMQP_COMMAND_QUEUE run on sirius-agent or on a Python grpcio agent and their final
records arrive on AMQP_RESULT_QUEUE (and on reply_to with the correlation_id); invalid messages
are dead-lettered with x-rejection-reason; timeouts, retries on agent loss and deadline expiry
reach their final statuses. One broker serves the module; each test has its own queues, redis
and manager."""
import contextlib
import json
import datetime

import grpc
import pytest

from conftest import wait_for
from pipeline_fixtures import (Collector, broker, declare, pipeline_env,  # noqa: F401
                               publish, redis, start_manager, store_statuses)
from test_grpc_helpers import AgentStream, wait_registered

pika = pytest.importorskip("pika")


@pytest.fixture
def started(tmp_path):
    ms = []
    yield ms
    for m in ms:
        with contextlib.suppress(Exception):
            m.stop()


@pytest.fixture
def collectors():
    cs = []
    yield cs
    for c in cs:
        c.close()


def setup_pipeline(broker, redis, tmp_path, started, collectors, name, **extra):  # noqa: F811
    cmd_q, res_q = broker.queues(name)
    declare(broker.port, cmd_q, res_q)
    m = start_manager(str(tmp_path), pipeline_env(broker, redis, cmd_q, res_q, **extra), started)
    res = Collector(broker.port, res_q)
    collectors.append(res)
    return m, cmd_q, res


def start_agent(agent_factory, m, agent_id, *args):
    a = agent_factory(m.grpc_addr, args=["--id", agent_id, "--heartbeat-interval", "1",
                                         "--scan-duration-ms", "50", *args])
    wait_registered(m, agent_id)
    return a


def check_record(d, cid, ctype, status):
    assert d["id"] == cid
    assert d["type"] == ctype
    assert d["status"] == status, json.dumps(d)
    assert d.get("created_at") and d.get("completed_at"), d


def test_amqp_lifecycle_with_sirius_agent(broker, redis, tmp_path, started,  # noqa: F811
                                          collectors, agent_factory):
    m, cmd_q, res = setup_pipeline(broker, redis, tmp_path, started, collectors, "life")
    start_agent(agent_factory, m, "e2e-a1", "--max-concurrent", "4")
    reply_q = cmd_q + ".reply"
    declare(broker.port, reply_q)
    replies = Collector(broker.port, reply_q)
    dlq = Collector(broker.port, cmd_q + ".dlq")
    collectors += [replies, dlq]

    publish(broker.port, cmd_q, [
        {"id": "c-echo", "type": "echo", "params": {"a": "x", "n": 2, "b": True}},
        {"id": "c-sleep", "type": "sleep", "params": {"seconds": "0.2"}},
        {"id": "c-status", "type": "status"},
        {"id": "c-scan", "type": "scan", "params": {"target": "10.0.0.5"}},
        {"id": "c-unknown", "type": "frobnicate"},
        ({"id": "c-reply", "type": "echo", "params": {"k": "v"}},
         {"reply_to": reply_q, "correlation_id": "corr-42"}),
        "this is not json{",
        {"id": "c-notype", "params": {"a": "b"}},
        {"id": "c-objparam", "type": "echo", "params": {"x": {"y": 1}}},
    ])
    good = ["c-echo", "c-sleep", "c-status", "c-scan", "c-unknown", "c-reply"]
    finals = res.wait_final(good, timeout=30)

    echo = finals["c-echo"]
    check_record(echo, "c-echo", "echo", "completed")
    assert echo["result"]["status"] == "completed"
    assert echo["result"]["data"] == {"a": "x", "n": "2", "b": "true"}
    assert echo["agent_id"] == "e2e-a1"
    assert echo.get("dispatched_at") and echo.get("started_at")
    check_record(finals["c-sleep"], "c-sleep", "sleep", "completed")
    check_record(finals["c-status"], "c-status", "status", "completed")
    assert finals["c-status"]["result"]["data"], "status returns host facts"
    check_record(finals["c-scan"], "c-scan", "scan", "completed")
    unk = finals["c-unknown"]
    check_record(unk, "c-unknown", "frobnicate", "failed")
    assert unk["result"]["status"] == "rejected"
    check_record(finals["c-reply"], "c-reply", "echo", "completed")

    # reply_to gets its own copy with the correlation id
    replies.wait(lambda s: any(isinstance(d, dict) and d.get("id") == "c-reply"
                               and d.get("status") == "completed" for d, _ in s.messages),
                 timeout=15, what="reply_to copy")
    d, props = next((d, p) for d, p in replies.messages if d.get("id") == "c-reply")
    assert props.correlation_id == "corr-42"
    assert d["result"]["data"] == {"k": "v"}
    assert props.delivery_mode == 2

    # the three invalid messages are dead-lettered with a reason; nothing is lost
    dlq.wait(lambda s: len(s.messages) >= 3, timeout=15, what="3 dead letters")
    reasons = {}
    for body, props in dlq.messages:
        assert props.headers and props.headers.get("x-rejection-reason"), props
        reasons[body if isinstance(body, str) else body.get("id")] = \
            props.headers["x-rejection-reason"]
    assert set(reasons) == {"this is not json{", "c-notype", "c-objparam"}, reasons
    assert "type" in reasons["c-notype"]
    assert "params" in reasons["c-objparam"]
    assert "json" in reasons["this is not json{"].lower()

    # the store agrees: every accepted command is final there, the rejected ones never stored
    st = store_statuses(redis, good + ["c-notype", "c-objparam"])
    assert all(st[i] in ("completed", "failed") for i in good), st
    assert st["c-notype"] is None and st["c-objparam"] is None
    # each accepted id reached the result queue exactly once here (no restarts)
    assert all(len(res.by_id[i]) == 1 for i in good), {i: len(res.by_id[i]) for i in good}


class AutoAgent(AgentStream):
    """A third-party agent written with grpcio: registers, then answers every CommandMessage with
    `accepted` and then `completed` carrying the params as data. answer=False: never answers;
    answer="accepted": only says accepted (a command that hangs at the agent)."""

    def __init__(self, pb, channel, agent_id, answer=True):
        self.agent_id = agent_id
        self.answer = answer
        self.seen = []
        super().__init__(pb, channel, metadata=[("agent-id", agent_id)], timeout=120)
        self.register(agent_id, max_concurrent="8", capabilities="scan_type=py")

    def _read(self):
        pb = self.pb.agent_pb2
        try:
            for c in self.call:
                self.seen.append(c)
                if not self.answer or c.type == "cancel":
                    continue
                for st in (("accepted",) if self.answer == "accepted"
                           else ("accepted", "completed")):
                    self.send(agent_id=self.agent_id, status=pb.IDLE,
                              command_result=pb.CommandResult(
                                  command_id=c.id, status=st, data=dict(c.params),
                                  completed_at=int(datetime.datetime.now().timestamp())))
            self.code = self.call.code()
        except grpc.RpcError as e:
            self.code = e.code()
            self.details = e.details()
        finally:
            self.done.set()


def test_amqp_lifecycle_with_python_grpc_agent(pb, broker, redis, tmp_path,  # noqa: F811
                                               started, collectors):
    m, cmd_q, res = setup_pipeline(broker, redis, tmp_path, started, collectors, "pyagent")
    ch = grpc.insecure_channel(m.grpc_addr)
    try:
        ag = AutoAgent(pb, ch, "py-agent-1")
        wait_registered(m, "py-agent-1")
        ids = [f"py-{i}" for i in range(20)]
        publish(broker.port, cmd_q, [{"id": i, "type": "anything", "params": {"n": str(n)},
                                      "capabilities": {"scan_type": "py"}}
                                     for n, i in enumerate(ids)])
        finals = res.wait_final(ids, timeout=30)
        for n, i in enumerate(ids):
            check_record(finals[i], i, "anything", "completed")
            assert finals[i]["agent_id"] == "py-agent-1"
            assert finals[i]["result"]["data"] == {"n": str(n)}
        assert {c.id for c in ag.seen} == set(ids)
        assert all(c.timeout_seconds > 0 for c in ag.seen)
        ag.close()
    finally:
        ch.close()


def test_timeout_retries_and_expiry(pb, broker, redis, tmp_path, started,  # noqa: F811
                                    collectors, agent_factory):
    m, cmd_q, res = setup_pipeline(broker, redis, tmp_path, started, collectors, "fail",
                                   COMMAND_TIMEOUT_GRACE="0.2", MAX_RETRIES="2",
                                   AGENT_TIMEOUT="3")
    # Deadline 1 s ahead with no agent connected: expired.
    deadline = (datetime.datetime.now(datetime.timezone.utc)
                + datetime.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    publish(broker.port, cmd_q, [{"id": "t-expire", "type": "echo", "deadline": deadline}])
    d = res.wait_final(["t-expire"], timeout=15)["t-expire"]
    check_record(d, "t-expire", "echo", "expired")

    # timeout_seconds 1 with a 5 s sleep on sirius-agent: the agent enforces the timeout itself
    # and reports failed/"timeout" at 1 s, before the manager's own timer (1 s + 0.2 s grace).
    start_agent(agent_factory, m, "e2e-slow")
    publish(broker.port, cmd_q, [{"id": "t-timeout", "type": "sleep", "timeout_seconds": 1,
                                  "params": {"seconds": "5"}}])
    d = res.wait_final(["t-timeout"], timeout=15)["t-timeout"]
    assert d["status"] in ("timed_out", "failed"), json.dumps(d)
    if d["status"] == "failed":
        assert d["result"]["error"] == "timeout", json.dumps(d)
    assert d["agent_id"] == "e2e-slow"

    # An agent that accepts and then never answers: the manager's timer makes it timed_out
    # after timeout_seconds + COMMAND_TIMEOUT_GRACE and tells the agent to cancel.
    ch = grpc.insecure_channel(m.grpc_addr)
    try:
        hang = AutoAgent(pb, ch, "py-hang", answer="accepted")
        wait_registered(m, "py-hang")
        publish(broker.port, cmd_q, [{"id": "t-hang", "type": "sleep", "timeout_seconds": 1,
                                      "agent_id": "py-hang", "params": {"seconds": "5"}}])
        d = res.wait_final(["t-hang"], timeout=15)["t-hang"]
        check_record(d, "t-hang", "sleep", "timed_out")
        assert d["agent_id"] == "py-hang"
        wait_for(lambda: any(c.type == "cancel" and c.params.get("command_id") == "t-hang"
                             for c in hang.seen), timeout=10, what="cancel sent to the agent")
        hang.cancel()
    finally:
        ch.close()

    # Agent loss: a Python agent that takes the command and vanishes, three times (first try +
    # MAX_RETRIES=2 re-dispatches); then the command fails with the reason.
    ch = grpc.insecure_channel(m.grpc_addr)
    try:
        publish(broker.port, cmd_q, [{"id": "t-lost", "type": "echo", "agent_id": "py-loser"}])
        for attempt in range(3):
            ag = AutoAgent(pb, ch, "py-loser", answer=False)
            wait_for(lambda: any(c.id == "t-lost" for c in ag.seen), timeout=15,
                     what=f"dispatch {attempt + 1} of t-lost")
            ag.cancel()
            ag.wait()
        d = res.wait_final(["t-lost"], timeout=15)["t-lost"]
        check_record(d, "t-lost", "echo", "failed")
        assert d["attempts"] == 3, d
        assert "agent lost" in (d["result"].get("error") or d.get("error") or ""), d
    finally:
        ch.close()
    st = store_statuses(redis, ["t-expire", "t-hang", "t-lost"])
    assert st == {"t-expire": "expired", "t-hang": "timed_out", "t-lost": "failed"}


def test_intake_backpressure_resumes(broker, redis, tmp_path, started,  # noqa: F811
                                     collectors, agent_factory):
    """COMMAND_QUEUE_SIZE 2 with 800 commands: the intake pauses whenever the queue is full and
    must resume every time it drains, until every command has run."""
    m, cmd_q, res = setup_pipeline(broker, redis, tmp_path, started, collectors, "bp",
                                   COMMAND_QUEUE_SIZE="2", SIRIUS_LOG_LEVEL="info")
    agent_factory(m.grpc_addr, args=["--count", "10", "--id-prefix", "bp-", "--max-concurrent",
                                     "2", "--heartbeat-interval", "1"])
    wait_for(lambda: len(m.agent_ids()) == 10, timeout=20, what="10 agents")
    ids = [f"bp-{i:04d}" for i in range(800)]
    publish(broker.port, cmd_q, [{"id": i, "type": "echo", "params": {"i": i}} for i in ids])
    finals = res.wait_final(ids, timeout=30)
    assert all(d["status"] == "completed" for d in finals.values())
