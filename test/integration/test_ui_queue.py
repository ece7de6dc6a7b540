"""SiriusScan's UI queue protocol end to end, with a real rabbitmq-server, redis-server and
sirius-agent: the UI's messages (published with pika to a NON-durable queue, as the UI declares
it) get exactly one JSON reply each on the response queue; a command runs on the agent through
the normal lifecycle (listed by GET /api/commands) and its final JSON lands under
`cmd:response:<agent>:<id>`; `connected_agents` holds the agent ids; malformed messages and
unknown agents are answered with success=false and never requeued."""
import contextlib
import json
import time

import pytest

from conftest import wait_for
from pipeline_fixtures import broker, declare, pipeline_env, redis, start_manager  # noqa: F401
from test_grpc_helpers import wait_registered

pika = pytest.importorskip("pika")


@pytest.fixture
def started(tmp_path):
    ms = []
    yield ms
    for m in ms:
        with contextlib.suppress(Exception):
            m.stop()


class UI:
    """The UI's side: publishes to the command queue, reads the response queue (both declared
    non-durable, as SiriusScan's UI does)."""

    def __init__(self, port, cmd_q, resp_q):
        self.cmd_q, self.resp_q = cmd_q, resp_q
        self.conn = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", port, heartbeat=30, connection_attempts=1, socket_timeout=5))
        self.ch = self.conn.channel()
        self.ch.queue_declare(cmd_q, durable=False)
        self.ch.queue_declare(resp_q, durable=False)
        self.replies = []
        self.reply_props = []
        self.ch.basic_consume(resp_q, self._on_msg, auto_ack=True)

    def _on_msg(self, ch, method, props, body):
        self.replies.append(json.loads(body))
        self.reply_props.append(props)

    def send(self, msg, **props):
        body = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
        self.ch.basic_publish("", self.cmd_q, body, pika.BasicProperties(**props))

    def reply(self, n_before, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.replies) <= n_before:
            self.conn.process_data_events(time_limit=0.1)
        assert len(self.replies) > n_before, "no reply"
        return self.replies[n_before]

    def ask(self, msg, **props):
        n = len(self.replies)
        self.send(msg, **props)
        r = self.reply(n)
        # exactly one reply per message
        self.conn.process_data_events(time_limit=0.3)
        assert len(self.replies) == n + 1, self.replies[n:]
        return r

    def depth(self):
        return self.ch.queue_declare(self.cmd_q, passive=True).method.message_count

    def close(self):
        with contextlib.suppress(Exception):
            self.conn.close()


def start_ui(broker, redis, tmp_path, started, agent_factory, name, agents=("ui-a1",)):  # noqa: F811
    cmd_q, res_q = broker.queues(name)
    ui_q, resp_q = f"{name}-agent_commands", f"{name}-agent_response"
    declare(broker.port, cmd_q, res_q)
    env = pipeline_env(broker, redis, cmd_q, res_q, SIRIUS_UI_COMMAND_QUEUE=ui_q,
                       SIRIUS_UI_RESPONSE_QUEUE=resp_q)
    m = start_manager(str(tmp_path), env, started)
    for aid in agents:
        agent_factory(m.grpc_addr, args=["--id", aid, "--heartbeat-interval", "1",
                                         "--allow-exec"])
        wait_registered(m, aid)
    ui = UI(broker.port, ui_q, resp_q)
    return m, ui


def connected_agents(redis):  # noqa: F811
    v = redis.cmd("GET", "connected_agents")
    return None if v is None else json.loads(v)


