"""While Valkey is unreachable the REST intake answers 503 with Retry-After, /ready says why,
connected agents stay; when Valkey is back everything resumes by itself and a command accepted
before the outage still completes."""
from conftest import http, wait_for
from pipeline_fixtures import redis  # noqa: F401  (fixture)


def test_rest_during_valkey_outage(manager_factory, agent_factory, redis):  # noqa: F811
    m = manager_factory(env={"VALKEY_HOST": "127.0.0.1", "VALKEY_PORT": str(redis.port)})
    agent_factory(m.grpc_addr, ["--id", "outage-agent", "--heartbeat-interval", "0.5"])
    wait_for(lambda: m.agent_ids() == ["outage-agent"], what="agent registered")
    wait_for(lambda: m.get("/ready")[0] == 200, what="ready")

    redis.kill()
    wait_for(lambda: m.get("/ready")[0] == 503, timeout=15, what="/ready 503 while redis is down")
    status, headers, body = m.get("/ready")
    assert "store" in body.get("reason", ""), body

    status, headers, body = http("POST", m.admin_url + "/api/commands",
                                 {"type": "echo", "params": {"x": "1"}})
    assert status == 503, body
    assert "Retry-After" in headers
    assert body["error"]["code"] in ("unavailable", "timeout")
    assert m.agent_ids() == ["outage-agent"]  # agents stay connected

    redis.start()
    wait_for(lambda: m.get("/ready")[0] == 200, timeout=30, what="ready again")
    status, _, body = wait_for(
        lambda: (lambda r: r if r[0] == 202 else None)(
            http("POST", m.admin_url + "/api/commands",
                 {"id": "after-outage", "type": "echo", "params": {"x": "2"}})),
        timeout=15, what="202 after the outage")
    wait_for(lambda: m.get("/api/commands/after-outage")[2].get("status") == "completed",
             timeout=15, what="command completed")
