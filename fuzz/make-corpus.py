#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) and the settings
dictionary (fuzz/settings.dict) from the shapes the unit and integration tests use. Run it
again after a protocol change; the outputs are committed. Encoders are written out by hand
(protobuf varints, HTTP/2 frames, HPACK literals) so that nothing but Python is needed."""
import os
import re
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- protobuf (proto/agent.proto, proto/health.proto) ----

def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_len(num, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def field_double(num, v):
    return varint(num << 3 | 1) + struct.pack("<d", v)


def map_entry(num, k, v):
    return field_len(num, field_len(1, k) + field_len(2, v))


def ping(agent_id="agent-1"):
    return field_len(1, agent_id)


def agent_register(agent_id="agent-1", status=1, meta=None):
    meta = meta or {"hostname": "host-1", "version": "1.2.3", "capabilities": "scan,echo",
                    "max_concurrent": "4"}
    msg = field_len(1, agent_id) + field_varint(2, status)
    for k, v in meta.items():
        msg += map_entry(5, k, v)
    return msg


def heartbeat(agent_id="agent-1"):
    hb = field_varint(1, 1700000000) + field_double(2, 12.5) + field_double(3, 40.0) + \
        field_varint(4, 1)
    return field_len(1, agent_id) + field_varint(2, 2) + field_len(3, hb)


def result(agent_id="agent-1", cmd="cmd-1", status="completed"):
    r = field_len(1, cmd) + field_len(2, status) + map_entry(3, "output", "ok") + \
        field_len(4, "") + field_varint(5, 1700000001)
    return field_len(1, agent_id) + field_varint(2, 1) + field_len(4, r)


def health_req(service=""):
    return field_len(1, service) if service else b""


def lpm(msg, compressed=0):
    return struct.pack(">BI", compressed, len(msg)) + msg


# ---- HTTP/2 (RFC 9113) and HPACK literals (RFC 7541 6.2.2, no Huffman) ----

def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream & 0x7FFFFFFF) + payload


def hpack_int(n, prefix_bits, first=0):
    maxv = (1 << prefix_bits) - 1
    if n < maxv:
        return bytes([first | n])
    out = bytearray([first | maxv])
    n -= maxv
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    out.append(n)
    return bytes(out)


def hpack(headers):
    out = b""
    for k, v in headers:
        k, v = k.encode(), v.encode()
        out += b"\x00" + hpack_int(len(k), 7) + k + hpack_int(len(v), 7) + v
    return out


def grpc_headers(path, extra=()):
    return hpack([(":method", "POST"), (":scheme", "http"), (":path", path),
                  (":authority", "manager:50051"), ("content-type", "application/grpc"),
                  ("te", "trailers")] + list(extra))


SETTINGS, HEADERS, DATA, PING, RST, GOAWAY, WINDOW, CONT, PRIORITY = 4, 1, 0, 6, 3, 7, 8, 9, 2
END_STREAM, END_HEADERS, ACK = 1, 4, 1


def call(stream, path, msgs, end=True, extra=()):
    out = frame(HEADERS, END_HEADERS, stream, grpc_headers(path, extra))
    body = b"".join(lpm(m) for m in msgs)
    out += frame(DATA, END_STREAM if end else 0, stream, body)
    return out


def session_seed(flags, body):
    return bytes([flags, 0x12, 0x34]) + frame(SETTINGS, 0, 0) + body


def frame_seed(max_idx, body):
    return bytes([max_idx, 0x00, 0x07]) + body


# ---- seeds ----

def corpus_grpc_frame():
    msgs = {"ping": ping(), "register": agent_register(), "heartbeat": heartbeat(),
            "result": result(), "result-failed": result(status="failed"),
            "health": health_req("scan.AgentService"), "health-empty": health_req(),
            "busy": agent_register(status=2, meta={"hostname": "h", "segment": "dmz"})}
    for i, (name, m) in enumerate(msgs.items()):
        write("grpc_frame", name, frame_seed(6, lpm(m)))
    write("grpc_frame", "stream-of-three", frame_seed(6, lpm(agent_register()) + lpm(heartbeat())
                                                      + lpm(result())))
    write("grpc_frame", "empty-message", frame_seed(6, lpm(b"")))
    write("grpc_frame", "compressed", frame_seed(6, lpm(ping(), 1)))
    write("grpc_frame", "bad-flag", frame_seed(6, b"\x02\x00\x00\x00\x01x"))
    write("grpc_frame", "too-big", frame_seed(3, lpm(b"x" * 100)))
    write("grpc_frame", "truncated", frame_seed(6, lpm(heartbeat())[:-3]))
    write("grpc_frame", "huge-claim", frame_seed(7, b"\x00\x7f\xff\xff\xff" + b"a" * 40))


def corpus_grpc_session():
    auth = [("authorization", "Bearer fuzz-token")]
    P, C, H = "/scan.AgentService/Ping", "/scan.AgentService/Connect", "/grpc.health.v1.Health/Check"
    write("grpc_session", "ping", session_seed(0, call(1, P, [ping()])))
    write("grpc_session", "ping-token", session_seed(1, call(1, P, [ping()], extra=auth)))
    write("grpc_session", "ping-no-token", session_seed(1, call(1, P, [ping()])))
    write("grpc_session", "ping-two-msgs", session_seed(0, call(1, P, [ping(), ping()])))
    write("grpc_session", "connect", session_seed(0, call(1, C, [agent_register(), heartbeat(),
                                                                 result()], end=False)))
    write("grpc_session", "connect-end", session_seed(0, call(1, C, [agent_register(),
                                                                     heartbeat()])))
    write("grpc_session", "connect-token", session_seed(1, call(
        3, C, [agent_register()], end=False, extra=auth)))
    write("grpc_session", "connect-two", session_seed(0, call(1, C, [agent_register("a-1")], False)
                                                      + call(3, C, [agent_register("a-2")], False)))
    write("grpc_session", "connect-replace", session_seed(0, call(1, C, [agent_register()], False)
                                                          + call(3, C, [agent_register()], False)))
    write("grpc_session", "connect-rst", session_seed(0, call(1, C, [agent_register()], False) +
                                                      frame(RST, 0, 1, struct.pack(">I", 8))))
    write("grpc_session", "health", session_seed(0, call(1, H, [health_req("scan.AgentService")])))
    write("grpc_session", "health-unknown", session_seed(0, call(1, H, [health_req("nope")])))
    write("grpc_session", "watch", session_seed(0, call(1, "/grpc.health.v1.Health/Watch",
                                                        [health_req()], end=False)))
    write("grpc_session", "unknown-method", session_seed(0, call(1, "/x.Y/Z", [b""])))
    write("grpc_session", "timeout", session_seed(0, call(1, P, [ping()],
                                                          extra=[("grpc-timeout", "1m")])))
    write("grpc_session", "timeout-zero", session_seed(0, call(1, P, [ping()],
                                                               extra=[("grpc-timeout", "0n")])))
    write("grpc_session", "gzip", session_seed(0, call(1, P, [ping()],
                                                       extra=[("grpc-encoding", "gzip")])))
    write("grpc_session", "ping-frames", session_seed(0, frame(PING, 0, 0, b"12345678") * 3 +
                                                      frame(WINDOW, 0, 0, struct.pack(">I", 1000))))
    write("grpc_session", "goaway", session_seed(0, call(1, P, [ping()]) +
                                                 frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0))))
    hdr = grpc_headers(C)
    write("grpc_session", "continuation", session_seed(0, frame(HEADERS, 0, 1, hdr[:10]) +
                                                       frame(CONT, END_HEADERS, 1, hdr[10:]) +
                                                       frame(DATA, 0, 1, lpm(agent_register()))))
    write("grpc_session", "split-message", session_seed(0, frame(HEADERS, END_HEADERS, 1, hdr) +
                                                        frame(DATA, 0, 1, lpm(heartbeat())[:7]) +
                                                        frame(DATA, 0, 1, lpm(heartbeat())[7:])))
    write("grpc_session", "stalled-reader", session_seed(2, call(1, "/grpc.health.v1.Health/Watch",
                                                                 [health_req()], end=False)))
    write("grpc_session", "get-method", session_seed(0, frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                                              hpack([(":method", "GET"),
                                                                     (":scheme", "http"),
                                                                     (":path", P),
                                                                     (":authority", "m")]))))


KEY = "Authorization: Bearer fuzz-admin-key\r\n"


def req(method, target, body=None, headers=KEY, ctype="application/json"):
    s = "%s %s HTTP/1.1\r\nHost: manager\r\n%s" % (method, target, headers)
    if body is not None:
        s += "Content-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (ctype, len(body.encode()), body)
    else:
        s += "\r\n"
    return s


def corpus_http_admin():
    cmd = '{"type":"echo","params":{"msg":"hi"},"priority":5,"timeout_seconds":30}'
    seeds = {
        "health": req("GET", "/health", headers=""),
        "ready": req("GET", "/ready", headers=""),
        "agents": req("GET", "/api/agents?limit=5&status=idle&capability=scan"),
        "agent": req("GET", "/api/agents/agent-001"),
        "agent-escaped": req("GET", "/api/agents/a%2Fb%20c"),
        "submit": req("POST", "/api/commands", cmd),
        "submit-full": req("POST", "/api/commands", '{"id":"c-1","type":"scan.nmap","params":'
                           '{"target":"10.0.0.1"},"agent_id":"agent-1","capabilities":{"os":'
                           '"linux"},"priority":9,"deadline":"2030-01-01T00:00:00Z","strategy":'
                           '"weighted","filter":{"segment":"dmz"}}'),
        "submit-broadcast": req("POST", "/api/commands", '{"type":"update","broadcast":true,'
                                '"filter":{"os":"linux"}}'),
        "submit-array": req("POST", "/api/commands", '[{"type":"a"},{"type":"b","priority":1}]'),
        "submit-idem": req("POST", "/api/commands", cmd, headers=KEY + "Idempotency-Key: k1\r\n"),
        "submit-bad": req("POST", "/api/commands", '{"type":"ec\\u0000ho","params":{"a":1}}'),
        "submit-utf8": req("POST", "/api/commands", '{"type":"echo","params":{"m":"\\ud83d\\ude00'
                           ' caf\\u00e9"}}'),
        "submit-text": req("POST", "/api/commands", cmd, ctype="text/plain"),
        "submit-then-get": req("POST", "/api/commands", '{"id":"c-7","type":"echo"}') +
        req("GET", "/api/commands/c-7") + req("PUT", "/api/commands/c-7/cancel") +
        req("GET", "/api/commands?status=cancelled&limit=10"),
        "list": req("GET", "/api/commands?limit=2&cursor=abc&type=echo"),
        "status": req("GET", "/api/status"),
        "metrics": req("GET", "/api/metrics"),
        "openapi": req("GET", "/api/openapi.json"),
        "maintenance": req("POST", "/api/admin/maintenance", '{"enabled":true}') +
        req("POST", "/api/commands", cmd) + req("POST", "/api/admin/maintenance",
                                                '{"enabled":false}'),
        "shutdown": req("POST", "/api/admin/shutdown", '{"reason":"fuzz"}'),
        "no-key": req("GET", "/api/agents", headers=""),
        "x-api-key": req("GET", "/api/status", headers="X-API-Key: fuzz-admin-key\r\n"),
        "wrong-key": req("GET", "/api/status", headers="Authorization: Bearer nope\r\n"),
        "method-405": req("DELETE", "/api/agents"),
        "not-found": req("GET", "/api/nothing/here"),
        "chunked": "POST /api/commands HTTP/1.1\r\nHost: m\r\n" + KEY +
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\n{\"typ\r\n10\r\ne\":\"echo\"}      \r\n0\r\n\r\n",
        "expect-continue": "POST /api/commands HTTP/1.1\r\nHost: m\r\n" + KEY +
        "Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 15\r\n\r\n"
        "{\"type\":\"echo\"}",
        "http10": "GET /health HTTP/1.0\r\n\r\n",
        "http09": "GET /health\r\n",
        "cl-te": "POST /api/commands HTTP/1.1\r\nHost: m\r\nContent-Length: 4\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "huge-chunk": "POST /api/commands HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n"
        "\r\n7fffffffffffffff\r\n",
        "bad-path": "GET /api/agents/\xff\xfe HTTP/1.1\r\nHost: m\r\n" + KEY + "\r\n",
        "pipelined": req("GET", "/health", headers="") * 4,
    }
    for name, s in seeds.items():
        write("http_admin", name, s.encode("latin-1"))


def corpus_amqp_intake():
    bodies = {
        "echo": '{"type":"echo","params":{"msg":"hello"}}',
        "full": '{"id":"amqp-1","type":"scan","params":{"t":"10.0.0.1"},"agent_id":"agent-1",'
                '"priority":3,"timeout_seconds":60,"strategy":"least_loaded"}',
        "broadcast": '{"type":"update","broadcast":true,"filter":{"segment":"dmz"}}',
        "idempotent": '{"type":"echo","idempotency_key":"k-1"}',
        "nul": '{"type":"echo\\u0000evil"}',
        "bad-json": '{"type":',
        "not-object": '[1,2,3]',
        "bad-params": '{"type":"echo","params":{"a":{"b":1}}}',
        "bad-priority": '{"type":"echo","priority":99}',
        "deadline": '{"type":"echo","deadline":"2031-02-03T04:05:06.789+02:00"}',
        "unicode": '{"type":"echo","params":{"m":"\\u00e9\\ud83d\\ude00"}}',
        "empty": '',
    }
    for i, (name, b) in enumerate(bodies.items()):
        flags = [0x07, 0x04, 0x00, 0x14, 0x01, 0x02, 0x00, 0x07, 0x00, 0x30, 0x03, 0x00][i]
        write("amqp_intake", name, bytes([flags]) + b.encode())


def settings_names():
    src = open(os.path.join(HERE, "..", "src", "app", "settings.c")).read()
    return re.findall(r'^\s*\{"([A-Z][A-Z0-9_]*)", K_', src, re.M)


def corpus_settings():
    names = settings_names()
    with open(os.path.join(HERE, "settings.dict"), "w") as f:
        f.write("# every setting of src/app/settings.c, as variable and flag (make-corpus.py)\n")
        for n in names:
            f.write('"%s="\n' % n)
            f.write('"--%s="\n' % n.lower().replace("_", "-"))
        for w in ["true", "false", "0", "-1", "1e309", "nan", "inf", "18446744073709551616",
                  "0x10", "debug", "json", "console", "[::1]:80", "localhost:0", ":65536",
                  "--help", "--version", "30s", "1.5"]:
            f.write('"%s"\n' % w)
    write("settings", "defaults", "")
    write("settings", "help", "--help\n")
    write("settings", "version", "-V\n")
    write("settings", "env", "GRPC_SERVER_ADDR=127.0.0.1:50051\nADMIN_API_ADDR=[::1]:8080\n"
          "MAX_AGENT_LOAD=0.5\nCOMMAND_QUEUE_SIZE=10\nSIRIUS_LOG_LEVEL=debug\n"
          "SIRIUS_LOG_FORMAT=console\nMAINTENANCE_MODE=true\n")
    write("settings", "flags", "--grpc-server-addr=:1\n--max-retries=5\n--maintenance-mode\n"
          "--load-balancing-strategy=weighted\n--agent-timeout=1.5\n")
    write("settings", "flag-wins", "MAX_RETRIES=2\n--max-retries=3\n")
    write("settings", "bad-number", "COMMAND_QUEUE_SIZE=-5\n")
    write("settings", "bad-addr", "ADMIN_API_ADDR=host:99999\n")
    write("settings", "bad-bool", "TLS_ENABLED=maybe\n")
    write("settings", "unknown-flag", "--no-such-thing\n")
    write("settings", "all-limits", "GRPC_MAX_MESSAGE_BYTES=1\nGRPC_MAX_CONCURRENT_STREAMS=0\n"
          "ADMIN_MAX_BODY_BYTES=18446744073709551615\nADMIN_REQUEST_TIMEOUT=0\n")
    write("settings", "rabbit", "RABBITMQ_URL=amqp://u:p@host:5672/%2f\nAMQP_PREFETCH=65536\n"
          "VALKEY_HOST=localhost\nVALKEY_PORT=0\n")


def corpus_keyfiles():
    write("keyfiles", "admin", "admin:s3cret-admin-key\n")
    write("keyfiles", "roles", "# keys\nviewer:view-key\noperator:op-key\n\nadmin:adm-key\n")
    write("keyfiles", "digest", "admin:sha256:" + "ab" * 32 + "\n")
    write("keyfiles", "agent", "agent-1:agent-one-token\n*:any-agent-token\n")
    write("keyfiles", "agent-digest", "agent-2:sha256:" + "0f" * 32 + "\n")
    write("keyfiles", "spaces", "  admin :  spaced-key  \r\n")
    write("keyfiles", "bad-role", "root:key\n")
    write("keyfiles", "no-colon", "justakey\n")
    write("keyfiles", "bad-digest", "admin:sha256:xyz\n")
    write("keyfiles", "empty-key", "admin:\n")
    write("keyfiles", "crlf", "viewer:a\r\noperator:b\r\n")
    write("keyfiles", "no-newline", "admin:last-line-key")


if __name__ == "__main__":
    corpus_grpc_frame()
    corpus_grpc_session()
    corpus_http_admin()
    corpus_amqp_intake()
    corpus_settings()
    corpus_keyfiles()
    sys.exit(0)
