/* phash.c: dHash, pHash, Hamming distance and the multi-index near-duplicate index
 * (Lua module sluice.core.phash).
 *
 * Hashes are 64-bit Lua integers (the bit pattern of the unsigned hash; the top bit makes
 * some negative, which is harmless: compare with ==, measure with phash.distance).
 * phash.hex(h) gives the 16-hex-digit form for display and storage.
 */
#include "phash.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

int sl_cell_stats(const sl_image *img, int cols, int rows, uint8_t *out) {
  int bpp = img->format == SL_IMG_RGB24 ? 3 : 1;
  int k = img->width / 320;
  if (k < 1) k = 1;
  int w = img->width / k, h = img->height / k;
  if (w < 1 || h < 1 || cols < 1 || rows < 1) {
    memset(out, 0, (size_t)cols * (size_t)rows * 3);
    return 0;
  }
  uint8_t *d = malloc((size_t)w * (size_t)h);
  if (!d) return -1;
  for (int y = 0; y < h; y++) {
    for (int x = 0; x < w; x++) {
      unsigned s = 0;
      for (int dy = 0; dy < k; dy++) {
        const uint8_t *row = img->data + (ptrdiff_t)(y * k + dy) * img->stride;
        for (int dx = 0; dx < k; dx++) {
          int xx = x * k + dx;
          s += bpp == 1 ? row[xx] : (unsigned)(row[3 * xx] + row[3 * xx + 1] + row[3 * xx + 2]) / 3;
        }
      }
      d[(size_t)y * w + x] = (uint8_t)(s / (unsigned)(k * k));
    }
  }
  for (int cy = 0; cy < rows; cy++) {
    int y0 = cy * h / rows, y1 = (cy + 1) * h / rows;
    if (y1 <= y0) y1 = y0 + 1;
    if (y1 > h) y1 = h;
    for (int cx = 0; cx < cols; cx++) {
      int x0 = cx * w / cols, x1 = (cx + 1) * w / cols;
      if (x1 <= x0) x1 = x0 + 1;
      if (x1 > w) x1 = w;
      uint64_t sum = 0, sq = 0;
      long n = 0, edges = 0;
      for (int y = y0; y < y1; y++) {
        const uint8_t *p = d + (size_t)y * w;
        for (int x = x0; x < x1; x++) {
          unsigned v = p[x];
          sum += v;
          sq += v * v;
          n++;
          int g = 0;
          if (x + 1 < w) g += abs((int)p[x + 1] - (int)v);
          if (y + 1 < h) g += abs((int)p[x + w] - (int)v);
          if (g >= 40) edges++;
        }
      }
      double mean = n ? (double)sum / n : 0;
      double var = n ? (double)sq / n - mean * mean : 0;
      double sd = var > 0 ? sqrt(var) : 0;
      uint8_t *o = out + ((size_t)cy * cols + cx) * 3;
      o[0] = (uint8_t)lround(mean);
      o[1] = (uint8_t)(sd > 255 ? 255 : lround(sd));
      o[2] = (uint8_t)(n ? (edges * 255 + n / 2) / n : 0);
    }
  }
  free(d);
  return 0;
}

/* Box-averages img (gray or RGB) to tw x th cells into out (row-major doubles). */
static void box_average(const sl_image *img, int tw, int th, double *out) {
  int bpp = img->format == SL_IMG_RGB24 ? 3 : 1;
  for (int cy = 0; cy < th; cy++) {
    int y0 = (int)((long)cy * img->height / th), y1 = (int)((long)(cy + 1) * img->height / th);
    if (y1 <= y0) y1 = y0 + 1;
    if (y1 > img->height) y1 = img->height;
    for (int cx = 0; cx < tw; cx++) {
      int x0 = (int)((long)cx * img->width / tw), x1 = (int)((long)(cx + 1) * img->width / tw);
      if (x1 <= x0) x1 = x0 + 1;
      if (x1 > img->width) x1 = img->width;
      /* cells wider and taller than 16 pixels are sampled on every other row and column: the
       * average barely moves and a 1280x720 frame costs a quarter of the reads */
      int step = (x1 - x0 >= 16 && y1 - y0 >= 16) ? 2 : 1;
      uint64_t sum = 0;
      long n = 0;
      for (int y = y0; y < y1; y += step) {
        const uint8_t *row = img->data + (ptrdiff_t)y * img->stride;
        if (bpp == 1) {
          for (int x = x0; x < x1; x += step) sum += row[x];
        } else {
          for (int x = x0; x < x1; x += step)
            sum += (row[3 * x] + row[3 * x + 1] + row[3 * x + 2]) / 3;
        }
        n += (x1 - x0 + step - 1) / step;
      }
      out[cy * tw + cx] = n > 0 ? (double)sum / (double)n : 0;
    }
  }
}

