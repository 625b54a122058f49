/* digest.c: content digests (module sluice.core.digest), behind sluice.runtime.digest.
 *
 *   digest.sha256(s) -> 64 hex digits (on the calling thread: for short strings, keys)
 *   digest.encode(v) -> the canonical text of a Lua value (below); digest.key(v) -> its
 *       SHA-256 (64 hex digits): the one keying function
 *   digest.file(path, done) -> job: done({size=, mtime=, sha256=, whole=}) or done(nil,
 *       message, code). The file's identity on a worker thread: its size, its modification
 *       time (seconds, with nanoseconds as the fraction) and the SHA-256 of its first and
 *       last MiB (of the whole file when it is at most 2 MiB: whole = true).
 *   digest.file(path, done, true) -> the same with the SHA-256 of all of the file, whatever its
 *       size (whole = true): what it holds, for content-addressed keys.
 *   digest.stat(paths, done) -> job: done(list, why) where list[i] is {size=, mtime=} for a
 *       regular file and false for a path that is missing (or not a regular file); why[i]
 *       is the error's name for those ("ENOENT", "EISDIR" for anything not a regular file,
 *       ...) and "EACCES" for a regular file this process cannot read.
 *
 * SHA-256 as FIPS 180-4 specifies it (checked against sha256sum by the tests).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "sluice.h"

/* ---- SHA-256 -------------------------------------------------------------------------- */

typedef struct sha256 {
  uint32_t h[8];
  uint64_t len; /* bytes hashed */
  unsigned char buf[64];
  size_t nbuf;
} sha256;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_init(sha256 *s) {
  static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(s->h, h0, sizeof h0);
  s->len = 0;
  s->nbuf = 0;
}

static void sha256_block(sha256 *s, const unsigned char *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
           (uint32_t)p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5],
           g = s->h[6], h = s->h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  s->h[0] += a;
  s->h[1] += b;
  s->h[2] += c;
  s->h[3] += d;
  s->h[4] += e;
  s->h[5] += f;
  s->h[6] += g;
  s->h[7] += h;
}

static void sha256_update(sha256 *s, const void *data, size_t n) {
  const unsigned char *p = data;
  s->len += n;
  if (s->nbuf > 0) {
    size_t take = 64 - s->nbuf < n ? 64 - s->nbuf : n;
    memcpy(s->buf + s->nbuf, p, take);
    s->nbuf += take;
    p += take;
    n -= take;
    if (s->nbuf < 64) return;
    sha256_block(s, s->buf);
    s->nbuf = 0;
  }
  for (; n >= 64; p += 64, n -= 64) sha256_block(s, p);
  memcpy(s->buf, p, n);
  s->nbuf = n;
}

static void sha256_hex(sha256 *s, char out[65]) {
  uint64_t bits = s->len * 8;
  unsigned char pad = 0x80;
  sha256_update(s, &pad, 1);
  unsigned char zero = 0;
  while (s->nbuf != 56) sha256_update(s, &zero, 1);
  unsigned char lenb[8];
  for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)(bits >> (56 - 8 * i));
  sha256_update(s, lenb, 8);
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 8; i++)
    for (int j = 0; j < 4; j++) {
      unsigned v = (s->h[i] >> (24 - 8 * j)) & 0xff;
      out[8 * i + 2 * j] = hex[v >> 4];
      out[8 * i + 2 * j + 1] = hex[v & 15];
    }
  out[64] = '\0';
}

/* digest.sha256(s) -> hex */
static int l_sha256(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  sha256 h;
  sha256_init(&h);
  sha256_update(&h, s, n);
  char out[65];
  sha256_hex(&h, out);
  lua_pushlstring(L, out, 64);
  return 1;
}

/* ---- the canonical encoding of a Lua value ----------------------------------------------
 * The one encoding keys are made of (sluice.runtime.digest.key): types kept apart and tables
 * by their entries in sorted order, so equal values give equal text in every run whatever
 * the order pairs() would give:
 *   nil n | true T | false F | integer i<decimal>; | float f<%a>; (NaN fnan;)
 *   string s<length>:<bytes> | table {<key><value>...} (entries sorted by their bytes)
 *   Lua function l<sha256 of its stripped bytecode> | anything else u<address> (userdata, C
 *   functions, threads: no content to name; their text differs every run).
 * Tables are read raw (metatables are not consulted). */

