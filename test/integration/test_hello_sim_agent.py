"""`sirius-agent --protocol hello`: simulated hello.HelloService agents (many per process)
through the real sirius-manager: they register over ConnectStream with agent_id metadata, are
listed with protocol hello.HelloService, run exec command lines (with --allow-exec) or simulate
them, answer `status` (internal:status) with status text, and a fleet that mixes one scan-protocol
process and one hello process completes commands on both."""
from conftest import http, wait_for


def post(m, body):
    status, _, out = http("POST", m.admin_url + "/api/commands", body=body)
    assert status == 202, out
    return out["id"]


def wait_done(m, cid, timeout=15):
    def done():
        status, _, c = m.get("/api/commands/" + cid)
        assert status == 200, c
        return c if c["status"] in ("completed", "failed", "timed_out", "rejected") else None
    return wait_for(done, timeout=timeout, what=f"{cid} final")


def agents_by_id(m):
    return {a["id"]: a for a in m.agents()["agents"]}


def test_hello_fleet_exec_and_status(manager, agent_factory):
    agent_factory(manager.grpc_addr, ["--protocol", "hello", "--count", "3", "--id-prefix", "h-",
                                      "--allow-exec", "--heartbeat-interval", "0.2"])
    wait_for(lambda: {"h-1", "h-2", "h-3"} <= set(agents_by_id(manager)), timeout=15,
             what="3 hello agents registered")
    for a in agents_by_id(manager).values():
        assert a["protocol"] == "hello.HelloService"
        assert a["capabilities"] == {"protocol": "hello"}

    cid = post(manager, {"type": "exec", "params": {"command": "echo hello-$((40+2))"},
                         "agent_id": "h-2"})
    c = wait_done(manager, cid)
    assert c["status"] == "completed", c
    data = c["result"]["data"]
    assert data["output"] == "hello-42\n" and data["exit_code"] == "0"
    assert data["command"] == "echo hello-$((40+2))"
    assert int(data["execution_time"]) >= 0

    # a failing command line fails the command with its exit code
    cid = post(manager, {"type": "exec", "params": {"command": "echo oops; exit 7"},
                         "agent_id": "h-1"})
    c = wait_done(manager, cid)
    assert c["status"] == "failed", c
    assert c["result"]["data"]["exit_code"] == "7"
    assert c["result"]["data"]["output"] == "oops\n"

    # status goes out as internal:status and is answered with status text
    cid = post(manager, {"type": "status", "agent_id": "h-3"})
    c = wait_done(manager, cid)
    assert c["status"] == "completed", c
    assert "agent_id=h-3" in c["result"]["data"]["output"]

    # two identical lines in flight on one agent both complete
    ids = [post(manager, {"type": "exec", "params": {"command": "sleep 0.3; echo same"},
                          "agent_id": "h-1"}) for _ in range(2)]
    for cid in ids:
        c = wait_done(manager, cid)
        assert c["status"] == "completed" and c["result"]["data"]["output"] == "same\n", c


def test_hello_simulated_without_exec(manager, agent_factory):
    agent_factory(manager.grpc_addr, ["--protocol", "hello", "--id", "sim-1",
                                      "--scan-duration-ms", "200", "--max-concurrent", "4"])
    wait_for(lambda: "sim-1" in agents_by_id(manager), timeout=15, what="hello agent registered")
    cid = post(manager, {"type": "exec", "params": {"command": "nmap -sV 10.0.0.1"},
                         "agent_id": "sim-1"})
    c = wait_done(manager, cid)
    assert c["status"] == "completed", c
    data = c["result"]["data"]
    assert "target=nmap -sV 10.0.0.1" in data["output"]
    assert "scanner=simulated" in data["output"]
    assert int(data["execution_time"]) >= 150


def test_mixed_fleet(manager, agent_factory):
    agent_factory(manager.grpc_addr, ["--id", "scan-1", "--allow-exec"])
    agent_factory(manager.grpc_addr, ["--protocol", "hello", "--id", "hello-1", "--allow-exec"])
    wait_for(lambda: {"scan-1", "hello-1"} <= set(agents_by_id(manager)), timeout=15,
             what="both agents registered")
    ag = agents_by_id(manager)
    assert ag["scan-1"]["protocol"] == "scan.AgentService"
    assert ag["hello-1"]["protocol"] == "hello.HelloService"
    cids = {aid: post(manager, {"type": "exec", "params": {"command": f"echo {aid}"},
                                "agent_id": aid}) for aid in ("scan-1", "hello-1")}
    c = wait_done(manager, cids["scan-1"])
    assert c["status"] == "completed", c
    assert c["result"]["data"]["stdout"] == "scan-1\n"
    c = wait_done(manager, cids["hello-1"])
    assert c["status"] == "completed", c
    assert c["result"]["data"]["output"] == "hello-1\n"
