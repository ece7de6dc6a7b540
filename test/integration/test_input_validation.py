"""Issue 12, items 4-6: strings from peers are refused at the edge when they hold a NUL (a C string
would end there: "ec\\u0000ho" was stored as "ec", "echo\\u0000evil" over AMQP ran as "echo") or
are not valid UTF-8 (they were stored and written back, making every listing invalid JSON); and
whatever bytes a request path holds, the JSON log lines and the error bodies stay valid UTF-8.
REST answers 400 naming the field, AMQP dead-letters with the reason, gRPC ends the stream with
INTERNAL naming the field."""
import contextlib
import json
import socket
import time

import grpc
import pytest

from conftest import http, wait_for
from pipeline_fixtures import (Collector, broker, declare, pipeline_env,  # noqa: F401
                               publish, redis, start_manager, store_statuses)


def strict_json(raw):
    """The bytes as JSON, refusing anything that is not UTF-8."""
    return json.loads(raw.decode("utf-8", errors="strict"))


def post_raw(m, raw):
    """POST /api/commands with the body bytes as they are; (status, strict JSON answer)."""
    s = socket.create_connection(("127.0.0.1", m.admin_port), timeout=5)
    with contextlib.closing(s):
        s.sendall(b"POST /api/commands HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(raw) + raw)
        resp = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            resp += chunk
    head, _, body = resp.partition(b"\r\n\r\n")
    return int(head.split()[1]), strict_json(body)


def raw_get(m, path_bytes):
    s = socket.create_connection(("127.0.0.1", m.admin_port), timeout=5)
    with contextlib.closing(s):
        s.sendall(b"GET " + path_bytes + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        resp = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            resp += chunk
    head, _, body = resp.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def log_lines_valid(m):
    """Every line of the manager's log is valid UTF-8 and one JSON object; returns them."""
    with open(m.log_path, "rb") as f:
        lines = f.read().splitlines()
    out = []
    for ln in lines:
        out.append(strict_json(ln))
    return out


REFUSED_REST = [
    (b'{"type":"ec\\u0000ho"}', "type: must not contain NUL (\\u0000)"),
    (b'{"type":"echo","params":{"cmd":"echo\\u0000evil"}}',
     "params.cmd: must not contain NUL (\\u0000)"),
    (b'{"type":"echo","params":{"a\\u0000b":"x"}}', "params: key must not contain NUL (\\u0000)"),
    (b'{"type":"ec\x00ho"}', "type: must not contain NUL"),
    (b'{"type":"echo","params":{"x":"\xff\xfe"}}', "params.x: must be valid UTF-8"),
    (b'{"type":"echo","params":{"x":"\xc0\x80"}}', "params.x: must be valid UTF-8"),
    (b'{"type":"echo","params":{"x":"\xed\xa0\x80"}}', "params.x: must be valid UTF-8"),
    (b'{"type":"echo","agent_id":"a\xff"}', "agent_id: must be valid UTF-8"),
    (b'{"type":"echo","capabilities":{"os":"l\xe9"}}', "capabilities.os: must be valid UTF-8"),
    (b'[{"type":"echo"},{"type":"echo","params":{"x":"\x80"}}]',
     "element 1: params.x: must be valid UTF-8"),
]


def test_rest_refuses_nul_and_invalid_utf8(manager):
    m = manager
    for raw, want in REFUSED_REST:
        status, body = post_raw(m, raw)
        assert status == 400, (raw, body)
        assert body["error"]["code"] == "invalid_field", (raw, body)
        assert body["error"]["message"] == want, (raw, body)
    # nothing of it was stored; the listing is valid UTF-8 JSON
    status, raw = raw_get(m, b"/api/commands")
    assert status == 200
    assert strict_json(raw)["commands"] == []
    # an escaped backslash before u0000 is six ordinary characters; valid non-ASCII is kept
    status, body = post_raw(m, b'{"type":"echo","params":{"p":"\\\\u0000","t":"caf\xc3\xa9"}}')
    assert status == 202, body
    status, raw = raw_get(m, b"/api/commands/" + body["id"].encode())
    assert status == 200
    c = strict_json(raw)
    assert c["type"] == "echo"
    assert c["params"] == {"p": "\\u0000", "t": "caf\u00e9"}
    log_lines_valid(m)


def test_paths_with_invalid_utf8_log_and_answer_utf8(manager):
    m = manager
    status, body = raw_get(m, b"/api/agents/%FF%FE")
    assert status == 404
    err = strict_json(body)["error"]
    assert err["code"] == "not_found"
    status, body = raw_get(m, b"/api/agents/\xff\xfe")
    assert status in (400, 404)
    strict_json(body)
    status, body = raw_get(m, b"/api/\xc0\xaf\xed\xa0\x80nothing/\xf4\x90\x80\x80")
    assert status in (400, 404)
    strict_json(body)
    assert m.health() == 200
    # the request log saw those paths: every line is still UTF-8 JSON
    wait_for(lambda: any("\ufffd" in json.dumps(e, ensure_ascii=False)
                         for e in log_lines_valid(m)),
             timeout=5, what="a log line with U+FFFD")
    log_lines_valid(m)


# ---- gRPC: raw protobuf bytes (Python's protobuf refuses to build invalid strings) ----------

def ld(field, data):
    """A length-delimited protobuf field."""
    assert len(data) < 128
    return bytes([(field << 3) | 2, len(data)]) + data


def test_grpc_refuses_invalid_strings(manager):
    m = manager
    with grpc.insecure_channel(m.grpc_addr) as ch:
        ping = ch.unary_unary("/scan.AgentService/Ping")
        with pytest.raises(grpc.RpcError) as e:
            ping(ld(1, b"a\xff"), timeout=5)
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert e.value.details() == "invalid UTF-8 in field agent_id of scan.PingRequest"
        assert ping(ld(1, b"caf\xc3\xa9"), timeout=5)  # valid: answered

        connect = ch.stream_stream("/scan.AgentService/Connect")
        # metadata hostname with an invalid byte, on the first message
        meta = ld(5, ld(1, b"hostname") + ld(2, b"h\xfe"))
        call = connect(iter([ld(1, b"g-bad") + meta]), timeout=5)
        with pytest.raises(grpc.RpcError) as e:
            list(call)
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert e.value.details() == "invalid UTF-8 in field metadata.value of scan.AgentMessage"
        # a NUL inside agent_id
        call = connect(iter([ld(1, b"g\x00x")]), timeout=5)
        with pytest.raises(grpc.RpcError) as e:
            list(call)
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert e.value.details() == "NUL in field agent_id of scan.AgentMessage"
    status, raw = raw_get(m, b"/api/agents")
    assert status == 200
    assert strict_json(raw)["agents"] == []
    log_lines_valid(m)


# ---- AMQP ---------------------------------------------------------------------------------

@pytest.fixture
def started(tmp_path):
    ms = []
    yield ms
    for x in ms:
        with contextlib.suppress(Exception):
            x.stop()


def test_amqp_dead_letters_nul_and_invalid_utf8(broker, redis, tmp_path, started):  # noqa: F811
    cmd_q, res_q = broker.queues("inval")
    declare(broker.port, cmd_q, res_q)
    m = start_manager(str(tmp_path), pipeline_env(broker, redis, cmd_q, res_q), started)
    dlq = Collector(broker.port, cmd_q + ".dlq")
    res = Collector(broker.port, res_q)
    publish(broker.port, cmd_q, [
        b'{"id":"q-nul","type":"echo\\u0000evil"}',
        b'{"id":"q-rawnul","type":"echo\x00evil"}',
        b'{"id":"q-utf8","type":"echo","params":{"x":"\xff"}}',
        b'{"id":"q-ok","type":"echo","params":{"x":"caf\xc3\xa9"}}',
    ])
    n_bad = 3
    with contextlib.suppress(UnicodeError, TypeError, ValueError):
        # pika writes a bytes property as it is: a correlation id that is not UTF-8
        publish(broker.port, cmd_q, [(b'{"id":"q-corr","type":"echo"}',
                                      {"correlation_id": b"c\xff"})])
        n_bad = 4
    try:
        dlq.wait(lambda s: len(s.messages) >= n_bad, timeout=20, what="dead letters")
        reasons = [p.headers.get("x-rejection-reason") for _, p in dlq.messages]
        assert "type: must not contain NUL (\\u0000)" in reasons, reasons
        assert "type: must not contain NUL" in reasons, reasons
        assert "params.x: must be valid UTF-8" in reasons, reasons
        if n_bad == 4:
            assert "correlation_id: must be valid UTF-8 without NUL" in reasons, reasons
        # the valid one is accepted (no agent: it stays queued) and lists as UTF-8 JSON
        wait_for(lambda: store_statuses(redis, ["q-ok"])["q-ok"] == "queued", timeout=10,
                 what="q-ok stored")
        st = store_statuses(redis, ["q-nul", "q-rawnul", "q-utf8", "q-corr"])
        assert all(v is None for v in st.values()), st
        status, raw = raw_get(m, b"/api/commands")
        assert status == 200
        ids = {c["id"]: c for c in strict_json(raw)["commands"]}
        assert set(ids) == {"q-ok"}, ids
        assert ids["q-ok"]["params"] == {"x": "caf\u00e9"}
        time.sleep(0.5)
        assert len(dlq.messages) == n_bad  # dead-lettered once each: never requeued
        log_lines_valid(m)
    finally:
        dlq.close()
        res.close()
