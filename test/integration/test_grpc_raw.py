"""The agent listener's raw HTTP/2 behaviour, seen with nghttp, curl and plain sockets: requests
that are not gRPC, broken framing, garbage, slow or idle peers, the connection limit. After each
abuse the listener still serves a normal Ping."""
import socket
import time

import grpc
import pytest

from conftest import wait_for
from test_grpc_helpers import grpc_frame, nghttp

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS frame


def ping_ok(pb, m):
    with grpc.insecure_channel(m.grpc_addr) as ch:
        stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
        return stub.Ping(pb.agent_pb2.PingRequest(), timeout=5).message == "pong"


def url(m, path):
    return f"http://{m.grpc_addr}{path}"


def values(hdrs, name):
    return [v for k, v in hdrs if k == name]


def ping_body(pb):
    return grpc_frame(pb.agent_pb2.PingRequest(agent_id="raw").SerializeToString())


def test_nghttp_ping_trailers(pb, manager, tmp_path):
    hdrs, out = nghttp(url(manager, "/scan.AgentService/Ping"), ping_body(pb), tmpdir=tmp_path)
    assert values(hdrs, ":status") == ["200"], out
    assert values(hdrs, "content-type") == ["application/grpc"], out
    assert values(hdrs, "grpc-status") == ["0"], out


def test_wrong_content_type_is_415(manager, tmp_path):
    hdrs, out = nghttp(url(manager, "/scan.AgentService/Ping"), b"{}",
                       headers={"content-type": "application/json"}, tmpdir=tmp_path)
    assert values(hdrs, ":status") == ["415"], out
    assert values(hdrs, "grpc-status") == ["13"], out


def test_curl_prior_knowledge(manager):
    import subprocess
    p = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-D", "-",
                        "-X", "POST", "-H", "content-type: text/plain",
                        url(manager, "/scan.AgentService/Ping")],
                       capture_output=True, text=True, timeout=10)
    assert p.stdout.startswith("HTTP/2 415"), p.stdout + p.stderr


def test_missing_te_and_get(manager, tmp_path):
    hdrs, out = nghttp(url(manager, "/scan.AgentService/Ping"), b"", headers={"te": None},
                       tmpdir=tmp_path)
    assert values(hdrs, "grpc-status") == ["13"], out
    hdrs, out = nghttp(url(manager, "/scan.AgentService/Ping"), headers={":method": "GET"},
                       tmpdir=tmp_path)
    assert values(hdrs, ":status") == ["405"], out


def test_unknown_method_trailers_only(manager, tmp_path):
    hdrs, out = nghttp(url(manager, "/scan.AgentService/Nope"), b"", tmpdir=tmp_path)
    assert values(hdrs, ":status") == ["200"], out
    assert values(hdrs, "grpc-status") == ["12"], out


def test_truncated_message_is_internal(pb, manager, tmp_path):
    body = grpc_frame(b"abc", length=10)  # announces 10 bytes, sends 3, then END_STREAM
    hdrs, out = nghttp(url(manager, "/scan.AgentService/Ping"), body, tmpdir=tmp_path)
    assert values(hdrs, "grpc-status") == ["13"], out
    body = grpc_frame(b"")[:3]  # inside the 5-byte prefix
    hdrs, out = nghttp(url(manager, "/scan.AgentService/Connect"), body, tmpdir=tmp_path)
    assert values(hdrs, "grpc-status") == ["13"], out
    assert ping_ok(pb, manager)


def test_compressed_message_is_unimplemented(manager, tmp_path):
    body = grpc_frame(b"\x1f\x8b\x08\x00", compressed=1)
    hdrs, out = nghttp(url(manager, "/scan.AgentService/Ping"), body,
                       headers={"grpc-encoding": "gzip"}, tmpdir=tmp_path)
    assert values(hdrs, "grpc-status") == ["12"], out
    assert values(hdrs, "grpc-accept-encoding") == ["identity"], out
    hdrs, out = nghttp(url(manager, "/scan.AgentService/Ping"), grpc_frame(b"", compressed=2),
                       tmpdir=tmp_path)
    assert values(hdrs, "grpc-status") == ["13"], out