def test_list_agents_and_connected_agents_key(broker, redis, tmp_path, started,  # noqa: F811
                                              agent_factory):
    m, ui = start_ui(broker, redis, tmp_path, started, agent_factory, "uilist",
                  agents=("ui-a1", "ui-a2"))
    try:
        r = ui.ask({"action": "list_agents", "userId": "u1",
                    "timestamp": "2026-12-02T10:00:00Z"})
        assert r["success"] is True, r
        assert sorted(a["id"] for a in r["agents"]) == ["ui-a1", "ui-a2"]
        assert r["count"] == 2
        assert all("status" in a and "hostname" in a for a in r["agents"])
        # the UI's key: no prefix, a TTL of at most 120 s
        wait_for(lambda: sorted(connected_agents(redis) or []) == ["ui-a1", "ui-a2"],
                 timeout=10, what="connected_agents")
        ttl = redis.cmd("TTL", "connected_agents")
        assert 0 < ttl <= 120, ttl
        # reply_to and correlation_id: the reply also goes there, with the id
        priv = ui.ch.queue_declare("", exclusive=True).method.queue
        got = []
        ui.ch.basic_consume(priv, lambda ch, meth, p, b: got.append((json.loads(b), p)),
                            auto_ack=True)
        ui.ask({"action": "list_agents"}, reply_to=priv, correlation_id="corr-7")
        wait_for(lambda: ui.conn.process_data_events(time_limit=0.1) or got, timeout=10,
                 what="reply on reply_to")
        assert got[0][0]["success"] is True and got[0][1].correlation_id == "corr-7"
        assert ui.reply_props[-1].correlation_id == "corr-7"
    finally:
        ui.close()


def test_command_runs_and_result_lands_in_valkey(broker, redis, tmp_path, started,  # noqa: F811
                                                 agent_factory):
    m, ui = start_ui(broker, redis, tmp_path, started, agent_factory, "uicmd")
    try:
        r = ui.ask({"command": "echo hello-from-ui", "agentId": "ui-a1", "userId": "u1",
                    "timestamp": "2026-12-02T10:00:01Z",
                    "target": {"type": "agent", "id": "ui-a1"}})
        assert r["success"] is True, r
        cid = r["command_id"]
        assert cid and r["agent_id"] == "ui-a1"
        key = f"cmd:response:ui-a1:{cid}"

        def final():
            v = redis.cmd("GET", key)
            d = json.loads(v) if v else None
            return d if d and d["status"] in ("completed", "failed") else None
        d = wait_for(final, timeout=20, what="final cmd:response")
        assert d["status"] == "completed", d
        assert d["command_id"] == cid and d["agent_id"] == "ui-a1"
        assert d["command"] == "echo hello-from-ui"
        assert d["output"].strip() == "hello-from-ui"
        assert d["exit_code"] == 0 and d["error"] == ""
        assert d["start_time"] and d["end_time"]
        ttl = redis.cmd("TTL", key)
        assert 23 * 3600 < ttl <= 24 * 3600, ttl
        # the same lifecycle as any command: stored, listed, completed
        st, _, body = m.get(f"/api/commands/{cid}")
        assert st == 200 and body["status"] == "completed" and body["type"] == "exec", body
        st, _, body = m.get("/api/commands?type=exec")
        assert cid in [c["id"] for c in body["commands"]]
        # a failing command line: failed with its exit code
        r = ui.ask({"command": "exit 3", "target": {"type": "agent", "id": "ui-a1"}})
        key2 = f"cmd:response:ui-a1:{r['command_id']}"
        wait_for(lambda: (json.loads(redis.cmd("GET", key2) or "{}").get("status")
                          == "failed"), timeout=20, what="failed cmd:response")
        d2 = json.loads(redis.cmd("GET", key2))
        assert d2["exit_code"] == 3 and d2["error"], d2
        assert ui.depth() == 0
    finally:
        ui.close()


