/* store_valkey.c - the store on Valkey/Redis (key layout and guarantees: docs/store.md).
 *
 * Each operation that touches more than one key is one Lua script, so it is atomic on the
 * server (idempotent create, compare-and-set update with its index moves and outbox entry).
 * Scripts run with EVALSHA; a NOSCRIPT answer (a restarted server forgot them) resends the
 * same request once with EVAL and the script text.
 *
 * Group commit: the hot-path writes (cmd_create, cmd_update, outbox_remove) are not sent one by
 * one. They are gathered into a batch and sent as ONE call of the `apply` script, which applies
 * the records in order, each with its own semantics, and returns one result per record. A batch
 * goes out just before the loop blocks for I/O (a uv_prepare handle: everything the loop turn
 * produced), after batch_delay_ms when set, or at once when it holds batch_max records. A record
 * is reported only from its batch's reply, so none is acknowledged before the script ran; when
 * the call fails, every record of the batch gets the error. Any other operation first sends the
 * gathered batch, so operations reach the server in the order they were asked for.
 */
#include "store/store.h"
#include "store/valkey.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/hex.h"

#include <assert.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum script_id {
  S_APPLY,
  S_GET,
  S_LIST,
  S_OB_ADD,
  S_OB_LIST,
  S_AG_PUT,
  S_AG_DEL,
  S_AG_LIST,
  S_COUNT
};

/* A command's record, for the scripts that report one (p is the key prefix): '' when absent,
 * else {j, s, g, l, r, kids} - the creation JSON, the status, and the fields the updates wrote
 * ('' when never written), and the children's ids when any child was created (else {}). */
#define REC_LUA                                                                                    \
  "local function rec(id)\n"                                                                       \
  " local v=redis.call('HMGET',p..'cmd:'..id,'j','s','g','l','r','k')\n"                           \
  " if not v[1] then return '' end\n"                                                              \
  " local kids={}\n"                                                                               \
  " if v[6] then kids=redis.call('LRANGE',p..'kids:'..id,0,-1) end\n"                              \
  " return {v[1],v[2] or '',v[3] or '',v[4] or '',v[5] or '',kids}\n"                              \
  "end\n"

/* apply: ARGV[1] prefix, ARGV[2] now (ms), then records, each a tag and its fields:
 *   c id json member status active('1'|'') agent type idem parent   create, idempotent on id/idem
 *   u id expected status final('1'|'') agent g l r ob('1'|'') payload compare-and-set update
 *   d id                                                            outbox removal
 * A create writes the whole record once (j) and, for a broadcast child, appends its id to the
 * parent's children list. An update writes only the lifecycle fields: s (status), a (index
 * agent), g (dispatched agent), l ("attempts,dispatched,started,completed,children" integers)
 * and r (the result, only when there is one); the creation JSON is never rewritten.
 * Returns two elements per record: a code and a stored record ('' when there is none to report):
 * c: 0 created, 1 existed + the stored record; u: 0 done, -1 absent, -2 other status + the
 * stored record; d: 0. The success cases return '' because the caller holds the record it sent. */
static const char apply_script[] =
    "local p=ARGV[1] local now=ARGV[2] local out={} local i=3 local n=#ARGV\n" REC_LUA
    "local function put(code,j) out[#out+1]=code out[#out+1]=j or '' end\n"
    "local function create(id,j,m,s,act,a,ty,ik,par)\n"
    " if ik~='' then local ex=redis.call('GET',p..'idem:'..ik)\n"
    "  if ex then local r=rec(ex) if r~='' then return put(1,r) end end end\n"
    " local k=p..'cmd:'..id\n"
    " if redis.call('HEXISTS',k,'j')==1 then return put(1,rec(id)) end\n"
    " redis.call('HSET',k,'s',s,'a',a,'m',m,'j',j)\n"
    " redis.call('ZADD',p..'cmds:all',0,m)\n"
    " redis.call('ZADD',p..'cmds:status:'..s,0,m)\n"
    " if act=='1' then redis.call('ZADD',p..'cmds:active',0,m) end\n"
    " if a~='' then redis.call('ZADD',p..'cmds:agent:'..a,0,m) end\n"
    " redis.call('ZADD',p..'cmds:type:'..ty,0,m)\n"
    " if ik~='' then redis.call('SET',p..'idem:'..ik,id) end\n"
    " if par~='' then redis.call('RPUSH',p..'kids:'..par,id)\n"
    "  redis.call('HSET',p..'cmd:'..par,'k','1') end\n"
    " put(0)\n"
    "end\n"
    "local function update(id,exp,s,fin,a,g,l,r,ob,pl)\n"
    " local k=p..'cmd:'..id\n"
    " local cur=redis.call('HMGET',k,'s','a','m')\n"
    " if not cur[1] then return put(-1) end\n"
    " if cur[1]~=exp then return put(-2,rec(id)) end\n"
    " local m=cur[3]\n"
    " if r~='' then redis.call('HSET',k,'s',s,'a',a,'g',g,'l',l,'r',r)\n"
    " else redis.call('HSET',k,'s',s,'a',a,'g',g,'l',l) end\n"
    " if cur[1]~=s then\n"
    "  redis.call('ZREM',p..'cmds:status:'..cur[1],m)\n"
    "  redis.call('ZADD',p..'cmds:status:'..s,0,m)\n"
    "  if fin=='1' then redis.call('ZREM',p..'cmds:active',m) end\n"
    " end\n"
    " if cur[2]~=a then\n"
    "  if cur[2]~='' then redis.call('ZREM',p..'cmds:agent:'..cur[2],m) end\n"
    "  if a~='' then redis.call('ZADD',p..'cmds:agent:'..a,0,m) end\n"
    " end\n"
    " if ob=='1' then redis.call('HSET',p..'outbox',id,pl)\n"
    "  redis.call('ZADD',p..'outbox:q','NX',now,id) end\n"
    " put(0)\n"
    "end\n"
    "while i<=n do local t=ARGV[i]\n"
    " if t=='c' then create(ARGV[i+1],ARGV[i+2],ARGV[i+3],ARGV[i+4],ARGV[i+5],ARGV[i+6],"
    "ARGV[i+7],ARGV[i+8],ARGV[i+9]) i=i+10\n"
    " elseif t=='u' then update(ARGV[i+1],ARGV[i+2],ARGV[i+3],ARGV[i+4],ARGV[i+5],ARGV[i+6],"
    "ARGV[i+7],ARGV[i+8],ARGV[i+9],ARGV[i+10]) i=i+11\n"
    " elseif t=='d' then redis.call('HDEL',p..'outbox',ARGV[i+1])\n"
    "  redis.call('ZREM',p..'outbox:q',ARGV[i+1]) put(0) i=i+2\n"
    " else return redis.error_reply('apply: bad record tag') end\n"
    "end\n"
    "return out\n";

