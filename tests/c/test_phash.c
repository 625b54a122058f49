/* test_phash.c: dHash/pHash on synthetic images and the multi-index near-duplicate index
 * against a linear scan. */
#include "phash.h"

#include <math.h>

#include "harness.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) { /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ull;
}

/* A hash at exactly d bits from h. */
static uint64_t flip(uint64_t h, int d) {
  uint64_t mask = 0;
  while (__builtin_popcountll(mask) < d) mask |= 1ull << (rnd() % 64);
  return h ^ mask;
}

typedef struct hits {
  long n;
  long pos[4096];
  int dist[4096];
} hits;

static void on_found(long pos, int distance, void *arg) {
  hits *h = arg;
  if (h->n < 4096) {
    h->pos[h->n] = pos;
    h->dist[h->n] = distance;
  }
  h->n++;
}

static void test_index(void) {
  enum { N = 30000 };
  sl_hash_index *ix = sl_hash_index_new();
  CHECK(ix != NULL);
  static uint64_t all[N];
  for (int i = 0; i < N; i++) {
    /* clusters: every tenth hash is a near copy of an earlier one */
    all[i] = (i % 10 == 9) ? flip(all[i - 1 - (long)(rnd() % 5)], (int)(rnd() % 12)) : rnd();
    CHECK_EQ_INT(sl_hash_index_add(ix, all[i]), i);
  }
  CHECK_EQ_INT(sl_hash_index_len(ix), N);
  static hits h;
  for (int q = 0; q < 300; q++) {
    uint64_t query = q % 2 ? all[rnd() % N] : flip(all[rnd() % N], (int)(rnd() % 10));
    int d = (int)(q % 21);
    h.n = 0;
    long n = sl_hash_index_near(ix, query, d, on_found, &h);
    long expect = 0;
    for (int i = 0; i < N; i++) expect += sl_hamming(all[i], query) <= d;
    CHECK_EQ_INT(n, expect);
    CHECK_EQ_INT(h.n, expect);
    for (long k = 0; k < h.n && k < 4096; k++) {
      CHECK(h.dist[k] <= d);
      CHECK_EQ_INT(h.dist[k], sl_hamming(all[h.pos[k]], query));
      for (long m = 0; m < k; m++) CHECK(h.pos[m] != h.pos[k]); /* each reported once */
    }
  }
  sl_hash_index_free(ix);
}

static void test_hashes(void) {
  enum { W = 64, H = 48 };
  static uint8_t grad[W * H], flat[W * H], noisy[W * H], rgb[W * H * 3], wave[W * H],
      wave_noisy[W * H];
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++) {
      grad[y * W + x] = (uint8_t)(x * 4);
      flat[y * W + x] = 100;
      noisy[y * W + x] = (uint8_t)(x * 4 + (int)(rnd() % 3));
      /* blocks of random brightness: energy in many frequencies, like a real picture */
      double v = 40 + (double)(((unsigned)(x / 8) * 2654435761u ^ (unsigned)(y / 8) * 40503u) % 170);
      wave[y * W + x] = (uint8_t)v;
      wave_noisy[y * W + x] = (uint8_t)(v - 2 + (double)(rnd() % 5));
      for (int c = 0; c < 3; c++) rgb[(y * W + x) * 3 + c] = (uint8_t)(x * 4);
    }
  sl_image g = {W, H, W, SL_IMG_GRAY8, grad};
  sl_image f = {W, H, W, SL_IMG_GRAY8, flat};
  sl_image n = {W, H, W, SL_IMG_GRAY8, noisy};
  sl_image c = {W, H, W * 3, SL_IMG_RGB24, rgb};
  /* brightness rising to the right: every dHash bit set */
  CHECK(sl_dhash(&g) == ~0ull);
  CHECK(sl_dhash(&f) == 0);
  CHECK(sl_dhash(&c) == sl_dhash(&g));
  CHECK(sl_hamming(sl_dhash(&g), sl_dhash(&n)) <= 2);
  sl_image w = {W, H, W, SL_IMG_GRAY8, wave};
  sl_image wn = {W, H, W, SL_IMG_GRAY8, wave_noisy};
  CHECK(sl_hamming(sl_phash(&w), sl_phash(&wn)) <= 4);
  CHECK(sl_hamming(sl_phash(&w), sl_phash(&g)) >= 12);
  CHECK(sl_hamming(sl_dhash(&w), sl_dhash(&wn)) <= 4);
  CHECK(sl_hamming(sl_dhash(&w), sl_dhash(&g)) >= 12);
  CHECK_EQ_INT(sl_hamming(0, ~0ull), 64);
}

/* The Lua side: hex round trip, hashes as integers or hex, ids and distances from :near. */
static void test_lua(void) {
  uv_loop_t loop;
  lua_State *L = h_open(&loop);
  CHECK_EQ_INT(h_lua(L,
                     "local p = require 'sluice.core.phash'\n"
                     "hex = p.hex(-1)\n"
                     "d = p.distance(0, '00000000000000ff')\n"
                     "local ix = p.index()\n"
                     "ix:add(0x0f, 'a'); ix:add(0xff, 'b'); ix:add(-1, 'c')\n"
                     "local ids, ds = ix:near(0, 4)\n"
                     "near = table.concat(ids, ',') .. ':' .. table.concat(ds, ',')\n"
                     "n = #ix\n"
                     "ix:close()\n"
                     "closed = not pcall(ix.add, ix, 1)\n"),
               LUA_OK);
  CHECK(strcmp(h_str(L, "hex"), "ffffffffffffffff") == 0);
  CHECK_EQ_INT(h_int(L, "d"), 8);
  CHECK(strcmp(h_str(L, "near"), "a:4") == 0);
  CHECK_EQ_INT(h_int(L, "n"), 3);
  lua_getglobal(L, "closed");
  CHECK(lua_toboolean(L, -1));
  lua_pop(L, 1);
  h_close(L);
}

int main(void) {
  test_hashes();
  test_index();
  test_lua();
  return h_done("test_phash");
}