def test_target_all_broadcasts(broker, redis, tmp_path, started, agent_factory):  # noqa: F811
    m, ui = start_ui(broker, redis, tmp_path, started, agent_factory, "uiall",
                  agents=("ui-b1", "ui-b2"))
    try:
        r = ui.ask({"command": "echo all", "target": {"type": "all", "id": ""}})
        assert r["success"] is True and r["target"] == "all", r
        cid = r["command_id"]

        def done():
            st, _, body = m.get(f"/api/commands/{cid}")
            return body if st == 200 and body["status"] == "completed" else None
        body = wait_for(done, timeout=20, what="broadcast completed")
        assert len(body["children"]) == 2
        for child in body["children"]:
            cid2 = child if isinstance(child, str) else child["id"]
            st, _, c = m.get(f"/api/commands/{cid2}")
            key = f"cmd:response:{c['agent_id']}:{cid2}"
            wait_for(lambda: redis.cmd("GET", key), timeout=10, what=key)
            assert json.loads(redis.cmd("GET", key))["output"].strip() == "all"
    finally:
        ui.close()


def test_malformed_and_unknown_are_answered_not_requeued(broker, redis, tmp_path,  # noqa: F811
                                                         started, agent_factory):
    m, ui = start_ui(broker, redis, tmp_path, started, agent_factory, "uibad")
    try:
        cases = [
            (b"{not json", "malformed JSON"),
            (b"\xff\xfe{}", "invalid UTF-8"),
            (b"[1,2]", "not a JSON object"),
            ({"action": "reboot_everything"}, "Unknown action"),
            ({"userId": "u1"}, "Unknown or empty command"),
            ({"command": "id", "target": {"type": "agent", "id": "nobody"}}, "nobody not connected"),
            ({"command": "id", "target": {"type": "planet", "id": "x"}}, "Invalid target type"),
            ({"command": 5}, "must be strings"),
        ]
        for body, why in cases:
            r = ui.ask(body)
            assert r["success"] is False, (body, r)
            assert why in r["error"], (body, r)
        # acked, not requeued: nothing left in the queue, and no second reply came
        time.sleep(0.5)
        ui.conn.process_data_events(time_limit=0.5)
        assert ui.depth() == 0
        assert len(ui.replies) == len(cases)
        # still serving
        assert ui.ask({"action": "list_agents"})["success"] is True
    finally:
        ui.close()


def test_ui_off_by_default(broker, redis, tmp_path, started):  # noqa: F811
    cmd_q, res_q = broker.queues("uioff")
    declare(broker.port, cmd_q, res_q)
    m = start_manager(str(tmp_path), pipeline_env(broker, redis, cmd_q, res_q), started)
    assert not any("UI queue" in e.get("msg", "") for e in m.log_events())
    assert redis.cmd("GET", "connected_agents") is None


def test_store_away_requeues_then_accepts_once(broker, redis, tmp_path, started,  # noqa: F811
                                               agent_factory):
    """While Valkey is away a command message is nacked (requeued) every UI_QUEUE_RETRY_MS,
    not lost and not answered; once Valkey is back it is stored and answered exactly once."""
    m, ui = start_ui(broker, redis, tmp_path, started, agent_factory, "uistore")
    try:
        redis.kill()
        wait_for(lambda: m.get("/ready", timeout=1)[0] == 503, timeout=15, what="not ready")
        n = len(ui.replies)
        ui.send({"command": "echo back", "target": {"type": "agent", "id": "ui-a1"}})
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            ui.conn.process_data_events(time_limit=0.1)
        assert len(ui.replies) == n, ui.replies[n:]  # no answer while the store is away
        redis.start()
        r = ui.reply(n, timeout=30)
        assert r["success"] is True, r
        key = f"cmd:response:ui-a1:{r['command_id']}"
        wait_for(lambda: (json.loads(redis.cmd("GET", key) or "{}").get("status")
                          == "completed"), timeout=20, what="completed after the outage")
        ui.conn.process_data_events(time_limit=1.5)
        assert len(ui.replies) == n + 1, ui.replies[n:]
        assert ui.depth() == 0
        assert any(e.get("msg") == "command accepted" and e.get("component") == "ui-queue"
                   for e in m.log_events())
    finally:
        ui.close()
