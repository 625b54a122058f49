/* codec.c: Lua values to bytes and back (Lua module sluice.core.codec), the primitive under
 * lua/sluice/runtime/codec.lua (which documents what survives and why decoding is safe).
 *
 *   codec.encode(v) -> bytes        raises for what cannot travel (functions, cycles, ...)
 *   codec.decode(bytes) -> v | nil, message
 *
 * The format (little-endian, string.pack's sizes): a tag byte per value: 's' + u32 length +
 * bytes (string), 'i' + i64 (integer), 'd' + f64 (float), 'T' / 'F' (booleans), 'N' (nil: a
 * hole in an array), 'b' + u32 length + bytes (blob), 't' + u32 array length, the array's
 * values, then key/value pairs up to 'e' (table). Tables are read raw (no metamethods).
 * Written in C because one remote unit is encoded and decoded on each side of the broker:
 * building the bytes in one buffer costs a fraction of a string per value. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"
#include "buf.h"
#include "sluice.h"

#define MAX_DEPTH 64

enum { T_STR = 's', T_INT = 'i', T_FLT = 'd', T_TRUE = 'T', T_FALSE = 'F', T_NIL = 'N',
       T_BLOB = 'b', T_TAB = 't', T_END = 'e' };

/* The encoder's output: one buffer (buf.h) for the process, reused from call to call (the Lua
 * state runs on one thread and encode never calls back into Lua), given back when it grew
 * past OUT_KEEP. */
static sl_buf out;
#define OUT_KEEP (1u << 20)

/* Why an encoding stopped: the message is raised once the walk has unwound. */
typedef struct enc_err {
  char msg[200];
} enc_err;

static void put_tag(int tag) {
  char c = (char)tag;
  sl_buf_add(&out, &c, 1);
}

static void put_u32(uint32_t v) {
  unsigned char s[4] = {(unsigned char)(v & 0xff), (unsigned char)((v >> 8) & 0xff),
                        (unsigned char)((v >> 16) & 0xff), (unsigned char)((v >> 24) & 0xff)};
  sl_buf_add(&out, s, 4);
}

static void put_u64(uint64_t v) {
  unsigned char s[8];
  for (int i = 0; i < 8; i++) s[i] = (unsigned char)((v >> (8 * i)) & 0xff);
  sl_buf_add(&out, s, 8);
}

static int put_bytes(enc_err *e, int tag, const char *p, size_t len) {
  if (len > 0xffffffffu) {
    snprintf(e->msg, sizeof e->msg, "a string of %zu bytes is too long to send", len);
    return -1;
  }
  put_tag(tag);
  put_u32((uint32_t)len);
  sl_buf_add(&out, p, len);
  return 0;
}

/* Encodes the value at absolute index idx (what it pushes it pops, also when it fails).
 * Returns 0, or -1 with e->msg set. */
static int enc(lua_State *L, int idx, int depth, enc_err *e) {
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    return put_bytes(e, T_STR, s, len);
  }
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      put_tag(T_INT);
      put_u64((uint64_t)lua_tointeger(L, idx));
    } else {
      double d = (double)lua_tonumber(L, idx);
      uint64_t u;
      memcpy(&u, &d, sizeof u);
      put_tag(T_FLT);
      put_u64(u);
    }
    return 0;
  case LUA_TNIL:
    put_tag(T_NIL);
    return 0;
  case LUA_TBOOLEAN:
    put_tag(lua_toboolean(L, idx) ? T_TRUE : T_FALSE);
    return 0;
  case LUA_TTABLE: {
    if (depth >= MAX_DEPTH || !lua_checkstack(L, 4)) {
      snprintf(e->msg, sizeof e->msg, "value nested more than %d levels (or a cycle)", MAX_DEPTH);
      return -1;
    }
    lua_Unsigned narr = lua_rawlen(L, idx);
    if (narr > 0xffffffffu) {
      snprintf(e->msg, sizeof e->msg, "a table of %llu values is too long to send",
               (unsigned long long)narr);
      return -1;
    }
    put_tag(T_TAB);
    put_u32((uint32_t)narr);
    for (lua_Unsigned i = 1; i <= narr; i++) {
      int rc = 0;
      if (lua_rawgeti(L, idx, (lua_Integer)i) == LUA_TNIL)
        put_tag(T_NIL);
      else
        rc = enc(L, lua_gettop(L), depth + 1, e);
      lua_pop(L, 1);
      if (rc) return -1;
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      int top = lua_gettop(L);
      if (lua_isinteger(L, top - 1)) {
        lua_Integer k = lua_tointeger(L, top - 1);
        if (k >= 1 && (lua_Unsigned)k <= narr) {
          lua_pop(L, 1);
          continue;
        }
      }
      if (enc(L, top - 1, depth + 1, e) || enc(L, top, depth + 1, e)) {
        lua_pop(L, 2);
        return -1;
      }
      lua_pop(L, 1);
    }
    put_tag(T_END);
    return 0;
  }
  case LUA_TUSERDATA:
    if (luaL_testudata(L, idx, "sluice.blob")) {
      sl_blob *bl = sl_blob_to(L, idx);
      if (!bl) {
        snprintf(e->msg, sizeof e->msg, "cannot send a closed blob");
        return -1;
      }
      return put_bytes(e, T_BLOB, (const char *)bl->data, bl->len);
    }
    /* fall through */
  default:
    snprintf(e->msg, sizeof e->msg, "cannot send a %s to another process (unit data and results "
             "must be strings, numbers, booleans, tables or blobs)", luaL_typename(L, idx));
    return -1;
  }
}

