"""The agent listener over TLS (ALPN h2), with and without client certificates, against Python
grpcio secure channels and curl; certificates are made with the openssl command."""
import subprocess

import grpc
import pytest

from test_grpc_helpers import AgentStream, make_certs, read, wait_gone, wait_registered


@pytest.fixture
def certs(tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    return make_certs(str(d))


def tls_env(certs, mutual=False):
    env = {"TLS_ENABLED": "true", "TLS_CERT_FILE": certs["server.pem"],
           "TLS_KEY_FILE": certs["server.key"]}
    if mutual:
        env["TLS_CLIENT_CA_FILE"] = certs["ca.pem"]
    return env


def secure(m, certs, client_cert=False):
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(certs["ca.pem"]),
        private_key=read(certs["client.key"]) if client_cert else None,
        certificate_chain=read(certs["client.pem"]) if client_cert else None)
    return grpc.secure_channel(f"localhost:{m.grpc_port}", creds)


def test_tls_ping_and_connect(pb, manager_factory, certs):
    m = manager_factory(env=tls_env(certs))
    with secure(m, certs) as ch:
        stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
        assert stub.Ping(pb.agent_pb2.PingRequest(), timeout=5).message == "pong"
        s = AgentStream(pb, ch)
        s.register("tls-agent")
        wait_registered(m, "tls-agent")
        s.close()
        assert s.wait() == grpc.StatusCode.OK
        wait_gone(m, "tls-agent")


def test_plaintext_client_is_refused(pb, manager_factory, certs):
    m = manager_factory(env=tls_env(certs))
    with grpc.insecure_channel(m.grpc_addr) as ch:
        stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Ping(pb.agent_pb2.PingRequest(), timeout=3)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    with secure(m, certs) as ch:  # still serving
        stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
        assert stub.Ping(pb.agent_pb2.PingRequest(), timeout=5).message == "pong"


def test_curl_negotiates_h2(manager_factory, certs):
    m = manager_factory(env=tls_env(certs))
    p = subprocess.run(["curl", "-sv", "--http2", "--cacert", certs["ca.pem"], "-o", "/dev/null",
                        "-X", "POST", "-H", "content-type: application/grpc", "-H", "te: trailers",
                        f"https://localhost:{m.grpc_port}/scan.AgentService/Nope"],
                       capture_output=True, text=True, timeout=10)
    assert "ALPN: server accepted h2" in p.stderr or "ALPN, server accepted to use h2" in p.stderr, \
        p.stderr
    assert "grpc-status: 12" in p.stderr, p.stderr


def test_http11_only_client_is_refused(manager_factory, certs):
    m = manager_factory(env=tls_env(certs))
    p = subprocess.run(["curl", "-s", "--http1.1", "--cacert", certs["ca.pem"], "-o", "/dev/null",
                        "-w", "%{http_code}", f"https://localhost:{m.grpc_port}/"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0  # no ALPN h2 offered: the handshake fails


def test_mutual_tls(pb, manager_factory, certs):
    m = manager_factory(env=tls_env(certs, mutual=True))
    with secure(m, certs, client_cert=False) as ch:
        stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Ping(pb.agent_pb2.PingRequest(), timeout=3)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    with secure(m, certs, client_cert=True) as ch:
        stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
        assert stub.Ping(pb.agent_pb2.PingRequest(), timeout=5).message == "pong"


def test_bad_certificate_files_fail_the_start(manager_factory, certs, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    m = manager_factory(env={"TLS_ENABLED": "true", "TLS_CERT_FILE": str(bad),
                             "TLS_KEY_FILE": certs["server.key"]}, start=False)
    m.start(wait=False)
    assert m.proc.wait(timeout=10) != 0
    assert "TLS" in m.logs() or "tls" in m.logs()
