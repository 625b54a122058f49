/* blob.c: reference-counted byte buffers shared between Lua and worker threads
 * (Lua module sluice.core.blob).
 *
 * Large payloads (PCM audio chunks, decoded frames, encoded JPEGs) travel between stages as
 * blobs instead of Lua strings, so they are never copied on the way: a stage hands a blob to
 * a pool job by retaining it, and the job releases it when done. The count is atomic; the
 * bytes are immutable once a blob has been pushed to Lua.
 */
#include "blob.h"

#include <stdlib.h>
#include <string.h>

#define BLOB_MT "sluice.blob"

typedef struct blob_ud {
  sl_blob *b; /* one reference, NULL once closed */
} blob_ud;

sl_blob *sl_blob_new(size_t len) {
  sl_blob *b = malloc(sizeof *b + (len ? len : 1));
  if (!b) return NULL;
  atomic_init(&b->refs, 1);
  b->len = len;
  return b;
}

sl_blob *sl_blob_retain(sl_blob *b) {
  atomic_fetch_add(&b->refs, 1);
  return b;
}

void sl_blob_release(sl_blob *b) {
  if (b && atomic_fetch_sub(&b->refs, 1) == 1) free(b);
}

int luaopen_sluice_blob(lua_State *L);

void sl_blob_push(lua_State *L, sl_blob *b) {
  if (luaL_getmetatable(L, BLOB_MT) == LUA_TNIL) {
    luaL_requiref(L, "sluice.core.blob", luaopen_sluice_blob, 0);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  blob_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->b = b;
  luaL_setmetatable(L, BLOB_MT);
}

sl_blob *sl_blob_check(lua_State *L, int idx) {
  blob_ud *ud = luaL_checkudata(L, idx, BLOB_MT);
  sl_check_open(L, ud->b, "blob");
  return ud->b;
}

sl_blob *sl_blob_to(lua_State *L, int idx) {
  blob_ud *ud = luaL_testudata(L, idx, BLOB_MT);
  return ud ? ud->b : NULL;
}

sl_blob *sl_blob_from_arg(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    sl_blob *b = sl_blob_new(len);
    if (!b) luaL_error(L, "out of memory");
    memcpy(b->data, s, len);
    return b;
  }
  blob_ud *ud = luaL_testudata(L, idx, BLOB_MT);
  if (!ud) luaL_typeerror(L, idx, "string or blob");
  sl_check_open(L, ud->b, "blob");
  return sl_blob_retain(ud->b);
}

/* blob:len() and #blob */
static int blob_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sl_blob_check(L, 1)->len);
  return 1;
}

/* blob:bytes([i [, j]]) -> string: a copy of bytes i..j (1-based, like string.sub). */
static int blob_bytes(lua_State *L) {
  sl_blob *b = sl_blob_check(L, 1);
  lua_Integer n = (lua_Integer)b->len;
  lua_Integer i = luaL_optinteger(L, 2, 1);
  lua_Integer j = luaL_optinteger(L, 3, -1);
  if (i < 0) i = n + i + 1;
  if (j < 0) j = n + j + 1;
  if (i < 1) i = 1;
  if (j > n) j = n;
  if (i > j) {
    lua_pushliteral(L, "");
  } else {
    lua_pushlstring(L, (const char *)b->data + (i - 1), (size_t)(j - i + 1));
  }
  return 1;
}

/* __gc, __close and :close share this idempotent function. */
static int blob_close(lua_State *L) {
  blob_ud *ud = luaL_checkudata(L, 1, BLOB_MT);
  sl_blob_release(ud->b);
  ud->b = NULL;
  return 0;
}

static int blob_tostring(lua_State *L) {
  blob_ud *ud = luaL_checkudata(L, 1, BLOB_MT);
  if (ud->b)
    lua_pushfstring(L, "sluice.blob (%I bytes)", (lua_Integer)ud->b->len);
  else
    lua_pushliteral(L, "sluice.blob (closed)");
  return 1;
}

/* blob.new(string) -> blob: a blob holding a copy of the string. */
static int l_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TSTRING);
  sl_blob_push(L, sl_blob_from_arg(L, 1));
  return 1;
}

static int l_is_blob(lua_State *L) {
  lua_pushboolean(L, luaL_testudata(L, 1, BLOB_MT) != NULL);
  return 1;
}

int luaopen_sluice_blob(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"len", blob_len}, {"bytes", blob_bytes}, {"close", blob_close}, {NULL, NULL}};
  if (luaL_newmetatable(L, BLOB_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, blob_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, blob_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, blob_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, blob_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"new", l_new}, {"is_blob", l_is_blob}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