static const char *const scripts[S_COUNT] = {
    [S_APPLY] = apply_script,
    [S_GET] = "local p=ARGV[1]\n" REC_LUA "return rec(ARGV[2])\n",
    [S_LIST] = "local p=ARGV[1]\n" REC_LUA
               "local ms=redis.call('ZRANGEBYLEX',p..ARGV[2],ARGV[3],'+','LIMIT',0,"
               "tonumber(ARGV[4]))\n"
               "local out={}\n"
               "for i,m in ipairs(ms) do local id=string.sub(m,15)\n"
               " out[#out+1]=m out[#out+1]=rec(id) end\n"
               "return out\n",
    [S_OB_ADD] = "redis.call('HSET',ARGV[1]..'outbox',ARGV[2],ARGV[3])\n"
                 "redis.call('ZADD',ARGV[1]..'outbox:q','NX',ARGV[4],ARGV[2]) return 0\n",
    [S_OB_LIST] = "local p=ARGV[1]\n"
                  "local ids=redis.call('ZRANGE',p..'outbox:q',0,tonumber(ARGV[2])-1)\n"
                  "local out={}\n"
                  "for i,id in ipairs(ids) do local v=redis.call('HGET',p..'outbox',id)\n"
                  " if v then out[#out+1]=id out[#out+1]=v\n"
                  " else redis.call('ZREM',p..'outbox:q',id) end end\n"
                  "return out\n",
    [S_AG_PUT] = "local k=ARGV[1]..'agent:'..ARGV[2]\n"
                 "redis.call('HSET',k,'i',ARGV[3],'d',ARGV[4],'e',ARGV[6])\n"
                 "redis.call('PEXPIRE',k,ARGV[5])\n"
                 "redis.call('ZADD',ARGV[1]..'agents',ARGV[6],ARGV[2]) return 0\n",
    [S_AG_DEL] = "local k=ARGV[1]..'agent:'..ARGV[2]\n"
                 "if ARGV[3]~='' then local i=redis.call('HGET',k,'i')\n"
                 " if i and i~=ARGV[3] then return 0 end end\n"
                 "redis.call('DEL',k) redis.call('ZREM',ARGV[1]..'agents',ARGV[2]) return 1\n",
    [S_AG_LIST] = "local p=ARGV[1]\n"
                  "redis.call('ZREMRANGEBYSCORE',p..'agents','-inf',ARGV[2])\n"
                  "local ids=redis.call('ZRANGEBYSCORE',p..'agents','('..ARGV[2],'+inf','LIMIT',0,"
                  "tonumber(ARGV[3]))\n"
                  "local out={}\n"
                  "for i,id in ipairs(ids) do\n"
                  " local r=redis.call('HMGET',p..'agent:'..id,'i','d','e')\n"
                  " if r[1] then out[#out+1]=id out[#out+1]=r[1] out[#out+1]=r[2] "
                  "out[#out+1]=r[3] end end\n"
                  "return out\n",
};

#define MAX_ARGS 14
#define REC_MAX_ARGS 10 /* fields of a record after its tag */

typedef struct batch batch;

typedef struct vstore {
  store base;
  uv_loop_t *loop;
  sm_valkey *vk;
  char *prefix;
  char sha[S_COUNT][41];
  size_t batch_max;     /* records per apply call */
  uint64_t delay_ms;    /* 0: send before the loop blocks */
  size_t max_records;   /* records gathered or in flight (SM_ELIMIT beyond) */
  size_t records;       /* now gathered or in flight */
  batch *cur;           /* the batch being gathered; NULL: none */
  uv_prepare_t prepare; /* sends cur before the loop polls (active while cur is due) */
  uv_timer_t delay;     /* batch_delay_ms after cur's first record */
  batch *failed;        /* batches that could not be sent, reported from the report timer */
  uv_timer_t report;    /* 0 ms: runs their callbacks on the next turn */
  int closes_left;      /* handles and the adapter still closing */
  void (*closed)(void *ud);
  void *closed_ud;
} vstore;

enum op_kind { O_CMD, O_LIST, O_DONE, O_OUTBOX, O_AGENTS, O_VALUE };

