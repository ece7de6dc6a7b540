/* Unit tests of src/http/http1.c and http.c: the llhttp adapter fed from memory. */
#include "http/http.h"
#include "http/http1.h"
#include "util/err.h"

#include "t.h"

typedef struct sink {
  http_request *reqs[16];
  size_t n;
  int pause_after; /* pause after this many requests (0: never) */
} sink;

static int on_request(void *ud, http_request *req) {
  sink *s = ud;
  if (s->n < 16)
    s->reqs[s->n++] = req;
  else
    http_request_free(req);
  return s->pause_after && s->n >= (size_t)s->pause_after;
}

static http1_parser *mk(sink *s, size_t max_head, size_t max_body) {
  http1_parser *p = NULL;
  http1_config cfg = {
      .max_header_bytes = max_head, .max_body_bytes = max_body, .on_request = on_request, .ud = s};
  T_EQ_INT(http1_create(&cfg, &p), 0);
  return p;
}

static void sink_free(sink *s) {
  for (size_t i = 0; i < s->n; i++)
    http_request_free(s->reqs[i]);
  s->n = 0;
}

static void test_simple_request(void) {
  sink s = {0};
  http1_parser *p = mk(&s, 4096, 1024);
  const char in[] = "GET /api/agents?status=idle&x=1 HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n"
                    "X-Api-Key: k1\r\n\r\n";
  int st = 0;
  T_EQ_INT(http1_feed(p, in, sizeof(in) - 1, &st), sizeof(in) - 1);
  T_EQ_INT(s.n, 1);
  http_request *r = s.reqs[0];
  T_EQ_STR(r->method, "GET");
  T_EQ_STR(r->path, "/api/agents");
  T_EQ_STR(r->query, "status=idle&x=1");
  T_EQ_INT(r->nheaders, 3);
  T_EQ_STR(http_request_header(r, "host"), "a");
  T_EQ_STR(http_request_header(r, "x-empty"), "");
  T_EQ_STR(http_request_header(r, "X-API-KEY"), "k1");
  T_ASSERT(http_request_header(r, "nope") == NULL);
  T_EQ_INT(r->keep_alive, 1);
  T_EQ_INT(r->body_len, 0);
  T_EQ_INT(http1_pending(p), 0);
  sink_free(&s);
  http1_destroy(p);
}

/* Every split point of the input must give the same request. */
static void test_byte_by_byte(void) {
  sink s = {0};
  http1_parser *p = mk(&s, 4096, 1024);
  const char in[] = "POST /x/y HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nA: b c\r\n\r\nhello";
  int st = 0;
  for (size_t i = 0; i < sizeof(in) - 1; i++) {
    T_EQ_INT(http1_feed(p, in + i, 1, &st), 1);
    if (i == 0)
      T_ASSERT(http1_pending(p) != 0);
  }
  T_EQ_INT(s.n, 1);
  T_EQ_STR(s.reqs[0]->method, "POST");
  T_EQ_STR(s.reqs[0]->path, "/x/y");
  T_EQ_STR(http_request_header(s.reqs[0], "a"), "b c");
  T_EQ_INT(s.reqs[0]->body_len, 5);
  T_EQ_STR(s.reqs[0]->body, "hello");
  sink_free(&s);
  http1_destroy(p);
}