/* codec.encode(v) -> bytes (raises, without a position: what cannot travel is the caller's
 * value, not a line) */
static int l_encode(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  out.len = 0;
  enc_err e;
  int rc = enc(L, 1, 0, &e);
  if (out.oom) snprintf(e.msg, sizeof e.msg, "codec: out of memory");
  if (rc == 0 && !out.oom) lua_pushlstring(L, out.p ? out.p : "", out.len);
  if (out.oom || out.cap > OUT_KEEP) {
    free(out.p);
    out = (sl_buf){0};
  }
  if (rc || lua_gettop(L) == 1) {
    lua_pushstring(L, e.msg);
    return lua_error(L);
  }
  return 1;
}

/* Decoding: reads from p[0..len); on bad bytes sets *err (a static message) and returns. */
typedef struct dec_state {
  const unsigned char *p;
  size_t len, pos;
  const char *err;
  char msg[64];
} dec_state;

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

/* Pushes the value at d->pos (nothing when it fails: d->err is set). Returns 0 or -1. */
static int dec(lua_State *L, dec_state *d, int depth) {
  if (d->pos >= d->len) {
    d->err = "truncated";
    return -1;
  }
  size_t at = d->pos;
  int tag = d->p[d->pos++];
  size_t left = d->len - d->pos;
  switch (tag) {
  case T_STR:
  case T_BLOB: {
    if (left < 4) break;
    size_t n = get_u32(d->p + d->pos);
    if (left - 4 < n) break;
    const char *s = (const char *)d->p + d->pos + 4;
    d->pos += 4 + n;
    if (tag == T_STR) {
      lua_pushlstring(L, s, n);
    } else {
      sl_blob *b = sl_blob_new(n);
      if (!b) {
        d->err = "out of memory";
        return -1;
      }
      memcpy(b->data, s, n);
      sl_blob_push(L, b);
    }
    return 0;
  }
  case T_INT:
  case T_FLT: {
    if (left < 8) break;
    uint64_t u = get_u64(d->p + d->pos);
    d->pos += 8;
    if (tag == T_INT) {
      lua_pushinteger(L, (lua_Integer)u);
    } else {
      double x;
      memcpy(&x, &u, sizeof x);
      lua_pushnumber(L, (lua_Number)x);
    }
    return 0;
  }
  case T_TRUE:
  case T_FALSE:
    lua_pushboolean(L, tag == T_TRUE);
    return 0;
  case T_NIL:
    lua_pushnil(L);
    return 0;
  case T_TAB: {
    if (depth >= MAX_DEPTH) {
      d->err = "nested too deeply";
      return -1;
    }
    if (left < 4) break;
    size_t narr = get_u32(d->p + d->pos);
    d->pos += 4;
    if (narr > d->len - d->pos) {
      d->err = "table larger than its bytes";
      return -1;
    }
    if (!lua_checkstack(L, 4)) {
      d->err = "nested too deeply";
      return -1;
    }
    lua_createtable(L, (int)narr, 0);
    int t = lua_gettop(L);
    for (size_t i = 1; i <= narr; i++) {
      if (dec(L, d, depth + 1)) {
        lua_settop(L, t - 1);
        return -1;
      }
      lua_rawseti(L, t, (lua_Integer)i);
    }
    for (;;) {
      if (d->pos >= d->len) {
        lua_settop(L, t - 1);
        d->err = "truncated";
        return -1;
      }
      if (d->p[d->pos] == T_END) break;
      if (dec(L, d, depth + 1) || dec(L, d, depth + 1)) {
        lua_settop(L, t - 1);
        return -1;
      }
      if (lua_isnil(L, -2) || (lua_type(L, -2) == LUA_TNUMBER && !lua_isinteger(L, -2) &&
                               isnan((double)lua_tonumber(L, -2)))) {
        lua_settop(L, t - 1);
        d->err = "bad table key";
        return -1;
      }
      lua_rawset(L, t);
    }
    d->pos++;
    return 0;
  }
  default:
    snprintf(d->msg, sizeof d->msg, "unknown tag 0x%02x at byte %zu", (unsigned)tag, at + 1);
    d->err = d->msg;
    return -1;
  }
  d->err = "truncated";
  return -1;
}

/* codec.decode(bytes) -> value | nil, message */
static int l_decode(lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING) {
    lua_pushnil(L);
    lua_pushfstring(L, "codec: bytes expected, got %s", luaL_typename(L, 1));
    return 2;
  }
  dec_state d;
  d.p = (const unsigned char *)lua_tolstring(L, 1, &d.len);
  d.pos = 0;
  d.err = NULL;
  lua_settop(L, 1);
  if (dec(L, &d, 0)) {
    lua_pushnil(L);
    lua_pushfstring(L, "codec: cannot decode: %s", d.err);
    return 2;
  }
  if (d.pos != d.len) {
    lua_pushnil(L);
    lua_pushfstring(L, "codec: cannot decode: %I bytes left over", (lua_Integer)(d.len - d.pos));
    return 2;
  }
  return 1;
}

int luaopen_sluice_codec(lua_State *L) {
  static const luaL_Reg funcs[] = {{"encode", l_encode}, {"decode", l_decode}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