typedef struct vop {
  vstore *s;
  enum op_kind kind;
  union {
    store_cmd_cb cmd;
    store_list_cb list;
    store_done_cb done;
    store_outbox_cb outbox;
    store_agents_cb agents;
    store_value_cb value;
  } cb;
  void *ud;
  enum script_id script;
  int retried;
  int argc;
  char *argv[MAX_ARGS]; /* owned copies, kept for the NOSCRIPT resend */
  size_t lens[MAX_ARGS];
  store_filter filter; /* O_LIST: the filter applied to the page */
  char *f_agent, *f_type;
  size_t limit;
} vop;

static void op_free(vop *o) {
  for (int i = 0; i < o->argc; i++)
    free(o->argv[i]);
  free(o->f_agent);
  free(o->f_type);
  free(o);
}

static vop *op_new(vstore *s, enum op_kind kind, enum script_id script, void *ud) {
  vop *o = sm_calloc(1, sizeof(*o));
  if (o == NULL)
    return NULL;
  o->s = s;
  o->kind = kind;
  o->script = script;
  o->ud = ud;
  return o;
}

static int op_arg(vop *o, const char *a, size_t len) {
  if (o->argc >= MAX_ARGS)
    return SM_EINVAL;
  char *c = sm_malloc(len + 1);
  if (c == NULL)
    return SM_ENOMEM;
  memcpy(c, a, len);
  c[len] = '\0';
  o->argv[o->argc] = c;
  o->lens[o->argc++] = len;
  return 0;
}

static int op_str(vop *o, const char *a) {
  return op_arg(o, a ? a : "", a ? strlen(a) : 0);
}

static int op_int(vop *o, int64_t v) {
  char buf[32];
  int n = snprintf(buf, sizeof(buf), "%" PRId64, v);
  return op_arg(o, buf, (size_t)n);
}

/* EVALSHA <sha> 0 <prefix> ... : the script's head; the caller appends its arguments. */
static int op_script_head(vop *o) {
  int err = op_str(o, "EVALSHA") | op_str(o, o->s->sha[o->script]) | op_str(o, "0") |
            op_str(o, o->s->prefix);
  return err ? SM_ENOMEM : 0;
}

static void on_op_reply(void *ud, int err, const sm_valkey_reply *r);
static void batch_flush_now(vstore *s);

static int op_send(vop *o) {
  return sm_valkey_command(o->s->vk, o->argc, (const char *const *)o->argv, o->lens, on_op_reply,
                           o);
}

/* Sends o, or frees it and returns the error. The gathered batch goes first, so that the
 * server sees the operations in the order they were asked for. */
static int op_start(vop *o, int err) {
  if (!err) {
    batch_flush_now(o->s);
    err = op_send(o);
  }
  if (err)
    op_free(o);
  return err;
}

/* Reads a record as REC_LUA reports it ('' or nil: none) into a new command: the creation
 * JSON with the lifecycle fields the updates wrote laid over it. Returns 0, SM_ENOENT, SM_EPARSE,
 * SM_EPROTO or SM_ENOMEM. */
static int reply_cmd(const sm_valkey_reply *r, sm_command **out) {
  *out = NULL;
  if (r == NULL || sm_valkey_reply_type(r) != SM_VK_ARRAY)
    return r == NULL || sm_valkey_reply_type(r) != SM_VK_ERROR ? SM_ENOENT : SM_EPROTO;
  if (sm_valkey_reply_count(r) != 6)
    return SM_EPROTO;
  size_t jl = 0, sl = 0, gl = 0, ll = 0, rl = 0;
  const char *j = sm_valkey_reply_str(sm_valkey_reply_elem(r, 0), &jl);
  const char *st = sm_valkey_reply_str(sm_valkey_reply_elem(r, 1), &sl);
  const char *g = sm_valkey_reply_str(sm_valkey_reply_elem(r, 2), &gl);
  const char *l = sm_valkey_reply_str(sm_valkey_reply_elem(r, 3), &ll);
  const char *res = sm_valkey_reply_str(sm_valkey_reply_elem(r, 4), &rl);
  const sm_valkey_reply *kids = sm_valkey_reply_elem(r, 5);
  if (j == NULL || st == NULL || g == NULL || l == NULL || res == NULL || kids == NULL)
    return SM_EPROTO;
  sm_command *c = NULL;
  int err = command_deserialize(j, jl, &c);
  if (err)
    return err;
  if (sl > 0 && command_status_parse(st, &c->status) != 0)
    err = SM_EPARSE;
  if (!err && ll > 0) { /* written by an update (records older than the field form lack it) */
    long long attempts, td, ts, tc, planned;
    if (sscanf(l, "%lld,%lld,%lld,%lld,%lld", &attempts, &td, &ts, &tc, &planned) != 5 ||
        attempts < 0 || attempts > INT32_MAX || planned < 0)
      err = SM_EPARSE;
    else {
      c->attempts = (int)attempts;
      c->dispatched_at = td;
      c->started_at = ts;
      c->completed_at = tc;
      c->nchildren_planned = (size_t)planned;
      err = command_set_str(&c->agent_id, gl > 0 ? g : NULL);
    }
  }
  if (!err && rl > 0)
    err = command_result_deserialize(res, rl, &c->result);
  size_t nk = sm_valkey_reply_count(kids);
  if (!err && nk > 0) { /* the children's ids, as their creations appended them */
    for (size_t i = 0; i < c->nchildren; i++)
      free(c->children[i]);
    free(c->children);
    c->children = NULL;
    c->nchildren = 0;
    for (size_t i = 0; !err && i < nk; i++) {
      const char *id = sm_valkey_reply_str(sm_valkey_reply_elem(kids, i), NULL);
      err = id ? command_add_child(c, id) : SM_EPROTO;
    }
  }
  if (err) {
    command_free(c);
    return err;
  }
  *out = c;
  return 0;
}

