/* test_alloc.c: the Lua state made by sl_state_new (core/alloc.c). Its allocator keeps blocks'
 * bytes across growing, shrinking and freeing, and a Lua program that churns strings and
 * tables of all sizes gives the same result in two states. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>

#define H_RUNTIME_ONLY
#include "harness.h"

#define NBLOCKS 20000

static uint32_t rng = 12345;
static uint32_t next_random(void) {
  rng = rng * 1103515245u + 12345u;
  return rng >> 8;
}

static int pattern_ok(const unsigned char *p, size_t n, unsigned char v) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != v) return 0;
  return 1;
}

/* Drives the allocator directly: allocate, fill, reallocate to other sizes, free, reuse. */
static void test_blocks(void) {
  lua_State *L = sl_state_new();
  CHECK(L != NULL);
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  static unsigned char *blocks[NBLOCKS];
  static size_t sizes[NBLOCKS];
  int bad = 0;
  for (int i = 0; i < NBLOCKS; i++) {
    sizes[i] = 1 + next_random() % (i % 10 == 0 ? 4000 : 600);
    blocks[i] = f(ud, NULL, LUA_TTABLE, sizes[i]);
    if (!blocks[i]) bad++;
    else memset(blocks[i], (unsigned char)i, sizes[i]);
  }
  CHECK_EQ_INT(bad, 0);
  for (int i = 0; i < NBLOCKS; i++) bad += !pattern_ok(blocks[i], sizes[i], (unsigned char)i);
  CHECK_EQ_INT(bad, 0);
  /* Reallocate every other block (grow, shrink, cross the small/large border), then free a
   * third and allocate again so freed blocks are reused. */
  for (int i = 0; i < NBLOCKS; i += 2) {
    size_t n = 1 + next_random() % 1200;
    unsigned char *p = f(ud, blocks[i], sizes[i], n);
    if (!p) {
      bad++;
      continue;
    }
    size_t keep = sizes[i] < n ? sizes[i] : n;
    bad += !pattern_ok(p, keep, (unsigned char)i);
    memset(p, (unsigned char)i, n);
    blocks[i] = p;
    sizes[i] = n;
  }
  for (int i = 0; i < NBLOCKS; i += 3) {
    CHECK(f(ud, blocks[i], sizes[i], 0) == NULL);
    sizes[i] = 1 + next_random() % 700;
    blocks[i] = f(ud, NULL, LUA_TSTRING, sizes[i]);
    if (blocks[i]) memset(blocks[i], (unsigned char)i, sizes[i]);
    else bad++;
  }
  for (int i = 0; i < NBLOCKS; i++) bad += !pattern_ok(blocks[i], sizes[i], (unsigned char)i);
  CHECK_EQ_INT(bad, 0);
  for (int i = 0; i < NBLOCKS; i++) f(ud, blocks[i], sizes[i], 0);
  sl_state_close(L);
}

static const char *churn =
    "local t, sum = {}, 0\n"
    "for round = 1, 30 do\n"
    "  for i = 1, 2000 do\n"
    "    local s = string.rep(string.char(65 + i % 26), (i * 7 + round) % 900)\n"
    "    local row = { s = s, n = #s, k = 'key' .. i }\n"
    "    for j = 1, i % 40 do row[j] = j end\n"
    "    t[i] = row\n"
    "  end\n"
    "  for i = 1, 2000, 3 do t[i] = nil end\n"
    "  collectgarbage('step', 50)\n"
    "  for i, row in pairs(t) do\n"
    "    assert(#row.s == row.n and row.k == 'key' .. i and #row == i % 40)\n"
    "    sum = sum + row.n + #row\n"
    "  end\n"
    "end\n"
    "return sum\n";

static lua_Integer run_churn(void) {
  lua_State *L = sl_state_new();
  CHECK(L != NULL);
  luaL_openlibs(L);
  lua_Integer sum = -1;
  if (luaL_dostring(L, churn) != LUA_OK) {
    fprintf(stderr, "churn: %s\n", lua_tostring(L, -1));
    h_failures++;
  } else {
    sum = lua_tointeger(L, -1);
  }
  sl_state_close(L);
  return sum;
}

static void test_lua_churn(void) {
  lua_Integer first = run_churn();
  lua_Integer second = run_churn();
  CHECK(first > 0);
  CHECK_EQ_INT(first, second);
}

int main(void) {
  test_blocks();
  test_lua_churn();
  return h_done("alloc");
}
