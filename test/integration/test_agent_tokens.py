"""Agent tokens (AGENT_AUTH_TOKENS_FILE): agents must send `authorization: Bearer <token>`; a
token bound to one agent id cannot register another; `*:` tokens admit any id; the token never
appears in the manager's log. Clients: python3-grpcio and sirius-agent --token."""
import os

import grpc

from conftest import Manager, wait_for
from test_grpc_helpers import AgentStream, wait_registered

TOKENS = """# test tokens
alpha: alpha-secret
beta:sha256:{beta}
*:fleet-secret
"""


def tokens_file(tmp_path):
    import hashlib
    p = os.path.join(str(tmp_path), "tokens")
    with open(p, "w") as f:
        f.write(TOKENS.format(beta=hashlib.sha256(b"beta-secret").hexdigest()))
    return p


def stream(pb, m, token=None, agent_id_header=None):
    ch = grpc.insecure_channel(m.grpc_addr)
    md = []
    if token is not None:
        md.append(("authorization", f"Bearer {token}"))
    if agent_id_header:
        md.append(("agent-id", agent_id_header))
    return ch, AgentStream(pb, ch, metadata=md)


def test_tokens_required_and_bound(pb, manager_factory, tmp_path):
    m = manager_factory(env={"AGENT_AUTH_TOKENS_FILE": tokens_file(tmp_path)})

    ch, s = stream(pb, m)  # no token
    s.register("alpha")
    assert s.wait() == grpc.StatusCode.UNAUTHENTICATED
    ch.close()

    ch, s = stream(pb, m, token="wrong")
    s.register("alpha")
    assert s.wait() == grpc.StatusCode.UNAUTHENTICATED
    ch.close()

    ch, s = stream(pb, m, token="alpha-secret")  # alpha's token for another id
    s.register("beta")
    assert s.wait() == grpc.StatusCode.PERMISSION_DENIED
    assert "another agent id" in s.details
    ch.close()

    ch1, ok1 = stream(pb, m, token="alpha-secret")
    ok1.register("alpha")
    ch2, ok2 = stream(pb, m, token="beta-secret")  # given as sha256 in the file
    ok2.register("beta")
    ch3, ok3 = stream(pb, m, token="fleet-secret")
    ok3.register("gamma")
    for aid in ("alpha", "beta", "gamma"):
        wait_registered(m, aid)
    assert m.agent_ids() == ["alpha", "beta", "gamma"]

    # Ping needs a valid token too.
    stub = pb.agent_pb2_grpc.AgentServiceStub(ch1)
    try:
        stub.Ping(pb.agent_pb2.PingRequest(agent_id="alpha"), timeout=5)
        raise AssertionError("Ping without a token was answered")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    r = stub.Ping(pb.agent_pb2.PingRequest(agent_id="alpha"), timeout=5,
                  metadata=[("authorization", "Bearer alpha-secret")])
    assert r.message

    for s in (ok1, ok2, ok3):
        s.close()
    for ch in (ch1, ch2, ch3):
        ch.close()
    logs = m.logs()
    for secret in ("alpha-secret", "beta-secret", "fleet-secret", "wrong"):
        assert secret not in logs


def test_sirius_agent_token(manager_factory, agent_factory, tmp_path):
    m = manager_factory(env={"AGENT_AUTH_TOKENS_FILE": tokens_file(tmp_path)})
    agent_factory(m.grpc_addr, ["--id", "alpha", "--token", "alpha-secret"])
    agent_factory(m.grpc_addr, ["--count", "3", "--id-prefix", "fleet-", "--token", "fleet-secret"])
    bad = agent_factory(m.grpc_addr, ["--id", "beta", "--token", "alpha-secret",
                                      "--reconnect-min-ms", "200"])
    wait_for(lambda: m.agent_ids() == ["alpha", "fleet-1", "fleet-2", "fleet-3"],
             what="token-holding agents registered")
    wait_for(lambda: "PERMISSION_DENIED" in bad.logs() or "another agent id" in bad.logs()
             or "grpc_status=7" in bad.logs(), what="refusal seen by the wrong agent")
    assert "beta" not in m.agent_ids()


def test_bad_tokens_file_stops_the_manager(tmp_path):
    p = os.path.join(str(tmp_path), "bad-tokens")
    with open(p, "w") as f:
        f.write("alpha-without-colon\n")
    m = Manager(str(tmp_path), env={"AGENT_AUTH_TOKENS_FILE": p})
    m.start(wait=False)
    assert m.proc.wait(timeout=10) != 0
    assert "AGENT_AUTH_TOKENS_FILE" in m.logs() and "line 1" in m.logs()
    m.log.close()