static void finish_list(vop *o, int err, const sm_valkey_reply *r) {
  size_t n = r && !err ? sm_valkey_reply_count(r) / 2 : 0;
  sm_command **cmds = sm_calloc(n ? n : 1, sizeof(*cmds));
  size_t got = 0;
  char cursor[STORE_MAX_CURSOR + 1];
  int more = 0;
  if (cmds == NULL && !err)
    err = SM_ENOMEM;
  for (size_t i = 0; !err && i < n; i++) {
    size_t mlen = 0;
    const char *m = sm_valkey_reply_str(sm_valkey_reply_elem(r, 2 * i), &mlen);
    if (m && i == n - 1 && mlen <= STORE_MAX_CURSOR) {
      memcpy(cursor, m, mlen);
      cursor[mlen] = '\0';
      more = n == o->limit;
    }
    sm_command *c = NULL;
    int e = reply_cmd(sm_valkey_reply_elem(r, 2 * i + 1), &c);
    if (e == SM_ENOMEM)
      err = e;
    if (c != NULL && store_filter_match(&o->filter, c))
      cmds[got++] = c;
    else
      command_free(c); /* vanished or filtered out */
  }
  o->cb.list(o->ud, err, err ? NULL : cmds, err ? 0 : got, !err && more ? cursor : NULL);
  for (size_t i = 0; i < got; i++)
    command_free(cmds[i]);
  free(cmds);
}

static void finish_outbox(vop *o, int err, const sm_valkey_reply *r) {
  size_t n = r && !err ? sm_valkey_reply_count(r) / 2 : 0;
  store_outbox_item *items = sm_calloc(n ? n : 1, sizeof(*items));
  if (items == NULL && !err)
    err = SM_ENOMEM;
  for (size_t i = 0; !err && i < n; i++) {
    items[i].id = sm_valkey_reply_str(sm_valkey_reply_elem(r, 2 * i), NULL);
    items[i].payload = sm_valkey_reply_str(sm_valkey_reply_elem(r, 2 * i + 1), &items[i].len);
    if (items[i].id == NULL || items[i].payload == NULL)
      err = SM_EPROTO;
  }
  o->cb.outbox(o->ud, err, err ? NULL : items, err ? 0 : n);
  free(items);
}

static void finish_agents(vop *o, int err, const sm_valkey_reply *r) {
  size_t n = r && !err ? sm_valkey_reply_count(r) / 4 : 0;
  store_agent_rec *recs = sm_calloc(n ? n : 1, sizeof(*recs));
  if (recs == NULL && !err)
    err = SM_ENOMEM;
  for (size_t i = 0; !err && i < n; i++) {
    recs[i].id = sm_valkey_reply_str(sm_valkey_reply_elem(r, 4 * i), NULL);
    recs[i].instance = sm_valkey_reply_str(sm_valkey_reply_elem(r, 4 * i + 1), NULL);
    recs[i].data = sm_valkey_reply_str(sm_valkey_reply_elem(r, 4 * i + 2), NULL);
    const char *e = sm_valkey_reply_str(sm_valkey_reply_elem(r, 4 * i + 3), NULL);
    recs[i].expires_at = e ? strtoll(e, NULL, 10) : 0;
    if (!recs[i].id || !recs[i].instance || !recs[i].data)
      err = SM_EPROTO;
  }
  o->cb.agents(o->ud, err, err ? NULL : recs, err ? 0 : n);
  free(recs);
}

/* cmd_get: a plain HGET of the record. */
static void finish_cmd(vop *o, int err, const sm_valkey_reply *r) {
  sm_command *c = NULL;
  if (!err && r != NULL)
    err = reply_cmd(r, &c);
  o->cb.cmd(o->ud, err, c, 0);
  command_free(c);
}

static void on_op_reply(void *ud, int err, const sm_valkey_reply *r) {
  vop *o = ud;
  if (err == SM_ENOENT && r != NULL && o->script != S_COUNT && !o->retried) {
    /* NOSCRIPT: the server lost its script cache; send the text once */
    o->retried = 1;
    free(o->argv[0]);
    free(o->argv[1]);
    o->argv[0] = sm_strdup("EVAL");
    o->argv[1] = sm_strdup(scripts[o->script]);
    if (o->argv[0] && o->argv[1]) {
      o->lens[0] = 4;
      o->lens[1] = strlen(scripts[o->script]);
      err = op_send(o);
      if (!err)
        return;
    } else {
      err = SM_ENOMEM;
    }
    r = NULL;
  }
  if (err)
    r = NULL;
  switch (o->kind) {
  case O_CMD:
    finish_cmd(o, err, r);
    break;
  case O_LIST:
    finish_list(o, err, r);
    break;
  case O_DONE:
    o->cb.done(o->ud, err);
    break;
  case O_OUTBOX:
    finish_outbox(o, err, r);
    break;
  case O_AGENTS:
    finish_agents(o, err, r);
    break;
  case O_VALUE: {
    size_t len = 0;
    const char *v = r ? sm_valkey_reply_str(r, &len) : NULL;
    if (!err && v == NULL)
      err = SM_ENOENT; /* nil: absent or expired */
    o->cb.value(o->ud, err, err ? NULL : v, err ? 0 : len);
    break;
  }
  }
  op_free(o);
}

/* ---- group commit ------------------------------------------------------------------------- */

enum rec_kind { R_CREATE, R_UPDATE, R_OB_DEL };

/* One gathered write: its callback and its fields (one allocation, the fields in data[]). */
typedef struct brec {
  enum rec_kind kind;
  union {
    store_cmd_cb cmd;
    store_done_cb done;
  } cb;
  void *ud;
  int argc;
  const char *argv[REC_MAX_ARGS];
  size_t lens[REC_MAX_ARGS];
  char data[];
} brec;