uint64_t sl_dhash(const sl_image *img) {
  double cells[9 * 8];
  if (img->width <= 0 || img->height <= 0) return 0;
  box_average(img, 9, 8, cells);
  uint64_t h = 0;
  for (int y = 0; y < 8; y++)
    for (int x = 0; x < 8; x++) h = (h << 1) | (cells[y * 9 + x + 1] > cells[y * 9 + x]);
  return h;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

uint64_t sl_phash(const sl_image *img) {
  enum { N = 32 };
  static double cosines[8][N];
  static int ready;
  double px[N * N], rows[N * 8], low[64], sorted[64];
  if (img->width <= 0 || img->height <= 0) return 0;
  if (!ready) { /* idempotent: every thread computes the same table */
    for (int k = 0; k < 8; k++)
      for (int n = 0; n < N; n++) cosines[k][n] = cos(M_PI / N * (n + 0.5) * k);
    ready = 1;
  }
  box_average(img, N, N, px);
  /* DCT along rows (only the 8 lowest frequencies are needed), then along columns */
  for (int y = 0; y < N; y++)
    for (int k = 0; k < 8; k++) {
      double s = 0;
      for (int n = 0; n < N; n++) s += px[y * N + n] * cosines[k][n];
      rows[y * 8 + k] = s;
    }
  for (int k = 0; k < 8; k++)
    for (int j = 0; j < 8; j++) {
      double s = 0;
      for (int n = 0; n < N; n++) s += rows[n * 8 + j] * cosines[k][n];
      low[k * 8 + j] = s;
    }
  memcpy(sorted, low, sizeof low);
  qsort(sorted, 64, sizeof *sorted, cmp_double);
  double median = (sorted[31] + sorted[32]) / 2;
  uint64_t h = 0;
  for (int i = 0; i < 64; i++) h = (h << 1) | (low[i] > median);
  return h;
}

/* ---- multi-index hashing ---------------------------------------------------------------- */

struct sl_hash_index {
  uint64_t *hashes;
  int32_t *next[4];   /* chain links per table, parallel to hashes */
  uint32_t *stamp;    /* query epoch per hash, to report each once */
  int32_t *head[4];   /* 65536 chain heads per table */
  long len, cap;
  uint32_t epoch;
};

sl_hash_index *sl_hash_index_new(void) {
  sl_hash_index *ix = calloc(1, sizeof *ix);
  if (!ix) return NULL;
  for (int t = 0; t < 4; t++) {
    ix->head[t] = malloc(65536 * sizeof(int32_t));
    if (!ix->head[t]) {
      sl_hash_index_free(ix);
      return NULL;
    }
    memset(ix->head[t], 0xff, 65536 * sizeof(int32_t)); /* -1: empty */
  }
  return ix;
}

void sl_hash_index_free(sl_hash_index *ix) {
  if (!ix) return;
  for (int t = 0; t < 4; t++) {
    free(ix->head[t]);
    free(ix->next[t]);
  }
  free(ix->hashes);
  free(ix->stamp);
  free(ix);
}

static int grow(sl_hash_index *ix) {
  long cap = ix->cap ? ix->cap * 2 : 256;
  uint64_t *h = realloc(ix->hashes, (size_t)cap * sizeof *h);
  if (!h) return -1;
  ix->hashes = h;
  uint32_t *s = realloc(ix->stamp, (size_t)cap * sizeof *s);
  if (!s) return -1;
  ix->stamp = s;
  for (int t = 0; t < 4; t++) {
    int32_t *n = realloc(ix->next[t], (size_t)cap * sizeof *n);
    if (!n) return -1;
    ix->next[t] = n;
  }
  ix->cap = cap;
  return 0;
}

long sl_hash_index_add(sl_hash_index *ix, uint64_t h) {
  if (ix->len == ix->cap && grow(ix) < 0) return -1;
  if (ix->len >= INT32_MAX) return -1;
  long pos = ix->len++;
  ix->hashes[pos] = h;
  ix->stamp[pos] = 0;
  for (int t = 0; t < 4; t++) {
    unsigned key = (unsigned)(h >> (16 * t)) & 0xffff;
    ix->next[t][pos] = ix->head[t][key];
    ix->head[t][key] = (int32_t)pos;
  }
  return pos;
}

long sl_hash_index_len(const sl_hash_index *ix) { return ix->len; }
uint64_t sl_hash_index_get(const sl_hash_index *ix, long pos) { return ix->hashes[pos]; }

typedef struct query {
  sl_hash_index *ix;
  uint64_t h;
  int d;
  long found;
  void (*cb)(long, int, void *);
  void *arg;
} query;

static void probe_bucket(query *q, int t, unsigned key) {
  sl_hash_index *ix = q->ix;
  for (int32_t p = ix->head[t][key]; p >= 0; p = ix->next[t][p]) {
    if (ix->stamp[p] == ix->epoch) continue;
    ix->stamp[p] = ix->epoch;
    int dist = sl_hamming(ix->hashes[p], q->h);
    if (dist <= q->d) {
      q->found++;
      q->cb(p, dist, q->arg);
    }
  }
}

/* Probes every key within r bits of key, flipping bits at positions >= from. */
static void probe_radius(query *q, int t, unsigned key, int r, int from) {
  probe_bucket(q, t, key);
  if (r == 0) return;
  for (int b = from; b < 16; b++) probe_radius(q, t, key ^ (1u << b), r - 1, b + 1);
}

long sl_hash_index_near(sl_hash_index *ix, uint64_t h, int d,
                        void (*found)(long pos, int distance, void *arg), void *arg) {
  query q = {ix, h, d, 0, found, arg};
  if (d < 0) return 0;
  if (d >= 16) {
    for (long p = 0; p < ix->len; p++) {
      int dist = sl_hamming(ix->hashes[p], h);
      if (dist <= d) {
        q.found++;
        found(p, dist, arg);
      }
    }
    return q.found;
  }
  if (++ix->epoch == 0) { /* wrapped: reset the stamps */
    memset(ix->stamp, 0, (size_t)ix->len * sizeof *ix->stamp);
    ix->epoch = 1;
  }
  int r = d / 4;
  for (int t = 0; t < 4; t++) probe_radius(&q, t, (unsigned)(h >> (16 * t)) & 0xffff, r, 0);
  return q.found;
}

/* ---- Lua ---------------------------------------------------------------------------------- */

#define INDEX_MT "sluice.phash.index"

typedef struct index_ud {
  sl_hash_index *ix; /* NULL once closed */
} index_ud;

/* Accepts an integer hash or a 16-hex-digit string. */
static uint64_t check_hash(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    if (len == 16) {
      char *end;
      unsigned long long v = strtoull(s, &end, 16);
      if (end == s + 16) return (uint64_t)v;
    }
    luaL_argerror(L, idx, "hash expected (integer or 16 hex digits)");
  }
  return (uint64_t)luaL_checkinteger(L, idx);
}

