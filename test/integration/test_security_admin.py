"""Admin API security on the real sirius-manager: API keys and roles (the full matrix of every
route x no key / wrong key / viewer / operator / admin), the keys file (sha256 form, bad lines),
the no-key production mode, rate limits per key and per address (429 + Retry-After), the request
log (key names, never keys), /ready in maintenance, the OpenAPI document, and admin TLS with a
certificate made by openssl."""
import hashlib
import http.client as httpclient
import json
import os
import socket
import ssl
import subprocess
import time

import pytest

from conftest import MANAGER_BIN, ROOT, Manager, http, wait_for

VIEWER, OPERATOR, ADMIN_F, ADMIN_ENV = "view-Kq81", "oper-Zt55", "file-admin-Jx09", "env-admin-Wd77"
SECRET_DIGEST_KEY = "hashed-operator-Pp42"  # given to the manager only as its sha256


def write_keys(tmp_path, extra=""):
    p = tmp_path / "keys"
    p.write_text("# admin API keys\n"
                 f"viewer:{VIEWER}\n"
                 "\n"
                 f"operator: {OPERATOR}\n"
                 f"admin:{ADMIN_F}\n"
                 f"operator:sha256:{hashlib.sha256(SECRET_DIGEST_KEY.encode()).hexdigest()}\n"
                 + extra)
    return str(p)


def start_keyed(manager_factory, tmp_path, env=None):
    e = {"ADMIN_API_KEYS_FILE": write_keys(tmp_path), "ADMIN_API_KEY": ADMIN_ENV}
    e.update(env or {})
    return manager_factory(env=e)


def call(m, method, path, key=None, body=None, header="Authorization"):
    h = {}
    if key is not None:
        h[header] = f"Bearer {key}" if header == "Authorization" else key
    return http(method, m.admin_url + path, body=body, headers=h)


ROUTES = [  # method, path, least role, body
    ("GET", "/api/agents", "viewer", None),
    ("GET", "/api/agents/nope", "viewer", None),
    ("GET", "/api/commands", "viewer", None),
    ("GET", "/api/commands/nope", "viewer", None),
    ("GET", "/api/status", "viewer", None),
    ("GET", "/api/metrics", "viewer", None),
    ("GET", "/api/openapi.json", "viewer", None),
    ("POST", "/api/commands", "operator", {"type": "scan", "params": {"target": "10.0.0.1"}}),
    ("PUT", "/api/commands/nope/cancel", "operator", None),
    ("POST", "/api/admin/maintenance", "admin", {"enabled": False}),
]
RANK = {"none": 0, "viewer": 1, "operator": 2, "admin": 3}


def test_role_matrix(manager_factory, tmp_path):
    m = start_keyed(manager_factory, tmp_path)
    callers = [("none", None), ("wrong", "not-a-key"), ("viewer", VIEWER),
               ("operator", OPERATOR), ("operator", SECRET_DIGEST_KEY), ("admin", ADMIN_F),
               ("admin", ADMIN_ENV)]
    for method, path, need, body in ROUTES:
        for who, key in callers:
            for header in ("Authorization", "X-API-Key"):
                status, hdrs, resp = call(m, method, path, key, body, header)
                where = f"{method} {path} as {who} via {header}: {status} {resp}"
                if who in ("none", "wrong"):
                    assert status == 401, where
                    assert resp["error"]["code"] == "unauthorized", where
                    assert hdrs.get("WWW-Authenticate", "").startswith("Bearer"), where
                elif RANK[who] < RANK[need]:
                    assert status == 403, where
                    assert resp["error"]["code"] == "forbidden", where
                else:
                    assert status not in (401, 403, 429), where
    # Unknown /api paths need a key before they are a 404.
    assert call(m, "GET", "/api/nope")[0] == 401
    assert call(m, "GET", "/api/nope", VIEWER)[0] == 404
    # Probes need no key.
    assert http("GET", m.admin_url + "/health")[0] == 200
    assert http("GET", m.admin_url + "/ready")[0] == 200
    # Shutdown: admin only; the admin call ends the process cleanly.
    for who, key, want in [("none", None, 401), ("wrong", "x", 401), ("viewer", VIEWER, 403),
                           ("operator", OPERATOR, 403)]:
        assert call(m, "POST", "/api/admin/shutdown", key)[0] == want, who
    assert call(m, "POST", "/api/admin/shutdown", ADMIN_F)[0] == 202
    assert m.proc.wait(timeout=20) == 0