typedef struct entry {
  const char *p;
  size_t off, n;
} entry;

static int entry_cmp(const void *a, const void *b) {
  const entry *x = a, *y = b;
  size_t n = x->n < y->n ? x->n : y->n;
  int c = memcmp(x->p, y->p, n);
  if (c != 0) return c;
  return x->n < y->n ? -1 : x->n > y->n;
}

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  (void)L;
  sha256_update(ud, p, sz);
  return 0;
}

#define ENC_OK 0
#define ENC_DEEP 1
#define ENC_OOM 2

/* Appends the encoding of the value at idx (absolute) to b. Never raises. */
static int enc_value(lua_State *L, int idx, sl_buf *b, int depth) {
  char tmp[64];
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    sl_buf_add(b, "n", 1);
    break;
  case LUA_TBOOLEAN:
    sl_buf_add(b, lua_toboolean(L, idx) ? "T" : "F", 1);
    break;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      snprintf(tmp, sizeof tmp, "i%lld;", (long long)lua_tointeger(L, idx));
    } else {
      lua_Number v = lua_tonumber(L, idx);
      if (v != v)
        snprintf(tmp, sizeof tmp, "fnan;");
      else
        snprintf(tmp, sizeof tmp, "f%a;", (double)v);
    }
    sl_buf_str(b, tmp);
    break;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    snprintf(tmp, sizeof tmp, "s%zu:", n);
    sl_buf_str(b, tmp);
    sl_buf_add(b, s, n);
    break;
  }
  case LUA_TTABLE: {
    if (depth > 100) return ENC_DEEP;
    if (!lua_checkstack(L, 4)) return ENC_OOM;
    /* Every entry is encoded into one scratch buffer (its offset and length noted), then
     * the entries are sorted and appended: two allocations per table, not two per entry. */
    size_t nent = 0, cap = 0;
    entry *ents = NULL;
    sl_buf scratch = {0};
    int rc = ENC_OK;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
      size_t start = scratch.len;
      int top = lua_gettop(L);
      rc = enc_value(L, top - 1, &scratch, depth + 1);
      if (rc == ENC_OK) rc = enc_value(L, top, &scratch, depth + 1);
      lua_pop(L, 1);
      if (rc == ENC_OK && scratch.oom) rc = ENC_OOM;
      if (rc == ENC_OK && nent == cap) {
        size_t ncap = cap ? cap * 2 : 8;
        entry *ne = realloc(ents, ncap * sizeof *ents);
        if (!ne)
          rc = ENC_OOM;
        else {
          ents = ne;
          cap = ncap;
        }
      }
      if (rc != ENC_OK) {
        lua_pop(L, 1); /* the key: the traversal stops here */
        break;
      }
      ents[nent].p = NULL; /* (an offset until the scratch buffer stops moving) */
      ents[nent].off = start;
      ents[nent].n = scratch.len - start;
      nent++;
    }
    if (rc == ENC_OK) {
      for (size_t i = 0; i < nent; i++) ents[i].p = scratch.p + ents[i].off;
      if (nent > 1) qsort(ents, nent, sizeof *ents, entry_cmp);
      sl_buf_add(b, "{", 1);
      for (size_t i = 0; i < nent; i++) sl_buf_add(b, ents[i].p, ents[i].n);
      sl_buf_add(b, "}", 1);
    }
    free(scratch.p);
    free(ents);
    if (rc != ENC_OK) return rc;
    break;
  }
  case LUA_TFUNCTION:
    if (!lua_iscfunction(L, idx)) {
      sha256 h;
      sha256_init(&h);
      lua_pushvalue(L, idx);
      lua_dump(L, dump_writer, &h, 1);
      lua_pop(L, 1);
      char hex[65];
      sha256_hex(&h, hex);
      sl_buf_add(b, "l", 1);
      sl_buf_add(b, hex, 64);
      break;
    }
    /* fall through */
  default:
    snprintf(tmp, sizeof tmp, "u%p", lua_topointer(L, idx));
    sl_buf_str(b, tmp);
    break;
  }
  return b->oom ? ENC_OOM : ENC_OK;
}