def test_grpc_timeout_deadline(manager, tmp_path):
    # A Health Watch stays open after its request: with a 300 ms grpc-timeout the server ends
    # it with DEADLINE_EXCEEDED (a grpcio client would give up on its own first).
    t0 = time.monotonic()
    hdrs, out = nghttp(url(manager, "/grpc.health.v1.Health/Watch"), grpc_frame(b""),
                       headers={"grpc-timeout": "300m"}, tmpdir=tmp_path)
    assert values(hdrs, "grpc-status") == ["4"], out
    assert time.monotonic() - t0 < 5


def raw_connect(m):
    host, port = m.grpc_addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def read_until_closed(s, timeout=5):
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False
    except ConnectionResetError:
        return data, True


def frame_types(data):
    """Types of the HTTP/2 frames in data (server side, after no preface)."""
    out, off = [], 0
    while off + 9 <= len(data):
        n = int.from_bytes(data[off:off + 3], "big")
        out.append(data[off + 3])
        off += 9 + n
    return out


def test_garbage_bytes_close_the_connection(pb, manager):
    s = raw_connect(manager)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    _, closed = read_until_closed(s)
    assert closed
    s.close()
    s = raw_connect(manager)
    s.sendall(bytes(range(256)) * 4)
    _, closed = read_until_closed(s)
    assert closed
    s.close()
    assert ping_ok(pb, manager)


def test_bad_frame_gets_goaway(pb, manager):
    s = raw_connect(manager)
    # a DATA frame on stream 0 is a connection error (PROTOCOL_ERROR)
    s.sendall(PREFACE + SETTINGS + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
    data, closed = read_until_closed(s)
    assert 7 in frame_types(data)  # GOAWAY
    assert closed
    s.close()
    assert ping_ok(pb, manager)


def test_truncated_frame_then_disconnect(pb, manager):
    for cut in (3, 10, len(PREFACE) + 5, len(PREFACE) + 9 + 4):
        s = raw_connect(manager)
        # a HEADERS frame announcing 100 bytes, cut short, then the peer goes away
        s.sendall((PREFACE + SETTINGS + b"\x00\x00\x64\x01\x04\x00\x00\x00\x01" + b"\x00" * 20)[
            :cut])
        s.close()
    assert ping_ok(pb, manager)


def test_idle_connection_is_closed(pb, manager_factory):
    m = manager_factory(env={"GRPC_IDLE_TIMEOUT": "1", "GRPC_KEEPALIVE_INTERVAL": "60"})
    s = raw_connect(m)
    s.sendall(PREFACE + SETTINGS)
    t0 = time.monotonic()
    data, closed = read_until_closed(s, timeout=10)
    assert closed
    assert 0.5 < time.monotonic() - t0 < 5
    assert 7 in frame_types(data)  # GOAWAY before closing
    s.close()


def test_silent_peer_is_dropped_after_unanswered_ping(manager_factory):
    m = manager_factory(env={"GRPC_KEEPALIVE_INTERVAL": "1", "GRPC_IDLE_TIMEOUT": "300"})
    s = raw_connect(m)
    s.sendall(PREFACE + SETTINGS)
    # never answer anything: the PING goes unanswered and the connection is dropped
    # (keepalive timeout = min(20 s, interval))
    data, closed = read_until_closed(s, timeout=10)
    assert 6 in frame_types(data)  # PING
    assert closed
    s.close()


def test_connection_limit(pb, manager_factory):
    m = manager_factory(env={"MAX_CONNECTIONS": "5"})
    held = [raw_connect(m) for _ in range(5)]
    for s in held:
        s.sendall(PREFACE + SETTINGS)
    wait_for(lambda: m.logs().count('"connection accepted"') >= 5, what="5 connections accepted")
    extra = raw_connect(m)
    extra.sendall(PREFACE + SETTINGS)
    _, closed = read_until_closed(extra, timeout=5)
    assert closed  # refused at once
    extra.close()
    for s in held:
        s.close()
    wait_for(lambda: ping_ok(pb, m), what="ping after the held connections left")
