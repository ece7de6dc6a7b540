/* store_valkey.c - the store on Valkey/Redis (key layout: docs/store.md).
 *
 * Each operation that touches more than one key is one Lua script, so it is atomic on the
 * server (idempotent create, compare-and-set update with its index moves and outbox entry).
 * Scripts run with EVALSHA; a NOSCRIPT answer (a restarted server forgot them) resends the
 * same request once with EVAL and the script text.
 */
#include "store/store.h"
#include "store/valkey.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/hex.h"

#include <inttypes.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum script_id {
  S_CREATE,
  S_UPDATE,
  S_LIST,
  S_OB_ADD,
  S_OB_LIST,
  S_OB_DEL,
  S_AG_PUT,
  S_AG_DEL,
  S_AG_LIST,
  S_COUNT
};

static const char *const scripts[S_COUNT] = {
    [S_CREATE] = "local p=ARGV[1]\n"
                 "if ARGV[9]~='' then local ex=redis.call('GET',p..'idem:'..ARGV[9])\n"
                 " if ex then local j=redis.call('HGET',p..'cmd:'..ex,'j') if j then return {1,j} "
                 "end end end\n"
                 "local k=p..'cmd:'..ARGV[2]\n"
                 "local j=redis.call('HGET',k,'j') if j then return {1,j} end\n"
                 "redis.call('HSET',k,'s',ARGV[5],'a',ARGV[7],'m',ARGV[4],'j',ARGV[3])\n"
                 "redis.call('ZADD',p..'cmds:all',0,ARGV[4])\n"
                 "redis.call('ZADD',p..'cmds:status:'..ARGV[5],0,ARGV[4])\n"
                 "if ARGV[6]=='1' then redis.call('ZADD',p..'cmds:active',0,ARGV[4]) end\n"
                 "if ARGV[7]~='' then redis.call('ZADD',p..'cmds:agent:'..ARGV[7],0,ARGV[4]) end\n"
                 "redis.call('ZADD',p..'cmds:type:'..ARGV[8],0,ARGV[4])\n"
                 "if ARGV[9]~='' then redis.call('SET',p..'idem:'..ARGV[9],ARGV[2]) end\n"
                 "return {0,ARGV[3]}\n",
    [S_UPDATE] = "local p=ARGV[1] local k=p..'cmd:'..ARGV[2]\n"
                 "local cur=redis.call('HMGET',k,'s','a','m','j')\n"
                 "if not cur[1] then return {-1} end\n"
                 "if cur[1]~=ARGV[4] then return {-2,cur[4]} end\n"
                 "local m=cur[3]\n"
                 "redis.call('HSET',k,'s',ARGV[5],'a',ARGV[7],'j',ARGV[3])\n"
                 "if cur[1]~=ARGV[5] then\n"
                 " redis.call('ZREM',p..'cmds:status:'..cur[1],m)\n"
                 " redis.call('ZADD',p..'cmds:status:'..ARGV[5],0,m)\n"
                 " if ARGV[6]=='1' then redis.call('ZREM',p..'cmds:active',m) end\n"
                 "end\n"
                 "if cur[2]~=ARGV[7] then\n"
                 " if cur[2]~='' then redis.call('ZREM',p..'cmds:agent:'..cur[2],m) end\n"
                 " if ARGV[7]~='' then redis.call('ZADD',p..'cmds:agent:'..ARGV[7],0,m) end\n"
                 "end\n"
                 "if ARGV[8]=='1' then redis.call('HSET',p..'outbox',ARGV[2],ARGV[9])\n"
                 " redis.call('ZADD',p..'outbox:q','NX',ARGV[10],ARGV[2]) end\n"
                 "return {0,ARGV[3]}\n",
    [S_LIST] = "local p=ARGV[1]\n"
               "local ms=redis.call('ZRANGEBYLEX',p..ARGV[2],ARGV[3],'+','LIMIT',0,"
               "tonumber(ARGV[4]))\n"
               "local out={}\n"
               "for i,m in ipairs(ms) do local id=string.sub(m,15)\n"
               " local j=redis.call('HGET',p..'cmd:'..id,'j')\n"
               " out[#out+1]=m out[#out+1]=j or '' end\n"
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
    [S_OB_DEL] = "redis.call('HDEL',ARGV[1]..'outbox',ARGV[2])\n"
                 "redis.call('ZREM',ARGV[1]..'outbox:q',ARGV[2]) return 0\n",
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

typedef struct vstore {
  store base;
  sm_valkey *vk;
  char *prefix;
  char sha[S_COUNT][41];
  void (*closed)(void *ud);
  void *closed_ud;
} vstore;

enum op_kind { O_CMD, O_LIST, O_DONE, O_OUTBOX, O_AGENTS };

typedef struct vop {
  vstore *s;
  enum op_kind kind;
  union {
    store_cmd_cb cmd;
    store_list_cb list;
    store_done_cb done;
    store_outbox_cb outbox;
    store_agents_cb agents;
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

static int op_send(vop *o) {
  return sm_valkey_command(o->s->vk, o->argc, (const char *const *)o->argv, o->lens, on_op_reply,
                           o);
}

/* Sends o, or frees it and returns the error. */
static int op_start(vop *o, int err) {
  if (!err)
    err = op_send(o);
  if (err)
    op_free(o);
  return err;
}

/* Deserializes a bulk string reply into a command (NULL reply or empty: none). */
static int reply_cmd(const sm_valkey_reply *r, sm_command **out) {
  size_t len = 0;
  const char *t = r ? sm_valkey_reply_str(r, &len) : NULL;
  *out = NULL;
  if (t == NULL || len == 0)
    return SM_ENOENT;
  return command_deserialize(t, len, out);
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

static void finish_cmd(vop *o, int err, const sm_valkey_reply *r) {
  sm_command *c = NULL;
  int existed = 0;
  if (!err && r != NULL) {
    if (o->script == S_COUNT) { /* plain HGET */
      err = reply_cmd(r, &c);
    } else if (sm_valkey_reply_type(r) == SM_VK_ARRAY && sm_valkey_reply_count(r) >= 1) {
      long long code = sm_valkey_reply_int(sm_valkey_reply_elem(r, 0));
      if (code == -1)
        err = SM_ENOENT;
      else if (code == -2)
        err = SM_ESTATE;
      else if (o->script == S_CREATE)
        existed = code == 1;
      if (sm_valkey_reply_count(r) >= 2) {
        int e = reply_cmd(sm_valkey_reply_elem(r, 1), &c);
        if (e && !err)
          err = e;
      }
    } else {
      err = SM_EPROTO;
    }
  }
  o->cb.cmd(o->ud, err, c, existed);
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
  }
  op_free(o);
}

/* ---- operations --------------------------------------------------------------------------- */

static int v_cmd_create(store *st, const sm_command *c, store_cmd_cb cb, void *ud) {
  vstore *s = (vstore *)st;
  char member[STORE_MAX_CURSOR + 1];
  int err = store_sort_key(c, member, sizeof(member));
  if (err)
    return err;
  size_t len;
  char *json = command_serialize(c, &len);
  if (json == NULL)
    return SM_ENOMEM;
  vop *o = op_new(s, O_CMD, S_CREATE, ud);
  if (o == NULL) {
    free(json);
    return SM_ENOMEM;
  }
  o->cb.cmd = cb;
  err = op_script_head(o) | op_str(o, c->id) | op_arg(o, json, len) | op_str(o, member) |
        op_str(o, command_status_name(c->status)) |
        op_str(o, command_status_is_final(c->status) ? "" : "1") | op_str(o, command_agent(c)) |
        op_str(o, c->type) | op_str(o, c->idempotency_key);
  free(json);
  return op_start(o, err ? SM_ENOMEM : 0);
}

static int v_cmd_get(store *st, const char *id, store_cmd_cb cb, void *ud) {
  vstore *s = (vstore *)st;
  vop *o = op_new(s, O_CMD, S_COUNT, ud);
  if (o == NULL)
    return SM_ENOMEM;
  o->cb.cmd = cb;
  o->retried = 1;
  size_t plen = strlen(s->prefix), ilen = strlen(id);
  char *key = sm_malloc(plen + 4 + ilen + 1);
  int err = key ? 0 : SM_ENOMEM;
  if (key) {
    memcpy(key, s->prefix, plen);
    memcpy(key + plen, "cmd:", 4);
    memcpy(key + plen + 4, id, ilen + 1);
    err = op_str(o, "HGET") | op_str(o, key) | op_str(o, "j");
    free(key);
  }
  return op_start(o, err ? SM_ENOMEM : 0);
}

static int v_cmd_update(store *st, const sm_command *c, command_status expected,
                        const char *outbox_payload, size_t outbox_len, store_cmd_cb cb, void *ud) {
  vstore *s = (vstore *)st;
  size_t len;
  char *json = command_serialize(c, &len);
  if (json == NULL)
    return SM_ENOMEM;
  vop *o = op_new(s, O_CMD, S_UPDATE, ud);
  if (o == NULL) {
    free(json);
    return SM_ENOMEM;
  }
  o->cb.cmd = cb;
  int err = op_script_head(o) | op_str(o, c->id) | op_arg(o, json, len) |
            op_str(o, command_status_name(expected)) | op_str(o, command_status_name(c->status)) |
            op_str(o, command_status_is_final(c->status) ? "1" : "") | op_str(o, command_agent(c)) |
            op_str(o, outbox_payload ? "1" : "") |
            op_arg(o, outbox_payload ? outbox_payload : "", outbox_payload ? outbox_len : 0) |
            op_int(o, command_now_ms());
  free(json);
  return op_start(o, err ? SM_ENOMEM : 0);
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
  vop *o = op_new((vstore *)st, O_DONE, S_OB_DEL, ud);
  if (o == NULL)
    return SM_ENOMEM;
  o->cb.done = cb;
  int err = op_script_head(o) | op_str(o, id);
  return op_start(o, err ? SM_ENOMEM : 0);
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

static int v_is_up(const store *st) {
  return sm_valkey_is_up(((const vstore *)st)->vk);
}

static void v_closed(void *ud) {
  vstore *s = ud;
  void (*closed)(void *) = s->closed;
  void *cud = s->closed_ud;
  free(s->prefix);
  free(s);
  if (closed)
    closed(cud);
}

static void v_close(store *st, void (*closed)(void *ud), void *ud) {
  vstore *s = (vstore *)st;
  s->closed = closed;
  s->closed_ud = ud;
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
  *out = &s->base;
  return 0;
}