/* Encodes argument 1 into b, or raises (after freeing b). */
static void encode_arg(lua_State *L, sl_buf *b) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  int rc = enc_value(L, 1, b, 0);
  if (rc == ENC_OK && b->oom) rc = ENC_OOM;
  if (rc != ENC_OK) {
    free(b->p);
    b->p = NULL;
    if (rc == ENC_DEEP) luaL_error(L, "digest: value nested too deeply (or refers to itself)");
    luaL_error(L, "digest: out of memory");
  }
}

/* digest.encode(v) -> the canonical text */
static int l_encode(lua_State *L) {
  sl_buf b = {0};
  encode_arg(L, &b);
  lua_pushlstring(L, b.p ? b.p : "", b.len); /* may raise: b leaks only when Lua has no memory */
  free(b.p);
  return 1;
}

/* digest.key(v) -> the SHA-256 of the canonical text, 64 hex digits */
static int l_key(lua_State *L) {
  sl_buf b = {0};
  encode_arg(L, &b);
  sha256 h;
  sha256_init(&h);
  sha256_update(&h, b.p ? b.p : "", b.len);
  free(b.p);
  char out[65];
  sha256_hex(&h, out);
  lua_pushlstring(L, out, 64);
  return 1;
}

/* ---- file identity on the pool --------------------------------------------------------- */

#define MIB (1024 * 1024)

typedef struct file_job {
  char *path;
  int err; /* a negative libuv code */
  int64_t size;
  double mtime;
  int whole;
  int all; /* hash all of it, whatever its size */
  char hex[65];
} file_job;

static double mtime_of(const struct stat *st) {
  return (double)st->st_mtim.tv_sec + (double)st->st_mtim.tv_nsec / 1e9;
}

/* Hashes n bytes at offset off of fd into h. Returns 0 or a negative libuv code. */
static int hash_range(int fd, sha256 *h, off_t off, size_t n, unsigned char *buf) {
  size_t done = 0;
  while (done < n) {
    size_t want = n - done < 65536 ? n - done : 65536;
    ssize_t r = pread(fd, buf, want, off + (off_t)done);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -errno;
    if (r == 0) break; /* the file shrank meanwhile: what was there is hashed */
    sha256_update(h, buf, (size_t)r);
    done += (size_t)r;
  }
  return 0;
}

static void file_run(sl_job *job, void *data) {
  (void)job;
  file_job *f = data;
  int fd = open(f->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    f->err = -errno;
    return;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    f->err = -errno;
    close(fd);
    return;
  }
  if (!S_ISREG(st.st_mode)) {
    f->err = UV_EISDIR;
    close(fd);
    return;
  }
  f->size = (int64_t)st.st_size;
  f->mtime = mtime_of(&st);
  unsigned char *buf = malloc(65536);
  if (!buf) {
    f->err = UV_ENOMEM;
    close(fd);
    return;
  }
  sha256 h;
  sha256_init(&h);
  int rc;
  if (f->all || st.st_size <= 2 * MIB) {
    f->whole = 1;
    rc = hash_range(fd, &h, 0, (size_t)st.st_size, buf);
  } else {
    rc = hash_range(fd, &h, 0, MIB, buf);
    if (rc == 0) rc = hash_range(fd, &h, st.st_size - MIB, MIB, buf);
  }
  free(buf);
  close(fd);
  if (rc != 0) {
    f->err = rc;
    return;
  }
  sha256_hex(&h, f->hex);
}

static int file_finish(lua_State *L, void *data) {
  file_job *f = data;
  if (f->err) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", f->path, uv_strerror(f->err));
    lua_pushstring(L, uv_err_name(f->err));
    return 3;
  }
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)f->size);
  lua_setfield(L, -2, "size");
  lua_pushnumber(L, f->mtime);
  lua_setfield(L, -2, "mtime");
  lua_pushstring(L, f->hex);
  lua_setfield(L, -2, "sha256");
  lua_pushboolean(L, f->whole);
  lua_setfield(L, -2, "whole");
  return 1;
}

static void file_free(void *data) {
  file_job *f = data;
  free(f->path);
  free(f);
}