def test_no_key_in_logs_and_request_log(manager_factory, tmp_path):
    m = start_keyed(manager_factory, tmp_path)
    for key in (VIEWER, OPERATOR, ADMIN_F, ADMIN_ENV, SECRET_DIGEST_KEY, "wrong-key-Qq11"):
        call(m, "GET", "/api/status", key)
        call(m, "GET", "/api/status", key, header="X-API-Key")
    call(m, "POST", "/api/commands", OPERATOR, {"type": "scan"})
    m.stop()
    logs = m.logs()
    for secret in (VIEWER, OPERATOR, ADMIN_F, ADMIN_ENV, SECRET_DIGEST_KEY, "wrong-key-Qq11"):
        assert secret not in logs
    reqs = [e for e in m.log_events() if e.get("msg") == "request" or e.get("event") == "request"
            or e.get("message") == "request"]
    assert reqs, logs[-2000:]
    by_key = {e.get("key") for e in reqs}
    assert {"viewer@line2", "operator@line4", "admin@line5", "admin@env", "operator@line6",
            "anonymous"} <= by_key, by_key
    r = next(e for e in reqs if e.get("key") == "viewer@line2")
    for field in ("method", "path", "status", "duration_ms", "bytes", "client"):
        assert field in r, r


def test_keys_file_bad_line_refuses_start(tmp_path):
    for extra, line in [("nonsense\n", 7), ("root:abc\n", 7), ("admin:sha256:1234\n", 7),
                        ("\n# fine\nviewer:\n", 9)]:
        keys = write_keys(tmp_path, extra)
        m = Manager(str(tmp_path), env={"ADMIN_API_KEYS_FILE": keys})
        r = subprocess.run([MANAGER_BIN], env=m.env, capture_output=True, text=True, timeout=20)
        assert r.returncode != 0
        lines = [x for x in r.stderr.splitlines() if "ADMIN_API_KEYS_FILE" in x]
        assert len(lines) == 1 and f"line {line}:" in lines[0], r.stderr
        assert VIEWER not in r.stderr + r.stdout
    m = Manager(str(tmp_path), env={"ADMIN_API_KEYS_FILE": str(tmp_path / "missing")})
    r = subprocess.run([MANAGER_BIN], env=m.env, capture_output=True, text=True, timeout=20)
    assert r.returncode != 0 and "ADMIN_API_KEYS_FILE" in r.stderr


def test_no_key_production_refuses(manager_factory):
    m = manager_factory(env={"APP_ENV": "production"})
    status, _, body = m.get("/api/agents")
    assert status == 403 and "no API key is configured" in body["error"]["message"]
    assert call(m, "GET", "/api/status", "anything")[0] == 403
    assert m.get("/health")[0] == 200
    assert m.get("/ready")[0] == 200
    assert any(e.get("level") == "warn" and "no API key configured" in json.dumps(e)
               for e in m.log_events())


def test_development_open_without_keys_but_not_with(manager_factory, tmp_path):
    m = manager_factory()  # APP_ENV=development, no key
    assert m.get("/api/agents")[0] == 200
    assert any("no API key configured" in json.dumps(e) for e in m.log_events())
    m2 = start_keyed(manager_factory, tmp_path)  # development, keys: keys needed
    assert m2.get("/api/agents")[0] == 401
    assert call(m2, "GET", "/api/agents", VIEWER)[0] == 200


def test_rate_limit_per_key(manager_factory, tmp_path):
    m = start_keyed(manager_factory, tmp_path, {"ADMIN_RATE_LIMIT_RPS": "0.2",
                                                "ADMIN_RATE_LIMIT_BURST": "3"})
    for _ in range(3):
        assert call(m, "GET", "/api/status", VIEWER)[0] == 200
    status, hdrs, body = call(m, "GET", "/api/status", VIEWER)
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert 1 <= int(hdrs["Retry-After"]) <= 5
    # Another key, same address: its own bucket.
    assert call(m, "GET", "/api/status", OPERATOR)[0] == 200
    # Probes are not limited.
    assert all(m.get("/health")[0] == 200 for _ in range(5))