static int l_distance(lua_State *L) {
  lua_pushinteger(L, sl_hamming(check_hash(L, 1), check_hash(L, 2)));
  return 1;
}

static int l_hex(lua_State *L) {
  char buf[17];
  snprintf(buf, sizeof buf, "%016llx", (unsigned long long)check_hash(L, 1));
  lua_pushstring(L, buf);
  return 1;
}

static int l_from_hex(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_hash(L, 1));
  return 1;
}

static index_ud *check_index(lua_State *L) {
  index_ud *u = luaL_checkudata(L, 1, INDEX_MT);
  sl_check_open(L, u->ix, "phash index");
  return u;
}

/* index:add(hash [, id]) -> position: id defaults to the position (1-based). */
static int ix_add(lua_State *L) {
  index_ud *u = check_index(L);
  uint64_t h = check_hash(L, 2);
  long pos = sl_hash_index_add(u->ix, h);
  if (pos < 0) return luaL_error(L, "phash index: out of memory");
  lua_getiuservalue(L, 1, 1);
  if (lua_isnoneornil(L, 3))
    lua_pushinteger(L, pos + 1);
  else
    lua_pushvalue(L, 3);
  lua_rawseti(L, -2, pos + 1);
  lua_pushinteger(L, pos + 1);
  return 1;
}

typedef struct near_ctx {
  lua_State *L;
  int ids, out, dists;
  lua_Integer n;
} near_ctx;

static void near_found(long pos, int distance, void *arg) {
  near_ctx *c = arg;
  c->n++;
  lua_rawgeti(c->L, c->ids, pos + 1);
  lua_rawseti(c->L, c->out, c->n);
  lua_pushinteger(c->L, distance);
  lua_rawseti(c->L, c->dists, c->n);
}

/* index:near(hash, d) -> ids, distances: every id added with a hash within d bits. */
static int ix_near(lua_State *L) {
  index_ud *u = check_index(L);
  uint64_t h = check_hash(L, 2);
  lua_Integer d = luaL_checkinteger(L, 3);
  luaL_argcheck(L, d >= 0 && d <= 64, 3, "distance must be 0..64");
  lua_getiuservalue(L, 1, 1);
  int ids = lua_gettop(L);
  lua_newtable(L);
  int out = lua_gettop(L);
  lua_newtable(L);
  int dists = lua_gettop(L);
  near_ctx c = {L, ids, out, dists, 0};
  sl_hash_index_near(u->ix, h, (int)d, near_found, &c);
  return 2;
}

static int ix_len(lua_State *L) {
  lua_pushinteger(L, sl_hash_index_len(check_index(L)->ix));
  return 1;
}

static int ix_close(lua_State *L) {
  index_ud *u = luaL_checkudata(L, 1, INDEX_MT);
  sl_hash_index_free(u->ix);
  u->ix = NULL;
  return 0;
}

static int l_index(lua_State *L) {
  index_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
  u->ix = NULL;
  luaL_setmetatable(L, INDEX_MT);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  u->ix = sl_hash_index_new();
  if (!u->ix) return luaL_error(L, "phash index: out of memory");
  return 1;
}

int luaopen_sluice_phash(lua_State *L) {
  static const luaL_Reg methods[] = {{"add", ix_add},     {"near", ix_near}, {"len", ix_len},
                                     {"close", ix_close}, {NULL, NULL}};
  if (luaL_newmetatable(L, INDEX_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, ix_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, ix_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, ix_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"distance", l_distance}, {"hex", l_hex},
                                   {"from_hex", l_from_hex}, {"index", l_index},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