/* A batch: gathered in vstore.cur, then owned by its apply request until the reply. */
struct batch {
  vstore *s;
  size_t n;
  brec **recs;       /* batch_max slots */
  const char **argv; /* the apply call, built when sent (kept for the NOSCRIPT resend) */
  size_t *lens;
  int argc;
  int retried;
  int err;     /* on vstore.failed: the error every record gets */
  batch *next; /* on vstore.failed */
  char now[24];
};

static const char *const rec_tags[] = {[R_CREATE] = "c", [R_UPDATE] = "u", [R_OB_DEL] = "d"};

/* A record with copies of fields f[0..n) (NULL: ""). */
static brec *rec_new(enum rec_kind kind, void *ud, int n, const char *const *f,
                     const size_t *flen) {
  assert(n <= REC_MAX_ARGS);
  size_t total = 0;
  for (int i = 0; i < n; i++)
    total += flen[i] + 1;
  brec *r = sm_malloc(sizeof(*r) + total);
  if (r == NULL)
    return NULL;
  r->kind = kind;
  r->ud = ud;
  r->argc = n;
  char *p = r->data;
  for (int i = 0; i < n; i++) {
    if (flen[i])
      memcpy(p, f[i], flen[i]);
    p[flen[i]] = '\0';
    r->argv[i] = p;
    r->lens[i] = flen[i];
    p += flen[i] + 1;
  }
  return r;
}

static void batch_free(batch *b) {
  if (b == NULL)
    return;
  for (size_t i = 0; i < b->n; i++)
    free(b->recs[i]);
  free(b->recs);
  free(b->argv);
  free(b->lens);
  free(b);
}

/* Runs record i's callback with its result (err, or the code and stored record of the reply). */
static void rec_finish(vstore *s, brec *r, int err, const sm_valkey_reply *code,
                       const sm_valkey_reply *stored) {
  assert(s->records > 0);
  s->records--;
  if (r->kind == R_OB_DEL) {
    r->cb.done(r->ud, err);
    return;
  }
  sm_command *c = NULL;
  int existed = 0;
  if (!err) {
    long long v =
        code && sm_valkey_reply_type(code) == SM_VK_INTEGER ? sm_valkey_reply_int(code) : -100;
    if (v == 0) /* written: the caller holds the record it sent */
      err = 0;
    else if (v == 1 && r->kind == R_CREATE)
      existed = 1, err = reply_cmd(stored, &c);
    else if (v == -1 && r->kind == R_UPDATE)
      err = SM_ENOENT;
    else if (v == -2 && r->kind == R_UPDATE) {
      int e = reply_cmd(stored, &c);
      err = e == SM_ENOMEM ? e : SM_ESTATE;
    } else
      err = SM_EPROTO;
    if (err && err != SM_ESTATE) {
      command_free(c);
      c = NULL;
      existed = 0;
    }
  }
  r->cb.cmd(r->ud, err, c, existed);
  command_free(c);
}

/* Every record of b gets err (or its own result from r); then b is freed. The store may be
 * closed by a callback meanwhile: the remaining records still get their results. */
static void batch_finish(batch *b, int err, const sm_valkey_reply *r) {
  if (!err && (sm_valkey_reply_type(r) != SM_VK_ARRAY || sm_valkey_reply_count(r) != 2 * b->n))
    err = SM_EPROTO;
  for (size_t i = 0; i < b->n; i++)
    rec_finish(b->s, b->recs[i], err, err ? NULL : sm_valkey_reply_elem(r, 2 * i),
               err ? NULL : sm_valkey_reply_elem(r, 2 * i + 1));
  batch_free(b);
}

static void on_batch_reply(void *ud, int err, const sm_valkey_reply *r) {
  batch *b = ud;
  if (err == SM_ENOENT && r != NULL && !b->retried) {
    /* NOSCRIPT: the script did not run; send its text once */
    b->retried = 1;
    b->argv[0] = "EVAL";
    b->lens[0] = 4;
    b->argv[1] = scripts[S_APPLY];
    b->lens[1] = strlen(scripts[S_APPLY]);
    err = sm_valkey_command(b->s->vk, b->argc, b->argv, b->lens, on_batch_reply, b);
    if (!err)
      return;
  }
  batch_finish(b, err, err ? NULL : r);
}

/* Builds b's apply call and sends it. On error b is unchanged (still gathered). */
static int batch_send(batch *b) {
  vstore *s = b->s;
  size_t argc = 5;
  for (size_t i = 0; i < b->n; i++)
    argc += 1 + (size_t)b->recs[i]->argc;
  if (argc > INT32_MAX)
    return SM_ETOOBIG;
  const char **argv = sm_malloc(argc * sizeof(*argv));
  size_t *lens = sm_malloc(argc * sizeof(*lens));
  if (argv == NULL || lens == NULL) {
    free(argv);
    free(lens);
    return SM_ENOMEM;
  }
  int nl = snprintf(b->now, sizeof(b->now), "%" PRId64, command_now_ms());
  size_t k = 0;
  argv[k] = "EVALSHA", lens[k++] = 7;
  argv[k] = s->sha[S_APPLY], lens[k++] = 40;
  argv[k] = "0", lens[k++] = 1;
  argv[k] = s->prefix, lens[k++] = strlen(s->prefix);
  argv[k] = b->now, lens[k++] = (size_t)nl;
  for (size_t i = 0; i < b->n; i++) {
    const brec *r = b->recs[i];
    argv[k] = rec_tags[r->kind], lens[k++] = 1;
    for (int j = 0; j < r->argc; j++)
      argv[k] = r->argv[j], lens[k++] = r->lens[j];
  }
  assert(k == argc);
  free(b->argv);
  free(b->lens);
  b->argv = argv;
  b->lens = lens;
  b->argc = (int)argc;
  return sm_valkey_command(s->vk, b->argc, b->argv, b->lens, on_batch_reply, b);
}

