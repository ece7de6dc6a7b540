"""sirius-agent: many agents in one process, reconnects, failure modes, TLS, program surface."""
import os
import subprocess
import time

import grpc
import pytest

from conftest import AGENT_BIN, wait_for
from test_agent_basic import FakeManager, agents, fake  # noqa: F401 - pytest fixtures


def test_count_gives_distinct_streams(fake, agents):  # noqa: F811
    a = agents(fake.addr, "--count", "20", "--id-prefix", "sim-", "--ramp-ms", "200",
               "--heartbeat-interval", "0.5", "--stats-interval", "0.2")
    wait_for(lambda: len(fake.open_streams()) == 20, timeout=10, what="20 streams")
    ids = sorted(s.agent_id for s in fake.open_streams())
    assert ids == sorted(f"sim-{i}" for i in range(1, 21))
    st = fake.stream("sim-7")
    r = fake.final(st, fake.send(st, "echo", {"k": "v"}))
    assert r.status == "completed"
    wait_for(lambda: "connected=20" in a.logs(), timeout=5, what="stats line")
    assert a.stop() == 0
    wait_for(lambda: not fake.open_streams(), timeout=5, what="all streams closed")


def test_source_addrs_round_robin(fake, agents):  # noqa: F811
    agents(fake.addr, "--count", "4", "--source-addrs", "127.0.0.2,127.0.0.3")
    wait_for(lambda: len(fake.open_streams()) == 4, timeout=10, what="4 streams")
    peers = {s.agent_id: s.peer.split(":")[1] for s in fake.open_streams()}
    assert peers == {"agent-1": "127.0.0.2", "agent-2": "127.0.0.3", "agent-3": "127.0.0.2",
                     "agent-4": "127.0.0.3"}, peers


def test_reconnects_after_server_restart_and_stream_end(pb, agents):  # noqa: F811
    m = FakeManager(pb).start()
    agents(m.addr, "--id", "r1", "--reconnect-min-ms", "50", "--reconnect-max-ms", "500")
    st = m.stream("r1")
    # the server ends the stream (as a manager does when the id connects again): reconnect
    st.end()
    wait_for(lambda: len([s for s in m.streams if s.agent_id == "r1"]) >= 2, timeout=5,
             what="second stream")
    m.stop()
    time.sleep(0.5)
    m2 = FakeManager(pb, port=m.port).start()
    try:
        st2 = m2.stream("r1", timeout=10)
        assert dict(st2.msgs[0].metadata)["hostname"]
    finally:
        m2.stop()


def test_fail_and_hang_rates(fake, agents):  # noqa: F811
    agents(fake.addr, "--id", "f1", "--fail-rate", "1", "--max-concurrent", "5")
    st = fake.stream("f1")
    r = fake.final(st, fake.send(st, "echo", {"a": "b"}))
    assert r.status == "failed" and "simulated" in r.error
    r = fake.final(st, fake.send(st, "sleep", {"seconds": "0.1"}))
    assert r.status == "failed"
    agents(fake.addr, "--id", "h1", "--hang-rate", "1")
    st = fake.stream("h1")
    cid = fake.send(st, "echo", {"a": "b"})
    time.sleep(0.5)
    assert st.results(cid) == []


def test_fail_rate_is_roughly_honoured(fake, agents):  # noqa: F811
    agents(fake.addr, "--id", "f2", "--fail-rate", "0.5", "--seed", "42")
    st = fake.stream("f2")
    ids = [fake.send(st, "echo", {"i": str(i)}) for i in range(200)]
    statuses = [fake.final(st, c).status for c in ids]
    failed = statuses.count("failed")
    assert 60 < failed < 140, failed


def test_disconnect_rate_drops_and_reconnects(fake, agents):  # noqa: F811
    agents(fake.addr, "--id", "d1", "--disconnect-rate", "1", "--reconnect-min-ms", "50")
    st = fake.stream("d1")
    cid = fake.send(st, "echo", {})
    wait_for(lambda: st.closed, timeout=5, what="dropped stream")
    assert st.results(cid) == []
    wait_for(lambda: len([s for s in fake.streams if s.agent_id == "d1"]) >= 2, timeout=5,
             what="reconnect")


