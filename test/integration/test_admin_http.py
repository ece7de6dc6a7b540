"""The admin HTTP/1.1 listener over real sockets: keep-alive, pipelining, limits (431, 413,
connections), timeouts (408, idle), malformed input, routing errors, the agents routes and the
request log. Runs against test/unit/admin/admin-testserver (the admin server alone on a loop,
with fake agents); the same checks on the real sirius-manager live in the manager's tests."""
import contextlib
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import BUILD, MANAGER_BIN, http, wait_for

SERVER_BIN = os.environ.get("ADMIN_TESTSERVER",
                            os.path.join(BUILD, "test", "unit", "admin", "admin-testserver"))


class Server:
    def __init__(self, tmpdir, env=None):
        self.log_path = os.path.join(tmpdir, f"admin-{time.monotonic_ns()}.log")
        e = dict(os.environ)
        # Development mode without keys: /api is open (test_security_*.py covers the keys).
        e.update({"ADMIN_API_ADDR": "127.0.0.1:0", "SIRIUS_LOG_FORMAT": "json",
                  "SIRIUS_LOG_LEVEL": "info", "INSTANCE_ID": "test-instance",
                  "APP_ENV": "development"})
        e.update(env or {})
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([SERVER_BIN], env=e, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("PORT "), f"no port line: {line!r}: {self.logs()}"
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                rc = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("admin-testserver did not exit on SIGTERM")
        else:
            rc = self.proc.returncode
        self.log.close()
        return rc


@pytest.fixture
def server_factory(tmp_path):
    if not os.path.exists(SERVER_BIN):
        pytest.skip(f"{SERVER_BIN} not built")
    started = []

    def make(**env):
        s = Server(str(tmp_path), {k: str(v) for k, v in env.items()})
        started.append(s)
        return s
    yield make
    for s in started:
        assert s.stop() == 0, s.logs()[-2000:]


def connect(srv, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Reader:
    """Reads HTTP/1.1 responses (Content-Length framed) off a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def response(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for ln in lines[1:]:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers["content-length"])
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, json.loads(body) if body else None

    def closed(self, timeout=5.0):
        """True once the server closed the connection (EOF or reset) with nothing more sent."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return self.buf == b""
                self.buf += chunk
        except ConnectionResetError:
            return True


def get(path, host="t"):
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def test_health_ready_and_errors(server_factory):
    srv = server_factory()
    assert http("GET", srv.url + "/health")[::2] == (200, {"status": "ok"})
    status, headers, body = http("GET", srv.url + "/ready")
    assert status == 503 and body["status"] == "not_ready" and body["reason"]
    assert headers["Retry-After"] == "5"
    status, headers, body = http("GET", srv.url + "/nope")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert headers["Content-Type"] == "application/json"
    status, headers, body = http("DELETE", srv.url + "/health")
    assert status == 405 and headers["Allow"] == "GET"
    assert body["error"]["code"] == "method_not_allowed"
    ready = server_factory(TEST_READY=1)
    assert http("GET", ready.url + "/ready")[::2] == (200, {"status": "ready", "maintenance": False})


def test_keep_alive_and_pipelining(server_factory):
    srv = server_factory(TEST_AGENTS=3)
    with contextlib.closing(connect(srv)) as s:
        r = Reader(s)
        for _ in range(3):  # keep-alive: several requests, one connection
            s.sendall(get("/health"))
            status, headers, body = r.response()
            assert status == 200 and headers["connection"] == "keep-alive"
        # two requests in one write: both answered, in order
        s.sendall(get("/api/agents/agent-002") + get("/health"))
        assert r.response()[2]["id"] == "agent-002"
        assert r.response()[2] == {"status": "ok"}
        # more than the pipeline depth in one write: reading pauses and resumes, order kept
        s.sendall(b"".join(get(f"/api/agents/agent-00{i % 3 + 1}") for i in range(40)))
        for i in range(40):
            status, _, body = r.response()
            assert status == 200 and body["id"] == f"agent-00{i % 3 + 1}"


def test_output_backpressure(server_factory):
    """A client that does not read while asking for large answers: the server stops reading
    (bounded output) and carries on once the client reads."""
    srv = server_factory(TEST_AGENTS=1000)
    n = 24  # ~9 MB of answers, more than the socket buffers hold
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect: sane window
    s.settimeout(10)
    with contextlib.closing(s):
        s.connect(("127.0.0.1", srv.port))
        s.sendall(get("/api/agents?limit=1000") * n)
        time.sleep(0.5)
        assert http("GET", srv.url + "/health")[0] == 200  # others are served meanwhile
        answered = srv.logs().count('"path":"/api/agents"')
        assert answered < n, "the server kept producing for a client that does not read"
        r = Reader(s)
        for _ in range(n):
            status, _, body = r.response()
            assert status == 200 and body["total"] == 1000 and len(body["agents"]) == 1000


def test_connection_close_and_http10(server_factory):
    srv = server_factory()
    with contextlib.closing(connect(srv)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        r = Reader(s)
        status, headers, _ = r.response()
        assert status == 200 and headers["connection"] == "close"
        assert r.closed()
    with contextlib.closing(connect(srv)) as s:
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        r = Reader(s)
        assert r.response()[1]["connection"] == "close"
        assert r.closed()


def test_header_limit_431(server_factory):
    srv = server_factory(ADMIN_MAX_HEADER_BYTES=4096)
    with contextlib.closing(connect(srv)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        r = Reader(s)
        status, headers, body = r.response()
        assert status == 431 and body["error"]["code"] == "headers_too_large"
        assert headers["connection"] == "close"
        assert r.closed()
    assert http("GET", srv.url + "/health")[0] == 200


def test_body_limit_413(server_factory):
    srv = server_factory(ADMIN_MAX_BODY_BYTES=1024)
    with contextlib.closing(connect(srv)) as s:  # announced too large
        s.sendall(b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\n"
                  + b"x" * 2000)
        r = Reader(s)
        status, _, body = r.response()
        assert status == 413 and body["error"]["code"] == "payload_too_large"
        assert r.closed()
    with contextlib.closing(connect(srv)) as s:  # chunked, grows past the limit (a route that
        # takes a body: others are refused on their headers, see test_admin_abuse.py)
        s.sendall(b"POST /api/commands HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + b"400\r\n" + b"y" * 1024 + b"\r\n" + b"10\r\n" + b"z" * 16 + b"\r\n")
        assert Reader(s).response()[0] == 413
    with contextlib.closing(connect(srv)) as s:  # within the limit: routed (405 here)
        s.sendall(b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789")
        assert Reader(s).response()[0] == 405


def test_expect_100_continue(server_factory):
    srv = server_factory(ADMIN_MAX_BODY_BYTES=1024)
    with contextlib.closing(connect(srv)) as s:  # a route that takes a body (no lifecycle: 503)
        s.sendall(b"POST /api/commands HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 4\r\n\r\n")
        r = Reader(s)
        while b"\r\n\r\n" not in r.buf:
            r._fill()
        assert r.buf.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        r.buf = r.buf[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        s.sendall(b"abcd")
        assert r.response()[0] == 503
    with contextlib.closing(connect(srv)) as s:  # refused on its headers: no 100, the answer
        s.sendall(b"POST /health HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 4\r\n\r\n")
        r = Reader(s)
        assert r.response()[0] == 405
        assert r.closed()
    with contextlib.closing(connect(srv)) as s:  # too large: 413 at once, no 100
        s.sendall(b"POST /health HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 4096\r\n\r\n")
        assert Reader(s).response()[0] == 413


@pytest.mark.parametrize("raw", [
    b"BLAH\r\n\r\n",
    b"GET /health HTTP/1.1\r\nNo-Colon-Here\r\n\r\n",
    b"GET /health HTTP/7.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
])
def test_malformed_400(server_factory, raw):
    srv = server_factory()
    with contextlib.closing(connect(srv)) as s:
        s.sendall(raw)
        r = Reader(s)
        status, headers, body = r.response()
        assert status == 400 and body["error"]["code"] == "bad_request"
        assert headers["connection"] == "close"
        assert r.closed()


def test_malformed_after_good_request_answers_in_order(server_factory):
    srv = server_factory()
    with contextlib.closing(connect(srv)) as s:
        s.sendall(get("/health") + b"NONSENSE\r\n\r\n")
        r = Reader(s)
        assert r.response()[0] == 200
        assert r.response()[0] == 400
        assert r.closed()


def test_bad_percent_encoding_400(server_factory):
    srv = server_factory()
    assert http("GET", srv.url + "/api/agents?status=%zz")[0] == 400
    assert http("GET", srv.url + "/api/agents/a%2")[0] == 400


def test_slow_client_gets_408_and_does_not_block_others(server_factory):
    srv = server_factory(ADMIN_REQUEST_TIMEOUT=2)
    slow = connect(srv, timeout=10)
    req = get("/health")
    result = {}

    def dribble():
        r = Reader(slow)
        try:
            for b in req[:-4]:  # never completes the request
                slow.sendall(bytes([b]))
                time.sleep(0.2)
        except OSError:
            pass  # the server closed on us: expected
        try:
            result["resp"] = r.response()
        except (EOFError, OSError) as e:
            result["err"] = e
        result["closed"] = r.closed()
    t = threading.Thread(target=dribble)
    started = time.monotonic()
    t.start()
    try:
        for _ in range(10):  # others are served promptly meanwhile
            t0 = time.monotonic()
            assert http("GET", srv.url + "/health")[0] == 200
            assert time.monotonic() - t0 < 0.5
            time.sleep(0.05)
        t.join(timeout=10)
        assert not t.is_alive()
        assert "resp" in result, result
        status, headers, body = result["resp"]
        assert status == 408 and body["error"]["code"] == "request_timeout"
        assert result["closed"]
        assert 1.5 < time.monotonic() - started < 6
    finally:
        slow.close()


def test_idle_keep_alive_timeout(server_factory):
    srv = server_factory(ADMIN_IDLE_TIMEOUT=0.5)
    with contextlib.closing(connect(srv)) as s:
        s.sendall(get("/health"))
        r = Reader(s)
        assert r.response()[0] == 200
        t0 = time.monotonic()
        assert r.closed(timeout=5)
        assert 0.3 < time.monotonic() - t0 < 3


def test_connection_limit(server_factory):
    srv = server_factory(ADMIN_MAX_CONNECTIONS=2)
    a, b = connect(srv), connect(srv)
    try:
        for s in (a, b):  # both really admitted, then in use (a body arriving): not evictable
            s.sendall(get("/health"))
            assert Reader(s).response()[0] == 200
            s.sendall(b"POST /api/commands HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                      b"\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        with contextlib.closing(connect(srv)) as c:
            r = Reader(c)
            status, headers, body = r.response()
            assert status == 503 and body["error"]["code"] == "unavailable"
            assert r.closed()
    finally:
        a.close()
        b.close()
    wait_for(lambda: http("GET", srv.url + "/health")[0] == 200, what="slot freed")


def test_agents_filters(server_factory):
    srv = server_factory(TEST_AGENTS=12)
    status, _, body = http("GET", srv.url + "/api/agents")
    assert status == 200 and body["total"] == 12
    ids = [a["id"] for a in body["agents"]]
    assert ids == sorted(ids)
    a = body["agents"][0]
    for k in ("id", "hostname", "version", "status", "capabilities", "segment", "load",
              "active_commands", "max_concurrent", "connected_at", "last_seen", "instance"):
        assert k in a, k
    assert a["instance"] == "test-instance"
    assert a["connected_at"].endswith("Z") and "." in a["connected_at"]
    body = http("GET", srv.url + "/api/agents?status=idle")[2]
    assert body["total"] == 6 and all(x["status"] == "idle" for x in body["agents"])
    body = http("GET", srv.url + "/api/agents?capability=os:windows&capability=scan_type:nmap")[2]
    assert body["total"] == 4 and all(x["capabilities"]["os"] == "windows"
                                      for x in body["agents"])
    body = http("GET", srv.url + "/api/agents?min_version=1.3.0")[2]
    assert body["total"] == 4
    body = http("GET", srv.url + "/api/agents?limit=5&offset=10")[2]
    assert body["total"] == 12 and [x["id"] for x in body["agents"]] == ids[10:]
    assert http("GET", srv.url + "/api/agents?max_load=0.5")[2]["total"] == 12
    for q, name in [("status=nope", "status"), ("capability=x", "capability"),
                    ("min_version=zz", "min_version"), ("max_load=-1", "max_load"),
                    ("limit=5000", "limit"), ("offset=-3", "offset")]:
        status, _, body = http("GET", srv.url + "/api/agents?" + q)
        assert status == 400 and name in body["error"]["message"], (q, body)
    status, _, body = http("GET", srv.url + "/api/agents/agent-007")
    assert status == 200 and body["id"] == "agent-007"
    status, _, body = http("GET", srv.url + "/api/agents/ghost")
    assert status == 404 and body["error"]["code"] == "not_found"


def test_request_log_line(server_factory):
    srv = server_factory()
    http("GET", srv.url + "/health?x=1")
    http("GET", srv.url + "/nope")

    def lines():
        out = []
        for ln in srv.logs().splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(ln)
                if ev.get("msg", ev.get("message")) == "request":
                    out.append(ev)
        return out if len(out) >= 2 else None
    evs = wait_for(lines, what="request log lines")
    first = evs[0]
    assert first["method"] == "GET" and first["path"] == "/health" and first["status"] == 200
    assert first["bytes"] == 15 and first["client"].startswith("127.0.0.1:")
    assert "duration_ms" in first
    assert evs[1]["status"] == 404


def test_sigterm_with_open_connections_exits_cleanly(server_factory):
    srv = server_factory()
    idle = connect(srv)
    busy = connect(srv)
    busy.sendall(b"GET /health HTTP/1.1\r\n")  # half a request
    try:
        srv.proc.terminate()
        assert srv.proc.wait(timeout=10) == 0
    finally:
        idle.close()
        busy.close()


@pytest.mark.skipif(not os.path.exists(MANAGER_BIN), reason="sirius-manager not built")
def test_real_manager_admin_routes(manager):
    assert manager.get("/health")[::2] == (200, {"status": "ok"})
    body = manager.agents()
    assert body["total"] == len(body["agents"])
    assert manager.get("/api/agents/nobody")[0] == 404
    assert manager.get("/api/agents?limit=abc")[0] == 400


@pytest.mark.skipif(not os.path.exists(MANAGER_BIN), reason="sirius-manager not built")
def test_real_manager_lists_grpc_agents(manager, pb):
    """Two python grpcio agents Connect; /api/agents and /api/agents/{id} report them."""
    import queue

    import grpc
    ch = grpc.insecure_channel(manager.grpc_addr)
    stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
    streams = []
    for aid, caps, ver in [("py-b", "os=linux,scan_type=nmap", "1.4.0"),
                           ("py-a", "os=windows", "0.9.0")]:
        q = queue.Queue()
        q.put(pb.agent_pb2.AgentMessage(
            agent_id=aid, status=pb.agent_pb2.IDLE,
            heartbeat=pb.agent_pb2.HeartbeatMessage(timestamp=int(time.time())),
            metadata={"hostname": "h-" + aid, "version": ver, "capabilities": caps,
                      "segment": "10.1.0.0/16", "max_concurrent": "2"}))
        streams.append((q, stub.Connect(iter(q.get, None))))
    try:
        wait_for(lambda: manager.agents()["total"] == 2, what="two agents listed")
        body = manager.agents()
        assert [a["id"] for a in body["agents"]] == ["py-a", "py-b"]
        status, _, a = manager.get("/api/agents/py-b")
        assert status == 200 and a["hostname"] == "h-py-b" and a["version"] == "1.4.0"
        assert a["capabilities"] == {"os": "linux", "scan_type": "nmap"}
        assert a["status"] == "idle" and a["max_concurrent"] == 2
        assert a["segment"] == "10.1.0.0/16" and a["instance"]
        assert a["peer"].startswith("127.0.0.1:")
        assert manager.get("/api/agents?capability=os:linux")[2]["total"] == 1
        assert manager.get("/api/agents?min_version=1.0.0")[2]["total"] == 1
    finally:
        for q, call in streams:
            q.put(None)
            call.cancel()
        ch.close()