/* Two requests in one feed; pausing after the first returns the exact rest. */
static void test_pipelining_pause(void) {
  sink s = {.pause_after = 1};
  http1_parser *p = mk(&s, 4096, 1024);
  const char in[] = "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
  size_t first = strlen("GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
  int st = 0;
  long used = http1_feed(p, in, sizeof(in) - 1, &st);
  T_EQ_INT(used, first);
  T_EQ_INT(s.n, 1);
  s.pause_after = 0;
  T_EQ_INT(http1_feed(p, in + used, sizeof(in) - 1 - (size_t)used, &st),
           sizeof(in) - 1 - (size_t)used);
  T_EQ_INT(s.n, 2);
  T_EQ_STR(s.reqs[0]->path, "/a");
  T_EQ_STR(s.reqs[1]->path, "/b");
  sink_free(&s);
  http1_destroy(p);
}

static void test_keep_alive_flags(void) {
  sink s = {0};
  http1_parser *p = mk(&s, 4096, 1024);
  const char a[] = "GET / HTTP/1.0\r\n\r\n";
  int st = 0;
  T_EQ_INT(http1_feed(p, a, sizeof(a) - 1, &st), sizeof(a) - 1);
  T_EQ_INT(s.n, 1);
  T_EQ_INT(s.reqs[0]->keep_alive, 0);
  http1_destroy(p);
  sink_free(&s);
  p = mk(&s, 4096, 1024);
  const char b[] = "GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
  T_EQ_INT(http1_feed(p, b, sizeof(b) - 1, &st), sizeof(b) - 1);
  T_EQ_INT(s.reqs[0]->keep_alive, 0);
  sink_free(&s);
  http1_destroy(p);
}

static void test_header_limit(void) {
  sink s = {0};
  http1_parser *p = mk(&s, 64, 1024);
  char in[256];
  snprintf(in, sizeof(in), "GET / HTTP/1.1\r\nX-Big: %0100d\r\n\r\n", 7);
  int st = 0;
  T_EQ_INT(http1_feed(p, in, strlen(in), &st), SM_ELIMIT);
  T_EQ_INT(st, 431);
  /* Once failed, always failed. */
  st = 0;
  T_EQ_INT(http1_feed(p, "GET / HTTP/1.1\r\n\r\n", 18, &st), SM_EPARSE);
  T_EQ_INT(st, 431);
  T_EQ_INT(s.n, 0);
  http1_destroy(p);
}

static void test_too_many_headers(void) {
  sink s = {0};
  http1_parser *p = mk(&s, 1 << 20, 1024);
  http_buf b = {0};
  http_buf_printf(&b, "GET / HTTP/1.1\r\n");
  for (int i = 0; i < HTTP_MAX_HEADERS + 1; i++)
    http_buf_printf(&b, "H%d: v\r\n", i);
  http_buf_printf(&b, "\r\n");
  int st = 0;
  T_ASSERT(http1_feed(p, b.p, b.len, &st) < 0);
  T_EQ_INT(st, 431);
  http_buf_finish(&b);
  http1_destroy(p);
}

static void test_body_limit(void) {
  sink s = {0};
  http1_parser *p = mk(&s, 4096, 10);
  const char a[] = "POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
  int st = 0;
  T_EQ_INT(http1_feed(p, a, sizeof(a) - 1, &st), SM_ETOOBIG);
  T_EQ_INT(st, 413);
  http1_destroy(p);
  /* Chunked: the limit applies as the body arrives. */
  p = mk(&s, 4096, 10);
  const char b[] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n"
                   "8\r\n12345678\r\n0\r\n\r\n";
  st = 0;
  T_EQ_INT(http1_feed(p, b, sizeof(b) - 1, &st), SM_ETOOBIG);
  T_EQ_INT(st, 413);
  T_EQ_INT(s.n, 0);
  http1_destroy(p);
  /* Exactly at the limit is fine. */
  p = mk(&s, 4096, 10);
  const char c[] = "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
  T_EQ_INT(http1_feed(p, c, sizeof(c) - 1, &st), sizeof(c) - 1);
  T_EQ_INT(s.n, 1);
  T_EQ_INT(s.reqs[0]->body_len, 10);
  sink_free(&s);
  http1_destroy(p);
}

/* A chunk size beyond the limit is refused when its size line arrives, before any of its bytes
 * (it used to wait for them until the request timeout). */
static void test_chunk_size_limit(void) {
  const char *sizes[] = {"7fffffffffffffff", "b", "ffffffff"};
  for (size_t i = 0; i < 3; i++) {
    sink s = {0};
    http1_parser *p = mk(&s, 4096, 10);
    char in[256];
    int n = snprintf(in, sizeof(in),
                     "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%s\r\nab", sizes[i]);
    int st = 0;
    T_EQ_INT(http1_feed(p, in, (size_t)n, &st), SM_ETOOBIG);
    T_EQ_INT(st, 413);
    T_EQ_INT(s.n, 0);
    http1_destroy(p);
  }
  /* Several chunks adding up past the limit: the chunk that would cross it. */
  sink s = {0};
  http1_parser *p = mk(&s, 4096, 10);
  const char in[] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n123456\r\n5\r\n";
  int st = 0;
  T_EQ_INT(http1_feed(p, in, sizeof(in) - 1, &st), SM_ETOOBIG);
  http1_destroy(p);
}

typedef struct gate {
  sink s;
  int calls;
  int refuse; /* refuse every request on its headers */
} gate;

static int gate_on_request(void *ud, http_request *req) {
  return on_request(&((gate *)ud)->s, req);
}

static int gate_on_headers(void *ud, http_request *req) {
  gate *g = ud;
  g->calls++;
  T_ASSERT(req->body == NULL && req->path != NULL);
  return g->refuse;
}

/* on_headers: asked once per request with a body, on its header block; refusing ends the
 * parser with nothing of the body read or buffered. */
static void test_on_headers(void) {
  http1_budget budget = {.max = 1 << 20};
  gate g = {0};
  http1_config cfg = {.max_header_bytes = 4096,
                      .max_body_bytes = 1 << 20,
                      .on_request = gate_on_request,
                      .ud = &g,
                      .on_headers = gate_on_headers,
                      .budget = &budget};
  http1_parser *p = NULL;
  T_EQ_INT(http1_create(&cfg, &p), 0);
  const char ok[] = "GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
  int st = 0;
  T_EQ_INT(http1_feed(p, ok, sizeof(ok) - 1, &st), sizeof(ok) - 1);
  T_EQ_INT(g.s.n, 2);
  T_EQ_INT(g.calls, 1); /* not for the GET without a body */
  T_EQ_INT(budget.used, 0);
  g.refuse = 1;
  const char up[] = "POST /c HTTP/1.1\r\nContent-Length: 900000\r\n\r\nxxxxxxxx";
  T_EQ_INT(http1_feed(p, up, sizeof(up) - 1, &st), sizeof(up) - 1);
  T_EQ_INT(g.calls, 2);
  T_EQ_INT(g.s.n, 2);
  T_EQ_INT(http1_pending(p), 0);
  T_EQ_INT(budget.used, 0);
  T_EQ_INT(http1_feed(p, "more", 4, &st), 4); /* discarded */
  T_EQ_INT(g.s.n, 2);
  sink_free(&g.s);
  http1_destroy(p);
}

/* The body budget is shared: what one parser holds, another cannot take; it comes back when
 * the body is handed over, on an error and on destroy. */
static void test_budget(void) {
  http1_budget budget = {.max = 4096};
  sink s = {0};
  http1_config cfg = {.max_header_bytes = 4096,
                      .max_body_bytes = 1 << 20,
                      .on_request = on_request,
                      .ud = &s,
                      .budget = &budget};
  http1_parser *a = NULL, *b = NULL;
  T_EQ_INT(http1_create(&cfg, &a), 0);
  T_EQ_INT(http1_create(&cfg, &b), 0);
  static char body[3500];
  memset(body, 'x', sizeof(body));
  const char h[] = "POST / HTTP/1.1\r\nContent-Length: 3000\r\n\r\n";
  int st = 0;
  T_EQ_INT(http1_feed(a, h, sizeof(h) - 1, &st), sizeof(h) - 1);
  T_EQ_INT(http1_feed(a, body, 1000, &st), 1000);
  T_EQ_INT(budget.used, 1024); /* the capacity held */
  T_EQ_INT(http1_in_headers(a), 0);
  T_EQ_INT(http1_feed(b, h, sizeof(h) - 1, &st), sizeof(h) - 1);
  T_EQ_INT(http1_feed(b, body, 3500, &st), SM_EUNAVAIL); /* a 4096 buffer: no room */
  T_EQ_INT(st, 503);
  T_EQ_INT(budget.used, 1024);
  http1_destroy(b);
  T_EQ_INT(http1_feed(a, body, 1500, &st), 1500);
  T_EQ_INT(budget.used, 4096);
  T_EQ_INT(http1_feed(a, body, 500, &st), 500); /* complete: handed over */
  T_EQ_INT(s.n, 1);
  T_EQ_INT(budget.used, 0);
  T_EQ_INT(http1_feed(a, h, sizeof(h) - 1, &st), sizeof(h) - 1);
  T_EQ_INT(http1_feed(a, body, 10, &st), 10);
  T_ASSERT(budget.used > 0);
  http1_destroy(a); /* half a body: given back */
  T_EQ_INT(budget.used, 0);
  sink_free(&s);
}

/* http1_in_headers: 1 from a request's first byte until its header block is complete. */
static void test_in_headers(void) {
  sink s = {0};
  http1_parser *p = mk(&s, 4096, 100);
  int st = 0;
  T_EQ_INT(http1_in_headers(p), 0);
  T_EQ_INT(http1_feed(p, "GET / HTTP/1.1\r\nHo", 18, &st), 18);
  T_EQ_INT(http1_in_headers(p), 1);
  const char rest[] = "st: x\r\nContent-Length: 2\r\n\r\n";
  T_EQ_INT(http1_feed(p, rest, sizeof(rest) - 1, &st), sizeof(rest) - 1);
  T_EQ_INT(http1_in_headers(p), 0);
  T_ASSERT(http1_pending(p) != 0);
  T_EQ_INT(http1_feed(p, "ab", 2, &st), 2);
  T_EQ_INT(http1_pending(p), 0);
  sink_free(&s);
  http1_destroy(p);
}

/* Whether s (n bytes) is well-formed UTF-8, decoding code points (independent of http.c). */
static int valid_utf8(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    unsigned c = s[i], cp, len;
    if (c < 0x80) {
      i++;
      continue;
    }
    if ((c & 0xE0) == 0xC0)
      len = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0)
      len = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0)
      len = 4, cp = c & 0x07;
    else
      return 0;
    if (i + len > n)
      return 0;
    for (unsigned k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80)
        return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    unsigned min = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += len;
  }
  return 1;
}