def test_crash_after(fake, agents):  # noqa: F811
    a = agents(fake.addr, "--id", "c1", "--crash-after", "2")
    st = fake.stream("c1")
    assert fake.final(st, fake.send(st, "echo", {})).status == "completed"
    fake.send(st, "echo", {})
    assert a.proc.wait(timeout=5) == 3


def test_token_header(fake, agents):  # noqa: F811
    agents(fake.addr, "--id", "k1", "--token", "s3cret")
    st = fake.stream("k1")
    assert st.headers.get("authorization") == "Bearer s3cret"


@pytest.mark.parametrize("args,flag", [
    (["--max-concurrent", "0"], "--max-concurrent"),
    (["--capabilities", "nokey"], "--capabilities"),
    (["--heartbeat-interval", "-1"], "--heartbeat-interval"),
    (["--fail-rate", "2"], "--fail-rate"),
    (["--scan-duration-dist", "weird"], "--scan-duration-dist"),
    (["--server", "nohostport"], "--server"),
    (["--bogus"], "--bogus"),
])
def test_bad_flags(args, flag):
    p = subprocess.run([AGENT_BIN] + args, capture_output=True, text=True, timeout=5)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sirius-agent: {flag}:"), p.stderr


def test_bad_env():
    p = subprocess.run([AGENT_BIN], capture_output=True, text=True, timeout=5,
                       env=dict(os.environ, CAPABILITIES="x"))
    assert p.returncode == 2 and p.stderr.startswith("sirius-agent: CAPABILITIES:")


def test_help_and_version():
    p = subprocess.run([AGENT_BIN, "--help"], capture_output=True, text=True, timeout=5)
    assert p.returncode == 0 and "--count" in p.stdout and "--allow-exec" in p.stdout
    p = subprocess.run([AGENT_BIN, "--version"], capture_output=True, text=True, timeout=5)
    assert p.returncode == 0 and p.stdout.startswith("sirius-agent ")


def _make_certs(d):
    def run(*a):
        subprocess.run(a, check=True, capture_output=True, cwd=d)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.pem")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {k: os.path.join(d, k) for k in ("ca.pem", "server.pem", "server.key", "client.pem",
                                            "client.key")}


def _read(p):
    with open(p, "rb") as f:
        return f.read()


def test_tls_and_mutual_tls(pb, agents, tmp_path):  # noqa: F811
    c = _make_certs(str(tmp_path))
    creds = grpc.ssl_server_credentials([(_read(c["server.key"]), _read(c["server.pem"]))],
                                        root_certificates=_read(c["ca.pem"]),
                                        require_client_auth=True)
    m = FakeManager(pb, creds=creds).start()
    try:
        agents(m.addr, "--id", "tls1", "--tls", "--tls-ca", c["ca.pem"], "--tls-cert",
               c["client.pem"], "--tls-key", c["client.key"])
        st = m.stream("tls1")
        r = m.final(st, m.send(st, "echo", {"over": "tls"}))
        assert r.status == "completed" and dict(r.data) == {"over": "tls"}
        # without a client certificate the server refuses the handshake
        bad = agents(m.addr, "--id", "tls2", "--tls-ca", c["ca.pem"])
        time.sleep(1.0)
        assert not m.open_streams("tls2")
        # a wrong expected name fails verification
        bad2 = agents(m.addr, "--id", "tls3", "--tls-ca", c["ca.pem"], "--tls-cert",
                      c["client.pem"], "--tls-key", c["client.key"], "--tls-server-name",
                      "other.example")
        time.sleep(1.0)
        assert not m.open_streams("tls3")
        # --tls-insecure skips verification of the server (the name mismatch is accepted)
        agents(m.addr, "--id", "tls4", "--tls-insecure", "--tls-cert", c["client.pem"],
               "--tls-key", c["client.key"], "--tls-server-name", "other.example")
        m.stream("tls4")
        assert "TLS" in bad.logs() or "tls" in bad.logs()
        assert "tls" in bad2.logs().lower()
    finally:
        m.stop()