static void batch_disarm(vstore *s) {
  uv_prepare_stop(&s->prepare);
  uv_timer_stop(&s->delay);
}

/* Sends the gathered batch. Returns 0 (sent, or nothing to send) or the error (the batch stays
 * gathered). */
static int batch_flush(vstore *s) {
  batch *b = s->cur;
  if (b == NULL)
    return 0;
  int err = batch_send(b);
  if (err)
    return err;
  s->cur = NULL;
  batch_disarm(s);
  return 0;
}

static void on_prepare(uv_prepare_t *h);

static void batch_due(vstore *s) {
  uv_prepare_start(&s->prepare, on_prepare);
}

/* Sends the gathered batch now if it can; a failure is left to the prepare handle, which
 * reports it on the next turn (never inside the caller's call). */
static void batch_flush_now(vstore *s) {
  if (s->cur != NULL && batch_flush(s) != 0)
    batch_due(s);
}

/* Reports the batches that could not be sent. */
static void on_report(uv_timer_t *t) {
  vstore *s = t->data;
  batch *b;
  while ((b = s->failed) != NULL) {
    s->failed = b->next;
    batch_finish(b, b->err, NULL);
  }
}

/* Just before the loop polls: send what this turn gathered. SM_ELIMIT (the adapter has its
 * bound of requests in flight) waits for a later turn (their replies wake the loop); any other
 * failure fails every record of the batch. The callbacks run from a 0 ms timer, not here: work
 * they start from inside the prepare phase would not keep the coming poll from blocking. */
static void on_prepare(uv_prepare_t *h) {
  vstore *s = h->data;
  int err = batch_flush(s);
  if (err == 0 || err == SM_ELIMIT)
    return;
  batch *b = s->cur;
  s->cur = NULL;
  batch_disarm(s);
  b->err = err;
  b->next = s->failed;
  s->failed = b;
  uv_timer_start(&s->report, on_report, 0, 0);
}

static void on_delay(uv_timer_t *t) {
  batch_due(t->data);
}

/* Takes r into the gathered batch (r is freed on error; no callback then). */
static int gather(vstore *s, brec *r) {
  int err = 0;
  if (s->cur != NULL && s->cur->n >= s->batch_max)
    err = batch_flush(s); /* full, and an earlier send failed */
  if (!err && s->cur == NULL) {
    batch *b = sm_calloc(1, sizeof(*b));
    brec **recs = b ? sm_malloc(s->batch_max * sizeof(*recs)) : NULL;
    if (recs == NULL) {
      free(b);
      err = SM_ENOMEM;
    } else {
      b->s = s;
      b->recs = recs;
      s->cur = b;
    }
  }
  if (err) {
    free(r);
    return err;
  }
  batch *b = s->cur;
  b->recs[b->n++] = r;
  s->records++;
  if (b->n == 1) {
    if (s->delay_ms == 0)
      batch_due(s);
    else
      uv_timer_start(&s->delay, on_delay, s->delay_ms, 0);
  }
  if (b->n >= s->batch_max && batch_flush(s) != 0)
    batch_due(s); /* the failure is reported from the prepare handle */
  return 0;
}

/* The checks every gathered write makes before it allocates. */
static int gather_check(vstore *s) {
  if (!sm_valkey_is_up(s->vk))
    return SM_EUNAVAIL;
  if (s->records >= s->max_records)
    return SM_ELIMIT;
  return 0;
}

/* ---- operations --------------------------------------------------------------------------- */

static int v_cmd_create(store *st, const sm_command *c, store_cmd_cb cb, void *ud) {
  vstore *s = (vstore *)st;
  char member[STORE_MAX_CURSOR + 1];
  int err = store_sort_key(c, member, sizeof(member));
  if (err || (err = gather_check(s)) != 0)
    return err;
  size_t len;
  char *json = command_serialize(c, &len);
  if (json == NULL)
    return SM_ENOMEM;
  const char *status = command_status_name(c->status);
  const char *active = command_status_is_final(c->status) ? "" : "1";
  const char *ag = command_agent(c) ? command_agent(c) : "";
  const char *idem = c->idempotency_key ? c->idempotency_key : "";
  const char *par = c->parent_id ? c->parent_id : "";
  const char *f[9] = {c->id, json, member, status, active, ag, c->type, idem, par};
  size_t fl[9];
  for (int i = 0; i < 9; i++)
    fl[i] = i == 1 ? len : strlen(f[i]);
  brec *r = rec_new(R_CREATE, ud, 9, f, fl);
  free(json);
  if (r == NULL)
    return SM_ENOMEM;
  r->cb.cmd = cb;
  return gather(s, r);
}

static int v_cmd_get(store *st, const char *id, store_cmd_cb cb, void *ud) {
  vop *o = op_new((vstore *)st, O_CMD, S_GET, ud);
  if (o == NULL)
    return SM_ENOMEM;
  o->cb.cmd = cb;
  int err = op_script_head(o) | op_str(o, id);
  return op_start(o, err ? SM_ENOMEM : 0);
}