/* Error bodies quote what the client sent (a path): they stay valid UTF-8 JSON whatever the
 * bytes, random ones included; valid multi-byte text passes unchanged. */
static int body_is(const http_response *res, const char *want) {
  return res->body_len == strlen(want) && memcmp(res->body, want, res->body_len) == 0;
}

static void test_error_body_utf8(void) {
  http_response res;
  http_response_init(&res);
  http_response_error(&res, 404, "not_found", "no such resource: /api/agents/\xff\xfe");
  T_ASSERT(body_is(&res, "{\"error\":{\"code\":\"not_found\",\"message\":"
                         "\"no such resource: /api/agents/\\ufffd\\ufffd\"}}"));
  http_response_error(&res, 404, "x", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xc3");
  T_ASSERT(body_is(&res, "{\"error\":{\"code\":\"x\",\"message\":\"caf\xc3\xa9 \xe2\x82\xac "
                         "\xf0\x9f\x98\x80 \\ufffd\"}}"));
  /* overlong, surrogate, above U+10FFFF: each byte replaced */
  http_response_error(&res, 404, "x", "\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80");
  T_ASSERT(valid_utf8((const unsigned char *)res.body, res.body_len));
  T_ASSERT(memchr(res.body, 0xc0, res.body_len) == NULL &&
           memchr(res.body, 0xed, res.body_len) == NULL &&
           memchr(res.body, 0xf4, res.body_len) == NULL);
  srand(12);
  for (int i = 0; i < 20000; i++) {
    char msg[64];
    size_t n = (size_t)(rand() % 63);
    for (size_t k = 0; k < n; k++) {
      msg[k] = (char)(rand() % 255 + 1);
      if (rand() % 3 == 0) /* some plausible UTF-8 lead/continuation mixes */
        msg[k] = (char)(0x80 | (rand() % 0x80));
    }
    msg[n] = '\0';
    http_response_error(&res, 404, "not_found", msg);
    T_EQ_INT(res.status, 404);
    T_ASSERT(valid_utf8((const unsigned char *)res.body, res.body_len));
    for (size_t k = 0; k < res.body_len; k++)
      T_ASSERT((unsigned char)res.body[k] >= 0x20); /* no raw control characters */
  }
  http_response_finish(&res);
}

static void test_expect_continue(void) {
  sink s = {0};
  http1_parser *p = mk(&s, 4096, 100);
  const char h[] = "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
  int st = 0;
  T_EQ_INT(http1_feed(p, h, sizeof(h) - 1, &st), sizeof(h) - 1);
  T_EQ_INT(http1_take_continue(p), 1);
  T_EQ_INT(http1_take_continue(p), 0); /* once */
  T_EQ_INT(http1_feed(p, "abc", 3, &st), 3);
  T_EQ_INT(s.n, 1);
  T_EQ_STR(s.reqs[0]->body, "abc");
  /* Headers and body in one go: nothing to continue. */
  const char all[] = "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx";
  T_EQ_INT(http1_feed(p, all, sizeof(all) - 1, &st), sizeof(all) - 1);
  T_EQ_INT(http1_take_continue(p), 0);
  T_EQ_INT(s.n, 2);
  sink_free(&s);
  http1_destroy(p);
}

static void test_malformed(void) {
  const char *bad[] = {
      "GARBAGE\r\n\r\n",
      "GET / HTTP/9.9\r\n\r\n",
      "GET / HTTP/1.1\r\nNo-Colon\r\n\r\n",
      "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
      "\x01\x02\x03\x04",
      "GET /\r\n\r\n", /* HTTP/0.9: no version, never answered */
      "GET /\r\n",
      "GET /index.html\r\nHost: x\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    sink s = {0};
    http1_parser *p = mk(&s, 4096, 1024);
    int st = 0;
    T_ASSERT(http1_feed(p, bad[i], strlen(bad[i]), &st) < 0);
    T_EQ_INT(st, 400);
    T_EQ_INT(s.n, 0);
    http1_destroy(p);
  }
}

static void test_response_serialize(void) {
  http_response res;
  http_response_init(&res);
  http_response_error(&res, 404, "not_found", "no \"x\"");
  http_response_header(&res, "Allow", "GET");
  http_buf out = {0};
  T_EQ_INT(http_response_serialize(&res, 1, &out), 0);
  http_buf_append(&out, "", 1);
  T_EQ_STR(out.p, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                  "Content-Length: 51\r\nConnection: keep-alive\r\nAllow: GET\r\n\r\n"
                  "{\"error\":{\"code\":\"not_found\",\"message\":\"no \\\"x\\\"\"}}");
  http_buf_finish(&out);
  http_response_finish(&res);
}

static void test_percent_decode(void) {
  char out[32];
  T_EQ_INT(http_percent_decode("a%20b+c", 7, out, 1), 5);
  T_EQ_STR(out, "a b c");
  T_EQ_INT(http_percent_decode("a+b%2F", 6, out, 0), 4);
  T_EQ_STR(out, "a+b/");
  T_EQ_INT(http_percent_decode("%2", 2, out, 0), SM_EPARSE);
  T_EQ_INT(http_percent_decode("%zz", 3, out, 0), SM_EPARSE);
  T_EQ_INT(http_percent_decode("%00", 3, out, 0), SM_EPARSE);
}

int main(void) {
  T_RUN(test_simple_request);
  T_RUN(test_byte_by_byte);
  T_RUN(test_pipelining_pause);
  T_RUN(test_keep_alive_flags);
  T_RUN(test_header_limit);
  T_RUN(test_too_many_headers);
  T_RUN(test_body_limit);
  T_RUN(test_chunk_size_limit);
  T_RUN(test_on_headers);
  T_RUN(test_budget);
  T_RUN(test_in_headers);
  T_RUN(test_error_body_utf8);
  T_RUN(test_expect_continue);
  T_RUN(test_malformed);
  T_RUN(test_response_serialize);
  T_RUN(test_percent_decode);
  return t_done();
}
