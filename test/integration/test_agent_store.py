"""The agent store: the registry mirrored into Valkey with a time to live, so another process
sees which agents are connected and to which manager instance (docs/store.md)."""
import json

from conftest import wait_for
from pipeline_fixtures import redis  # noqa: F401  (fixture)


def agent_record(r, agent_id):
    rec = r.cmd("HGETALL", f"sm:agent:{agent_id}")
    if not rec:
        return None
    return dict(zip(rec[0::2], rec[1::2]))


def test_registry_is_mirrored_with_ttl(manager_factory, agent_factory, redis):  # noqa: F811
    m = manager_factory(env={"VALKEY_HOST": "127.0.0.1", "VALKEY_PORT": str(redis.port),
                             "INSTANCE_ID": "mgr-a"})
    ag = agent_factory(m.grpc_addr, ["--count", "3", "--id-prefix", "mirror-",
                                     "--capabilities", "scan_type=nmap",
                                     "--heartbeat-interval", "0.5"])
    wait_for(lambda: len(m.agent_ids()) == 3, what="3 agents registered")
    for i in (1, 2, 3):
        rec = wait_for(lambda i=i: agent_record(redis, f"mirror-{i}"), timeout=10,
                       what=f"record of mirror-{i}")
        assert rec["i"] == "mgr-a"
        data = json.loads(rec["d"])
        assert data["id"] == f"mirror-{i}" and data["instance"] == "mgr-a"
        assert data["capabilities"] == {"scan_type": "nmap"}
        ttl = redis.cmd("PTTL", f"sm:agent:mirror-{i}")
        assert 0 < int(ttl) <= 30000
    # The agents leave: their records go with them.
    ag.stop()
    wait_for(lambda: m.agent_ids() == [], what="agents gone")
    wait_for(lambda: all(agent_record(redis, f"mirror-{i}") is None for i in (1, 2, 3)),
             timeout=10, what="records deleted")


def test_records_are_refreshed_while_connected(manager_factory, agent_factory, redis):  # noqa: F811
    m = manager_factory(env={"VALKEY_HOST": "127.0.0.1", "VALKEY_PORT": str(redis.port),
                             "INSTANCE_ID": "mgr-b"})
    agent_factory(m.grpc_addr, ["--id", "steady", "--heartbeat-interval", "1"])
    wait_for(lambda: agent_record(redis, "steady"), timeout=10, what="record written")
    first = json.loads(agent_record(redis, "steady")["d"])["last_seen"]
    # Heartbeats change last_seen; the mirror writes a changed agent at most every 5 s.
    wait_for(lambda: json.loads(agent_record(redis, "steady")["d"])["last_seen"] != first,
             timeout=15, what="record updated")