static int v_cmd_update(store *st, const sm_command *c, command_status expected,
                        const char *outbox_payload, size_t outbox_len, store_cmd_cb cb, void *ud) {
  vstore *s = (vstore *)st;
  int err = gather_check(s);
  if (err)
    return err;
  char l[112];
  int ll = snprintf(l, sizeof(l), "%d,%" PRId64 ",%" PRId64 ",%" PRId64 ",%zu", c->attempts,
                    c->dispatched_at, c->started_at, c->completed_at,
                    c->nchildren > c->nchildren_planned ? c->nchildren : c->nchildren_planned);
  size_t rlen = 0;
  char *res = NULL;
  if (c->result.present && (res = command_result_serialize(&c->result, &rlen)) == NULL)
    return SM_ENOMEM;
  const char *ag = command_agent(c) ? command_agent(c) : "";
  const char *f[10] = {c->id,
                       command_status_name(expected),
                       command_status_name(c->status),
                       command_status_is_final(c->status) ? "1" : "",
                       ag,
                       c->agent_id ? c->agent_id : "",
                       l,
                       res ? res : "",
                       outbox_payload ? "1" : "",
                       outbox_payload ? outbox_payload : ""};
  size_t fl[10];
  for (int i = 0; i < 10; i++)
    fl[i] = strlen(f[i]);
  fl[6] = (size_t)ll;
  fl[7] = rlen;
  fl[9] = outbox_payload ? outbox_len : 0;
  brec *r = rec_new(R_UPDATE, ud, 10, f, fl);
  free(res);
  if (r == NULL)
    return SM_ENOMEM;
  r->cb.cmd = cb;
  return gather(s, r);
}

static int v_cmd_list(store *st, const store_filter *f, const char *cursor, size_t limit,
                      store_list_cb cb, void *ud) {
  vstore *s = (vstore *)st;
  vop *o = op_new(s, O_LIST, S_LIST, ud);
  if (o == NULL)
    return SM_ENOMEM;
  o->cb.list = cb;
  o->limit = limit;
  o->filter.status_mask = f->status_mask & COMMAND_MASK_ALL;
  if ((f->agent_id && (o->f_agent = sm_strdup(f->agent_id)) == NULL) ||
      (f->type && (o->f_type = sm_strdup(f->type)) == NULL)) {
    op_free(o);
    return SM_ENOMEM;
  }
  o->filter.agent_id = o->f_agent;
  o->filter.type = o->f_type;
  /* the most selective index: one status, the active set, the agent, the type, or all */
  char index[COMMAND_MAX_ID + 32];
  unsigned mask = o->filter.status_mask;
  if (mask && (mask & (mask - 1)) == 0) {
    int st_i = __builtin_ctz(mask);
    snprintf(index, sizeof(index), "cmds:status:%s", command_status_name((command_status)st_i));
  } else if (mask == COMMAND_MASK_ACTIVE) {
    snprintf(index, sizeof(index), "cmds:active");
  } else if (f->agent_id && strlen(f->agent_id) <= COMMAND_MAX_ID) {
    snprintf(index, sizeof(index), "cmds:agent:%s", f->agent_id);
  } else if (f->type && strlen(f->type) <= COMMAND_MAX_ID) {
    snprintf(index, sizeof(index), "cmds:type:%s", f->type);
  } else {
    snprintf(index, sizeof(index), "cmds:all");
  }
  char start[STORE_MAX_CURSOR + 2];
  snprintf(start, sizeof(start), "%s%s", cursor ? "(" : "-", cursor ? cursor : "");
  int err = op_script_head(o) | op_str(o, index) | op_str(o, start) | op_int(o, (int64_t)limit);
  return op_start(o, err ? SM_ENOMEM : 0);
}

static int v_outbox_add(store *st, const char *id, const char *payload, size_t len,
                        store_done_cb cb, void *ud) {
  vop *o = op_new((vstore *)st, O_DONE, S_OB_ADD, ud);
  if (o == NULL)
    return SM_ENOMEM;
  o->cb.done = cb;
  int err =
      op_script_head(o) | op_str(o, id) | op_arg(o, payload, len) | op_int(o, command_now_ms());
  return op_start(o, err ? SM_ENOMEM : 0);
}

static int v_outbox_list(store *st, size_t limit, store_outbox_cb cb, void *ud) {
  vop *o = op_new((vstore *)st, O_OUTBOX, S_OB_LIST, ud);
  if (o == NULL)
    return SM_ENOMEM;
  o->cb.outbox = cb;
  int err = op_script_head(o) | op_int(o, (int64_t)limit);
  return op_start(o, err ? SM_ENOMEM : 0);
}

static int v_outbox_remove(store *st, const char *id, store_done_cb cb, void *ud) {
  vstore *s = (vstore *)st;
  int err = gather_check(s);
  if (err)
    return err;
  size_t len = strlen(id);
  brec *r = rec_new(R_OB_DEL, ud, 1, &id, &len);
  if (r == NULL)
    return SM_ENOMEM;
  r->cb.done = cb;
  return gather(s, r);
}

static int v_agent_put(store *st, const char *id, const char *instance, const char *data,
                       int64_t ttl_ms, store_done_cb cb, void *ud) {
  vop *o = op_new((vstore *)st, O_DONE, S_AG_PUT, ud);
  if (o == NULL)
    return SM_ENOMEM;
  o->cb.done = cb;
  int err = op_script_head(o) | op_str(o, id) | op_str(o, instance) | op_str(o, data) |
            op_int(o, ttl_ms) | op_int(o, command_now_ms() + ttl_ms);
  return op_start(o, err ? SM_ENOMEM : 0);
}