def test_rate_limit_per_address(manager_factory, tmp_path):
    m = start_keyed(manager_factory, tmp_path, {"ADMIN_RATE_LIMIT_IP_RPS": "0.2",
                                                "ADMIN_RATE_LIMIT_IP_BURST": "4"})
    got = [call(m, "GET", "/api/status", k)[0] for k in (VIEWER, OPERATOR, ADMIN_F, "wrong")]
    assert got == [200, 200, 200, 401]
    # Every key (and guessing without one) from this address is now limited.
    for k in (VIEWER, ADMIN_ENV, None, "guess"):
        status, hdrs, _ = call(m, "GET", "/api/status", k)
        assert status == 429 and int(hdrs["Retry-After"]) >= 1
    assert m.get("/health")[0] == 200


def test_ready_reports_maintenance(manager_factory, tmp_path):
    m = start_keyed(manager_factory, tmp_path)
    assert m.get("/ready")[2] == {"status": "ready", "maintenance": False}
    assert call(m, "POST", "/api/admin/maintenance", ADMIN_F, {"enabled": True})[0] == 200
    assert m.get("/ready")[::2] == (200, {"status": "ready", "maintenance": True})
    status, _, body = call(m, "POST", "/api/commands", OPERATOR, {"type": "scan"})
    assert status == 503
    assert call(m, "POST", "/api/admin/maintenance", ADMIN_F, {"enabled": False})[0] == 200
    assert m.get("/ready")[2]["maintenance"] is False


def test_openapi_served_is_the_document(manager_factory, tmp_path):
    m = start_keyed(manager_factory, tmp_path)
    assert call(m, "GET", "/api/openapi.json")[0] == 401
    status, hdrs, body = call(m, "GET", "/api/openapi.json", VIEWER)
    assert status == 200 and hdrs["Content-Type"].startswith("application/json")
    with open(os.path.join(ROOT, "docs", "openapi.json")) as f:
        assert body == json.load(f)


@pytest.fixture
def certs(tmp_path):
    key, crt = tmp_path / "admin.key", tmp_path / "admin.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(crt), str(key)


def tls_request(port, ca, method, path, key=None, alpn=None, body=None):
    ctx = ssl.create_default_context(cafile=ca)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    conn = httpclient.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    h = {"Authorization": f"Bearer {key}"} if key else {}
    if body is not None:
        h["Content-Type"] = "application/json"
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    proto = conn.sock.selected_alpn_protocol()
    # keep-alive on the same TLS connection
    conn.request("GET", "/health")
    again = conn.getresponse()
    again.read()
    conn.close()
    return r.status, json.loads(data), proto, again.status


def test_admin_tls(manager_factory, tmp_path, certs):
    crt, key = certs
    m = manager_factory(env={"ADMIN_TLS_ENABLED": "true", "ADMIN_TLS_CERT_FILE": crt,
                             "ADMIN_TLS_KEY_FILE": key, "ADMIN_API_KEY": ADMIN_ENV,
                             "ADMIN_REQUEST_TIMEOUT": "1"},
                        start=False)
    m.start(wait=False)
    port = m.admin_port
    wait_for(lambda: tls_request(port, crt, "GET", "/health")[0] == 200, timeout=15,
             what="admin TLS /health")
    assert tls_request(port, crt, "GET", "/health", alpn=["h2", "http/1.1"])[2] == "http/1.1"
    assert tls_request(port, crt, "GET", "/health", alpn=["h2"])[0] == 200  # no ALPN agreed
    status, body, _, again = tls_request(port, crt, "GET", "/api/status", key=ADMIN_ENV)
    assert status == 200 and "version" in body and again == 200
    assert tls_request(port, crt, "GET", "/api/status")[0] == 401
    status, body, _, _ = tls_request(port, crt, "POST", "/api/admin/maintenance", key=ADMIN_ENV,
                                     body={"enabled": True})
    assert status == 200 and body == {"maintenance": True}
    # Plain HTTP on the TLS port gets nothing useful, and the listener survives it.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        try:
            data = s.recv(100)
        except (ConnectionResetError, socket.timeout):
            data = b""
        assert not data.startswith(b"HTTP/1.1 200")
    # A client that never finishes its handshake is dropped after ADMIN_REQUEST_TIMEOUT.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - t0 < 4
    assert tls_request(port, crt, "GET", "/health")[0] == 200
    assert ADMIN_ENV not in m.logs()
    assert m.stop() == 0
