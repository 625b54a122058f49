/* alloc.c: the main Lua state and its memory allocator.
 *
 * Every item that moves through a stage graph allocates a few small tables and strings, and
 * glibc's malloc spent about a fifth of the graph benchmark's time on them. This allocator
 * keeps blocks of up to SMALL_MAX bytes in per-size free lists carved from 64 KiB slabs (Lua
 * tells the allocator each block's size, so blocks need no header); larger blocks go to
 * malloc. Freed small blocks are reused for later blocks of the same size class and return to
 * the system only when the state closes. The Lua state is only used by the loop thread, so
 * the pool takes no locks.
 *
 * Under AddressSanitizer, or with SLUICE_ALLOC=system in the environment (scripts/valgrind.sh
 * sets it) the state uses plain realloc/free instead, so those tools see every Lua block. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

#define GRANULE 16
#define SMALL_MAX 512
#define NCLASSES (SMALL_MAX / GRANULE)
#define SLAB_BYTES (64 * 1024)

typedef struct free_block {
  struct free_block *next;
} free_block;

typedef struct slab {
  struct slab *next;
  char pad[GRANULE - sizeof(struct slab *)]; /* keeps the blocks after it 16-byte aligned */
} slab;

typedef struct sl_pool {
  free_block *free[NCLASSES];
  char *bump, *bump_end; /* the unused tail of the newest slab */
  slab *slabs;
} sl_pool;

static inline int is_small(size_t n) { return n <= SMALL_MAX; }
static inline size_t class_of(size_t n) { return (n - 1) / GRANULE; }

/* Returns a block of class c, or NULL when the system is out of memory. */
static void *take(sl_pool *p, size_t c) {
  free_block *b = p->free[c];
  if (b) {
    p->free[c] = b->next;
    return b;
  }
  size_t size = (c + 1) * GRANULE;
  if ((size_t)(p->bump_end - p->bump) < size) {
    /* The rest of the old slab's tail becomes free blocks of the largest classes it fits. */
    while (p->bump_end - p->bump >= GRANULE) {
      size_t left = (size_t)(p->bump_end - p->bump);
      size_t lc = (left < SMALL_MAX ? left : SMALL_MAX) / GRANULE - 1; /* the largest that fits */
      free_block *f = (free_block *)p->bump;
      f->next = p->free[lc];
      p->free[lc] = f;
      p->bump += (lc + 1) * GRANULE;
    }
    slab *s = malloc(SLAB_BYTES);
    if (!s) return NULL;
    s->next = p->slabs;
    p->slabs = s;
    p->bump = (char *)(s + 1);
    p->bump_end = (char *)s + SLAB_BYTES;
  }
  void *r = p->bump;
  p->bump += size;
  return r;
}

static void give_back(sl_pool *p, void *ptr, size_t size) {
  if (!is_small(size)) {
    free(ptr);
    return;
  }
  free_block *b = ptr;
  size_t c = class_of(size);
  b->next = p->free[c];
  p->free[c] = b;
}

/* The lua_Alloc of the pooled state (see the manual's lua_Alloc for the contract). */
static void *pool_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  sl_pool *p = ud;
  if (!ptr) osize = 0; /* then osize only tells the kind of object */
  if (nsize == 0) {
    if (ptr) give_back(p, ptr, osize);
    return NULL;
  }
  if (ptr) {
    if (is_small(osize) && is_small(nsize) && class_of(osize) == class_of(nsize)) return ptr;
    if (!is_small(osize) && !is_small(nsize)) return realloc(ptr, nsize);
  }
  void *block = is_small(nsize) ? take(p, class_of(nsize)) : malloc(nsize);
  if (!block) {
    /* Lua assumes a shrink cannot fail: keep the bigger block. Freed later with the smaller
     * size, a small block joins a smaller class (it is big enough for it), and a malloc'd
     * one stays in the pool until the state closes. */
    return (ptr && nsize <= osize) ? ptr : NULL;
  }
  if (ptr) {
    memcpy(block, ptr, osize < nsize ? osize : nsize);
    give_back(p, ptr, osize);
  }
  return block;
}

static void *system_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}

/* The panic and warning functions luaL_newstate would install (lauxlib keeps them static). */
static int on_panic(lua_State *L) {
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error object is not a string";
  fprintf(stderr, "sluice: PANIC: unprotected error in call to Lua API (%s)\n", msg);
  fflush(stderr);
  return 0; /* then Lua aborts */
}

static void warn_off(void *ud, const char *msg, int tocont);
static void warn_on(void *ud, const char *msg, int tocont);

static void warn_more(void *ud, const char *msg, int tocont) {
  lua_State *L = ud;
  fputs(msg, stderr);
  if (tocont) {
    lua_setwarnf(L, warn_more, L);
  } else {
    fputs("\n", stderr);
    lua_setwarnf(L, warn_on, L);
  }
}

/* Returns 1 when msg was a control message ("@on", "@off"), which it then applies. */
static int warn_control(lua_State *L, const char *msg, int tocont) {
  if (tocont || *msg != '@') return 0;
  if (strcmp(msg, "@off") == 0) lua_setwarnf(L, warn_off, L);
  else if (strcmp(msg, "@on") == 0) lua_setwarnf(L, warn_on, L);
  return 1;
}

static void warn_off(void *ud, const char *msg, int tocont) { warn_control(ud, msg, tocont); }

static void warn_on(void *ud, const char *msg, int tocont) {
  if (warn_control(ud, msg, tocont)) return;
  fputs("Lua warning: ", stderr);
  warn_more(ud, msg, tocont);
}

static int want_system_allocator(void) {
#if defined(__SANITIZE_ADDRESS__)
  return 1;
#else
  const char *v = getenv("SLUICE_ALLOC");
  return v && strcmp(v, "system") == 0;
#endif
}

lua_State *sl_state_new(void) {
  sl_pool *p = NULL;
  lua_State *L;
  if (want_system_allocator()) {
    L = lua_newstate(system_alloc, NULL);
  } else {
    p = calloc(1, sizeof *p);
    if (!p) return NULL;
    L = lua_newstate(pool_alloc, p);
  }
  if (!L) {
    free(p);
    return NULL;
  }
  lua_atpanic(L, on_panic);
  lua_setwarnf(L, warn_off, L);
  return L;
}

void sl_state_close(lua_State *L) {
  void *ud = NULL;
  lua_Alloc f = lua_getallocf(L, &ud);
  lua_close(L);
  if (f != pool_alloc) return;
  sl_pool *p = ud;
  while (p->slabs) {
    slab *s = p->slabs;
    p->slabs = s->next;
    free(s);
  }
  free(p);
}