static const sl_job_class file_class = {"digest.file", file_run, file_finish, file_free};

/* digest.file(path, done[, all]) -> job */
static int l_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int all = lua_toboolean(L, 3);
  lua_settop(L, 2);
  file_job *f = calloc(1, sizeof *f);
  if (!f || !(f->path = strdup(path))) {
    free(f);
    return luaL_error(L, "digest.file: out of memory");
  }
  f->all = all;
  return sl_job_submit(L, 2, &file_class, f); /* owns f from here, whatever happens */
}

/* ---- stat of many paths on the pool ---------------------------------------------------- */

typedef struct stat_job {
  int n;
  char **paths;
  int *found;
  int *err; /* a uv error code, or 0 */
  int64_t *size;
  double *mtime;
} stat_job;

static void stat_run(sl_job *job, void *data) {
  (void)job;
  stat_job *s = data;
  for (int i = 0; i < s->n; i++) {
    struct stat st;
    int rc = stat(s->paths[i], &st);
    s->found[i] = rc == 0 && S_ISREG(st.st_mode);
    s->err[i] = rc != 0 ? uv_translate_sys_error(errno) : (s->found[i] ? 0 : UV_EISDIR);
    if (s->found[i]) {
      s->size[i] = (int64_t)st.st_size;
      s->mtime[i] = mtime_of(&st);
      if (access(s->paths[i], R_OK) != 0) s->err[i] = uv_translate_sys_error(errno);
    }
  }
}

static int stat_finish(lua_State *L, void *data) {
  stat_job *s = data;
  lua_createtable(L, s->n, 0);
  for (int i = 0; i < s->n; i++) {
    if (s->found[i]) {
      lua_createtable(L, 0, 2);
      lua_pushinteger(L, (lua_Integer)s->size[i]);
      lua_setfield(L, -2, "size");
      lua_pushnumber(L, s->mtime[i]);
      lua_setfield(L, -2, "mtime");
    } else {
      lua_pushboolean(L, 0);
    }
    lua_rawseti(L, -2, i + 1);
  }
  lua_createtable(L, 0, 0);
  for (int i = 0; i < s->n; i++) {
    if (!s->err[i]) continue;
    lua_pushstring(L, uv_err_name(s->err[i]));
    lua_rawseti(L, -2, i + 1);
  }
  return 2;
}

static void stat_free(void *data) {
  stat_job *s = data;
  if (s->paths)
    for (int i = 0; i < s->n; i++) free(s->paths[i]);
  free(s->paths);
  free(s->found);
  free(s->err);
  free(s->size);
  free(s->mtime);
  free(s);
}

static const sl_job_class stat_class = {"digest.stat", stat_run, stat_finish, stat_free};

/* digest.stat(paths, done) -> job. Every argument is read and checked before anything is
 * allocated; from the first allocation on, a failure frees what was made. */
static int l_stat(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  if (n > 1000000) return luaL_argerror(L, 1, "too many paths");
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, 1, i) != LUA_TSTRING) return luaL_argerror(L, 1, "list of paths expected");
    lua_pop(L, 1);
  }
  stat_job *s = calloc(1, sizeof *s);
  if (!s) return luaL_error(L, "digest.stat: out of memory");
  size_t m = n > 0 ? (size_t)n : 1;
  s->paths = calloc(m, sizeof *s->paths);
  s->found = calloc(m, sizeof *s->found);
  s->err = calloc(m, sizeof *s->err);
  s->size = calloc(m, sizeof *s->size);
  s->mtime = calloc(m, sizeof *s->mtime);
  int oom = !s->paths || !s->found || !s->err || !s->size || !s->mtime;
  for (lua_Integer i = 1; i <= n && !oom; i++) {
    lua_rawgeti(L, 1, i); /* a string (checked above) */
    s->paths[i - 1] = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (!s->paths[i - 1]) oom = 1;
    s->n = (int)i;
  }
  if (oom) {
    stat_free(s);
    return luaL_error(L, "digest.stat: out of memory");
  }
  return sl_job_submit(L, 2, &stat_class, s);
}

int luaopen_sluice_digest(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"sha256", l_sha256}, {"encode", l_encode}, {"key", l_key}, {"file", l_file},
      {"stat", l_stat},     {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
