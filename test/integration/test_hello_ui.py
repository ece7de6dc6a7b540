"""SiriusScan as it runs today, with sirius-manager in place of its agent server: a Python
grpcio hello agent (generated from proto/hello.proto, not our C client) registers; the UI
publishes a command with pika to its non-durable queue; the agent gets the command line,
answers with a RESULT (no id); the reply arrives on the response queue and the final JSON under
`cmd:response:<agent>:<id>` in a real redis-server. And a hello agent that vanishes
mid-command gets the same treatment as a scan agent: its command is re-queued and finishes on
the agent that takes it next."""
import contextlib
import json

import grpc
import pytest

from conftest import wait_for
from pipeline_fixtures import broker, declare, pipeline_env, redis, start_manager  # noqa: F401
from test_hello_agent import HelloAgent, get_cmd, hpb, post, wait_status  # noqa: F401
from test_ui_queue import UI, started  # noqa: F401

pika = pytest.importorskip("pika")


def boot(broker, redis, tmp_path, started, name, **extra):  # noqa: F811
    cmd_q, res_q = broker.queues(name)
    ui_q, resp_q = f"{name}-agent_commands", f"{name}-agent_response"
    declare(broker.port, cmd_q, res_q)
    env = pipeline_env(broker, redis, cmd_q, res_q, SIRIUS_UI_COMMAND_QUEUE=ui_q,
                       SIRIUS_UI_RESPONSE_QUEUE=resp_q, **extra)
    m = start_manager(str(tmp_path), env, started)
    return m, UI(broker.port, ui_q, resp_q)


def test_ui_command_to_grpcio_hello_agent(hpb, broker, redis, tmp_path, started):  # noqa: F811
    m, ui = boot(broker, redis, tmp_path, started, "helloui")
    ch = grpc.insecure_channel(m.grpc_addr)
    a = HelloAgent(hpb, ch, "go-agent-1")
    try:
        a.heartbeat()
        wait_for(lambda: "go-agent-1" in m.agent_ids(), what="hello agent registered")
        r = ui.ask({"action": "list_agents"})
        assert r["success"] and [x["id"] for x in r["agents"]] == ["go-agent-1"], r
        r = ui.ask({"command": "uname -a", "agentId": "go-agent-1", "userId": "admin",
                    "timestamp": "2026-12-02T10:00:00Z",
                    "target": {"type": "agent", "id": "go-agent-1"}})
        assert r["success"] is True, r
        cid = r["command_id"]
        wait_for(lambda: a.commands(), what="the command line at the agent")
        sent = a.commands()[0]
        assert sent.id == cid and sent.command.command == "uname -a"
        a.result("uname -a", "Linux go-agent-1 6.1.0\n", exit_code=0)
        c = wait_status(m, cid, "completed")
        assert c["result"]["data"]["output"] == "Linux go-agent-1 6.1.0\n"
        wait_for(lambda: a.acks(), what="ACKNOWLEDGMENT")
        assert a.acks()[0].acknowledgment.command_id == cid
        key = f"cmd:response:go-agent-1:{cid}"
        doc = wait_for(lambda: (lambda v: (lambda d: d if d["status"] == "completed" else None)(
            json.loads(v)) if v else None)(redis.cmd("GET", key)), what=f"{key} completed")
        assert doc["command_id"] == cid and doc["agent_id"] == "go-agent-1"
        assert doc["command"] == "uname -a" and doc["output"] == "Linux go-agent-1 6.1.0\n"
        assert doc["exit_code"] == 0 and doc["end_time"]
        wait_for(lambda: (lambda v: v and json.loads(v) == ["go-agent-1"])(
            redis.cmd("GET", "connected_agents")), what="connected_agents")
        # an unknown agent is answered, not requeued
        r = ui.ask({"command": "id", "target": {"type": "agent", "id": "nobody"}})
        assert r["success"] is False and "nobody" in r["error"], r
        assert ui.depth() == 0
    finally:
        a.close()
        ch.close()
        ui.close()


def test_hello_agent_vanishing_mid_command_is_retried(hpb, broker, redis, tmp_path,  # noqa: F811
                                                      started):  # noqa: F811
    m, ui = boot(broker, redis, tmp_path, started, "hellogone", AGENT_TIMEOUT="300")
    chans = [grpc.insecure_channel(m.grpc_addr) for _ in range(2)]
    a1 = HelloAgent(hpb, chans[0], "gone-1")
    a2 = None
    try:
        a1.heartbeat()
        wait_for(lambda: "gone-1" in m.agent_ids(), what="first agent registered")
        st, _, body = post(m, {"type": "exec", "params": {"command": "sleep 30"}})
        assert st == 202, body
        cid = body["id"]
        wait_for(lambda: a1.commands(), what="the command at the first agent")
        assert get_cmd(m, cid)["attempts"] == 1
        chans[0].close()  # the agent vanishes with the command outstanding
        wait_for(lambda: "gone-1" not in m.agent_ids(), what="first agent gone")
        a2 = HelloAgent(hpb, chans[1], "gone-2")
        a2.heartbeat()
        wait_for(lambda: a2.commands(), timeout=20, what="the command re-queued to the second")
        assert a2.commands()[0].id == cid
        c = get_cmd(m, cid)
        assert c["attempts"] == 2 and c["agent_id"] == "gone-2", c
        a2.result("sleep 30", "", exit_code=0)
        wait_status(m, cid, "completed")
    finally:
        with contextlib.suppress(Exception):
            a1.close()
        if a2 is not None:
            a2.close()
        for ch in chans:
            ch.close()
        ui.close()
