"""The command endpoints of the admin API through the real sirius-manager (in-process store) and
the real sirius-agent: submit, arrays, idempotency, validation, get, cancel in each status, list
filters and cursors, maintenance mode, timeouts, /api/status and /api/admin/shutdown."""
import json
import socket
import time

import pytest

from conftest import http, wait_for


def post(m, body, headers=None, path="/api/commands"):
    return http("POST", m.admin_url + path, body=body, headers=headers)


def get_cmd(m, cid):
    status, _, body = m.get("/api/commands/" + cid)
    assert status == 200, body
    return body


def wait_status(m, cid, want, timeout=10):
    want = {want} if isinstance(want, str) else set(want)
    return wait_for(lambda: (lambda c: c if c["status"] in want else None)(get_cmd(m, cid)),
                    timeout=timeout, what=f"{cid} in {want}")


def start_agent(m, agent_factory, aid="a1", args=()):
    agent_factory(m.grpc_addr, ["--id", aid, "--heartbeat-interval", "0.5"] + list(args))
    wait_for(lambda: aid in m.agent_ids(), timeout=10, what=f"agent {aid} registered")


def err_of(body):
    assert isinstance(body, dict) and "error" in body, body
    return body["error"]


def test_submit_runs_to_completion_with_result(manager, agent_factory):
    m = manager
    start_agent(m, agent_factory)
    status, _, body = post(m, {"type": "echo", "params": {"x": 1, "hello": "world", "b": True}})
    assert status == 202, body
    assert set(body) >= {"id", "status"} and body["status"] == "queued"
    c = wait_status(m, body["id"], "completed")
    assert c["result"]["status"] == "completed"
    assert c["result"]["data"] == {"x": "1", "hello": "world", "b": "true"}
    assert c["agent_id"] == "a1" and c["attempts"] == 1
    for k in ("created_at", "dispatched_at", "started_at", "completed_at"):
        assert c[k].endswith("Z"), k


def test_array_submit_in_order(manager, agent_factory):
    m = manager
    start_agent(m, agent_factory, args=["--max-concurrent", "4"])
    cmds = [{"type": "echo", "params": {"i": str(i)}} for i in range(5)]
    status, _, body = post(m, cmds)
    assert status == 202, body
    assert isinstance(body, list) and len(body) == 5
    assert len({e["id"] for e in body}) == 5
    for i, e in enumerate(body):
        c = wait_status(m, e["id"], "completed")
        assert c["result"]["data"] == {"i": str(i)}


def test_idempotency(manager):
    m = manager  # no agent: commands stay queued
    h = {"Idempotency-Key": "k-123"}
    s1, _, b1 = post(m, {"type": "echo"}, headers=h)
    s2, _, b2 = post(m, {"type": "echo"}, headers=h)
    assert s1 == 202 and s2 == 202, (b1, b2)
    assert b1["id"] == b2["id"] and b2.get("duplicate") is True and "duplicate" not in b1
    # arrays: element i gets key "K:i"
    ha = {"Idempotency-Key": "batch-7"}
    s1, _, a1 = post(m, [{"type": "echo"}, {"type": "status"}], headers=ha)
    s2, _, a2 = post(m, [{"type": "echo"}, {"type": "status"}], headers=ha)
    assert s1 == 202 and s2 == 202
    assert [e["id"] for e in a1] == [e["id"] for e in a2]
    assert all(e.get("duplicate") for e in a2)
    # a client-chosen id is idempotent too
    s1, _, c1 = post(m, {"id": "my-cmd-1", "type": "echo"})
    s2, _, c2 = post(m, {"id": "my-cmd-1", "type": "echo"})
    assert (s1, s2) == (202, 202) and c1["id"] == c2["id"] == "my-cmd-1"
    status, _, body = m.get("/api/commands?limit=1000")
    assert len(body["commands"]) == 4
    # an over-long key is refused, naming the header
    s, _, b = post(m, {"type": "echo"}, headers={"Idempotency-Key": "x" * 200})
    assert s == 400 and "Idempotency-Key" in err_of(b)["message"]


@pytest.mark.parametrize("body,field", [
    (b"{not json", "body"),
    ({"params": {"a": "b"}}, "type"),
    ({"type": ""}, "type"),
    ({"type": "echo", "params": {"a": {"nested": 1}}}, "params"),
    ({"type": "echo", "params": {"a": [1]}}, "params"),
    ({"type": "echo", "priority": 12}, "priority"),
    ([], "body"),
    ([{"type": "echo"}] * 1001, "body"),
    ([{"type": "echo"}, {"type": "echo", "priority": -1}], "element 1"),
    ("\"just a string\"", "body"),
])
def test_bad_requests(manager, body, field):
    m = manager
    status, _, b = post(m, body)
    assert status == 400, b
    e = err_of(b)
    assert e["code"] in ("bad_request", "invalid_field"), e
    assert field in e["message"], e
    # nothing was stored
    assert m.get("/api/commands")[2]["commands"] == []