static int v_agent_del(store *st, const char *id, const char *instance, store_done_cb cb,
                       void *ud) {
  vop *o = op_new((vstore *)st, O_DONE, S_AG_DEL, ud);
  if (o == NULL)
    return SM_ENOMEM;
  o->cb.done = cb;
  int err = op_script_head(o) | op_str(o, id) | op_str(o, instance);
  return op_start(o, err ? SM_ENOMEM : 0);
}

static int v_agent_list(store *st, size_t limit, store_agents_cb cb, void *ud) {
  vop *o = op_new((vstore *)st, O_AGENTS, S_AG_LIST, ud);
  if (o == NULL)
    return SM_ENOMEM;
  o->cb.agents = cb;
  int err = op_script_head(o) | op_int(o, command_now_ms()) | op_int(o, (int64_t)limit);
  return op_start(o, err ? SM_ENOMEM : 0);
}

/* Plain keys: no script, no prefix (S_COUNT: nothing to resend on NOSCRIPT). */
static int v_kv_put(store *st, const char *key, const char *value, size_t len, int64_t ttl_ms,
                    store_done_cb cb, void *ud) {
  vop *o = op_new((vstore *)st, O_DONE, S_COUNT, ud);
  if (o == NULL)
    return SM_ENOMEM;
  o->cb.done = cb;
  int err = op_str(o, "SET") | op_str(o, key) | op_arg(o, value, len) | op_str(o, "PX") |
            op_int(o, ttl_ms);
  return op_start(o, err ? SM_ENOMEM : 0);
}

static int v_kv_get(store *st, const char *key, store_value_cb cb, void *ud) {
  vop *o = op_new((vstore *)st, O_VALUE, S_COUNT, ud);
  if (o == NULL)
    return SM_ENOMEM;
  o->cb.value = cb;
  int err = op_str(o, "GET") | op_str(o, key);
  return op_start(o, err ? SM_ENOMEM : 0);
}

static int v_is_up(const store *st) {
  return sm_valkey_is_up(((const vstore *)st)->vk);
}

static void v_part_closed(vstore *s) {
  if (--s->closes_left > 0)
    return;
  void (*closed)(void *) = s->closed;
  void *cud = s->closed_ud;
  free(s->prefix);
  free(s);
  if (closed)
    closed(cud);
}

static void v_closed(void *ud) {
  v_part_closed(ud);
}

static void v_handle_closed(uv_handle_t *h) {
  v_part_closed(h->data);
}

static void v_close(store *st, void (*closed)(void *ud), void *ud) {
  vstore *s = (vstore *)st;
  s->closed = closed;
  s->closed_ud = ud;
  s->closes_left = 4;
  /* a gathered batch was never sent: nothing of it was written */
  batch *b = s->cur;
  s->cur = NULL;
  batch_disarm(s);
  if (b != NULL)
    batch_finish(b, SM_ECANCELED, NULL);
  on_report(&s->report);
  uv_close((uv_handle_t *)&s->report, v_handle_closed);
  uv_close((uv_handle_t *)&s->prepare, v_handle_closed);
  uv_close((uv_handle_t *)&s->delay, v_handle_closed);
  sm_valkey_close(s->vk, v_closed, s);
}

static void v_state(void *ud, int up) {
  vstore *s = ud;
  if (s->base.on_state)
    s->base.on_state(s->base.state_ud, up);
}

static const store_ops valkey_ops = {
    .name = "valkey",
    .cmd_create = v_cmd_create,
    .cmd_get = v_cmd_get,
    .cmd_update = v_cmd_update,
    .cmd_list = v_cmd_list,
    .outbox_add = v_outbox_add,
    .outbox_list = v_outbox_list,
    .outbox_remove = v_outbox_remove,
    .agent_put = v_agent_put,
    .agent_del = v_agent_del,
    .agent_list = v_agent_list,
    .kv_put = v_kv_put,
    .kv_get = v_kv_get,
    .is_up = v_is_up,
    .close = v_close,
};

int store_valkey_create(uv_loop_t *loop, const store_valkey_config *cfg, store **out) {
  if (cfg == NULL || cfg->host == NULL)
    return SM_EINVAL;
  vstore *s = sm_calloc(1, sizeof(*s));
  if (s == NULL)
    return SM_ENOMEM;
  s->base.ops = &valkey_ops;
  s->loop = loop;
  s->batch_max = cfg->batch_max ? cfg->batch_max : 256;
  s->delay_ms = cfg->batch_delay_ms;
  s->max_records = cfg->max_pending ? cfg->max_pending : 10000;
  s->prefix = sm_strdup(cfg->prefix ? cfg->prefix : "sm:");
  if (s->prefix == NULL) {
    free(s);
    return SM_ENOMEM;
  }
  for (int i = 0; i < S_COUNT; i++) {
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)scripts[i], strlen(scripts[i]), md);
    sm_hex_encode(md, SHA_DIGEST_LENGTH, s->sha[i]);
  }
  sm_valkey_config vc = {
      .host = cfg->host,
      .port = cfg->port,
      .password = cfg->password,
      .db = cfg->db,
      .connect_timeout_s = cfg->connect_timeout_s,
      .request_timeout_s = cfg->request_timeout_s,
      .max_pending = cfg->max_pending,
      .backoff_min_s = 0,
      .backoff_max_s = 0,
  };
  int err = sm_valkey_create(loop, &vc, v_state, s, &s->vk);
  if (err) {
    free(s->prefix);
    free(s);
    return err;
  }
  uv_prepare_init(loop, &s->prepare);
  uv_timer_init(loop, &s->delay);
  uv_timer_init(loop, &s->report);
  s->report.data = s;
  s->prepare.data = s;
  s->delay.data = s;
  *out = &s->base;
  return 0;
}