def test_bad_json_code_and_media_type(manager):
    m = manager
    status, _, b = post(m, b"{oops")
    assert status == 400 and err_of(b)["code"] == "bad_request"
    status, _, b = post(m, {"type": "echo"}, headers={"Content-Type": "text/plain"})
    assert status == 415 and err_of(b)["code"] == "unsupported_media_type"
    status, _, b = post(m, {"type": "echo"},
                        headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 202, b


def test_array_with_invalid_element_stores_nothing(manager):
    m = manager
    status, _, b = post(m, [{"type": "echo"}, {"type": "echo"}, {"type": "echo", "params": {"p": {}}}])
    assert status == 400
    msg = err_of(b)["message"]
    assert "element 2" in msg and "params" in msg
    assert m.get("/api/commands")[2]["commands"] == []


def test_get_404(manager):
    m = manager
    status, _, b = m.get("/api/commands/nope")
    assert status == 404 and err_of(b)["code"] == "not_found"
    status, _, b = http("PUT", m.admin_url + "/api/commands/nope/cancel")
    assert status == 404


def test_cancel_queued_running_final(manager, agent_factory):
    m = manager
    # queued: no agent connected
    _, _, q = post(m, {"type": "echo"})
    assert get_cmd(m, q["id"])["status"] == "queued"
    status, _, c = http("PUT", m.admin_url + f"/api/commands/{q['id']}/cancel")
    assert status == 200 and c["status"] == "cancelled" and c["id"] == q["id"]
    # final: cancelling again is a conflict
    status, _, b = http("PUT", m.admin_url + f"/api/commands/{q['id']}/cancel")
    assert status == 409 and err_of(b)["code"] == "conflict"
    assert b["command"]["status"] == "cancelled"
    # running: sleep 5 on a real agent, which is told to stop
    start_agent(m, agent_factory)
    _, _, r = post(m, {"type": "sleep", "params": {"seconds": 5}})
    wait_status(m, r["id"], "running")
    t0 = time.monotonic()
    status, _, c = http("PUT", m.admin_url + f"/api/commands/{r['id']}/cancel")
    assert status == 200 and c["status"] == "cancelled", c
    assert time.monotonic() - t0 < 2
    # the agent is free again: a new command completes long before the sleep would have ended
    _, _, e = post(m, {"type": "echo", "params": {"after": "cancel"}})
    wait_status(m, e["id"], "completed", timeout=4)
    # a completed command cannot be cancelled
    status, _, b = http("PUT", m.admin_url + f"/api/commands/{e['id']}/cancel")
    assert status == 409


def test_list_filters_and_cursor(manager, agent_factory):
    m = manager
    start_agent(m, agent_factory, aid="lister", args=["--max-concurrent", "8"])
    _, _, done = post(m, [{"type": "echo", "params": {"i": str(i)}} for i in range(4)])
    for e in done:
        wait_status(m, e["id"], "completed")
    _, _, parked = post(m, [{"type": "status", "agent_id": "ghost"} for _ in range(3)])
    ids = [e["id"] for e in done] + [e["id"] for e in parked]

    _, _, b = m.get("/api/commands")
    assert [c["id"] for c in b["commands"]] == ids and b["next_cursor"] is None
    _, _, b = m.get("/api/commands?status=completed")
    assert [c["id"] for c in b["commands"]] == ids[:4]
    _, _, b = m.get("/api/commands?status=queued&status=cancelled")
    assert [c["id"] for c in b["commands"]] == ids[4:]
    _, _, b = m.get("/api/commands?status=completed,queued")
    assert len(b["commands"]) == 7
    _, _, b = m.get("/api/commands?type=status")
    assert [c["id"] for c in b["commands"]] == ids[4:]
    _, _, b = m.get("/api/commands?agent_id=lister")
    assert [c["id"] for c in b["commands"]] == ids[:4]
    _, _, b = m.get("/api/commands?agent_id=ghost&type=status&status=queued")
    assert len(b["commands"]) == 3

    seen, cursor, pages = [], None, 0
    while True:
        q = "/api/commands?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, _, b = m.get(q)
        assert status == 200, b
        assert len(b["commands"]) <= 2
        seen += [c["id"] for c in b["commands"]]
        pages += 1
        cursor = b["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert seen == ids and pages >= 4

    for q, p in [("status=sleepy", "status"), ("limit=0", "limit"), ("limit=1001", "limit"),
                 ("limit=x", "limit"), ("cursor=" + "c" * 300, "cursor"), ("type=", "type"),
                 ("agent_id=", "agent_id")]:
        status, _, b = m.get("/api/commands?" + q)
        assert status == 400, (q, b)
        e = err_of(b)
        assert e["code"] == "invalid_parameter" and p in e["message"], (q, e)


def test_maintenance(manager):
    m = manager
    status, _, b = post(m, {"enabled": True}, path="/api/admin/maintenance")
    assert status == 200 and b == {"maintenance": True}
    status, h, b = post(m, {"type": "echo"})
    assert status == 503 and err_of(b)["code"] == "maintenance"
    assert int(h["Retry-After"]) > 0
    status, h, b = post(m, [{"type": "echo"}, {"type": "echo"}])
    assert status == 503 and err_of(b)["code"] == "maintenance" and "Retry-After" in h
    assert m.get("/api/status")[2]["maintenance"] is True
    status, _, b = post(m, {"enabled": "yes"}, path="/api/admin/maintenance")
    assert status == 400 and "enabled" in err_of(b)["message"]
    status, _, b = post(m, {"enabled": False}, path="/api/admin/maintenance")
    assert status == 200 and b == {"maintenance": False}
    status, _, b = post(m, {"type": "echo"})
    assert status == 202, b
    assert m.get("/api/status")[2]["maintenance"] is False


def test_maintenance_mode_setting(manager_factory):
    m = manager_factory(env={"MAINTENANCE_MODE": "true"})
    status, _, b = post(m, {"type": "echo"})
    assert status == 503 and err_of(b)["code"] == "maintenance"


def test_queue_full_429(manager_factory):
    m = manager_factory(env={"COMMAND_QUEUE_SIZE": "3"})
    status, _, b = post(m, [{"type": "echo"}] * 3)
    assert status == 202, b
    status, h, b = post(m, {"type": "echo"})
    assert status == 429 and "Retry-After" in h, b
    status, h, b = post(m, [{"type": "echo"}] * 2)
    assert status == 429 and "Retry-After" in h, b
    assert len(m.get("/api/commands")[2]["commands"]) == 3


def test_timed_out_when_the_agent_never_answers(manager_factory, agent_factory):
    m = manager_factory(env={"COMMAND_TIMEOUT_GRACE": "0.5"})
    start_agent(m, agent_factory, aid="hanger", args=["--hang-rate", "1"])
    _, _, b = post(m, {"type": "echo", "timeout_seconds": 1})
    t0 = time.monotonic()
    c = wait_status(m, b["id"], "timed_out", timeout=6)
    assert time.monotonic() - t0 >= 1.0
    assert c["agent_id"] == "hanger"


def test_agent_enforced_timeout_fails(manager, agent_factory):
    # The real agent stops a `sleep` longer than timeout_seconds itself and reports failure.
    m = manager
    start_agent(m, agent_factory)
    _, _, b = post(m, {"type": "sleep", "params": {"seconds": 5}, "timeout_seconds": 1})
    c = wait_status(m, b["id"], ("failed", "timed_out"), timeout=6)
    assert c["status"] == "failed" and "timeout" in c["result"]["error"], c


def test_status(manager, agent_factory):
    m = manager
    start_agent(m, agent_factory)
    _, _, b = post(m, {"type": "echo"})
    wait_status(m, b["id"], "completed")
    status, _, s = m.get("/api/status")
    assert status == 200
    for k in ("version", "env", "instance", "uptime_seconds", "maintenance", "draining",
              "agents", "commands", "store", "rabbitmq"):
        assert k in s, k
    assert s["env"] == "development" and s["draining"] is False
    assert s["agents"]["total"] == 1 and s["agents"]["by_status"]["idle"] + \
        s["agents"]["by_status"]["busy"] == 1
    assert s["commands"]["received"] == 1 and s["commands"]["completed"] == 1
    assert s["store"] == {"backend": "memory", "up": True}
    assert s["rabbitmq"] == {"configured": False, "up": False}


def test_pipelined_deferred_and_immediate_in_order(manager):
    m = manager
    reqs = [("POST", "/api/commands", {"type": "echo", "id": "p1"}),
            ("GET", "/health", None),
            ("GET", "/api/commands/p1", None),
            ("GET", "/api/commands/missing", None),
            ("GET", "/api/status", None),
            ("GET", "/api/commands?type=echo", None)]
    raw = b""
    for method, path, body in reqs:
        data = json.dumps(body).encode() if body is not None else b""
        raw += (f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode() + data
    with socket.create_connection(("127.0.0.1", m.admin_port), timeout=5) as s:
        s.sendall(raw)
        buf = b""
        statuses = []
        while len(statuses) < len(reqs):
            chunk = s.recv(65536)
            assert chunk, "connection closed early"
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                n = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                         if ln.lower().startswith(b"content-length")][0])
                if len(rest) < n:
                    break
                statuses.append((int(head.split(b" ")[1]), json.loads(rest[:n])))
                buf = rest[n:]
    assert [st for st, _ in statuses] == [202, 200, 200, 404, 200, 200]
    assert statuses[0][1]["id"] == "p1" and statuses[2][1]["id"] == "p1"
    assert statuses[1][1] == {"status": "ok"}
    assert [c["id"] for c in statuses[5][1]["commands"]] == ["p1"]


def test_shutdown(manager):
    m = manager
    status, _, b = post(m, None, path="/api/admin/shutdown")
    assert status == 202, b
    wait_for(lambda: m.proc.poll() is not None, timeout=15, what="manager exit")
    assert m.proc.returncode == 0
