/* blob.h: reference-counted immutable byte buffers (see blob.c). */
#ifndef SLUICE_BLOB_H
#define SLUICE_BLOB_H

#include <stdatomic.h>

#include "sluice.h"

typedef struct sl_blob {
  atomic_int refs;
  size_t len;
  unsigned char data[];
} sl_blob;

/* Allocates a blob of len bytes with one reference. Returns NULL when out of memory. */
sl_blob *sl_blob_new(size_t len);

/* Adds a reference and returns b. Safe on any thread. */
sl_blob *sl_blob_retain(sl_blob *b);

/* Drops a reference; the last one frees the blob. Safe on any thread; NULL is ignored. */
void sl_blob_release(sl_blob *b);

/* Pushes a Lua blob; takes ownership of one reference of b. Cannot fail except for Lua's
 * own out-of-memory error. */
void sl_blob_push(lua_State *L, sl_blob *b);

/* Returns the blob at idx (borrowed: valid while the Lua value is) or raises. */
sl_blob *sl_blob_check(lua_State *L, int idx);

/* Returns the blob at idx or NULL when it is not a blob (or is closed). Borrowed. */
sl_blob *sl_blob_to(lua_State *L, int idx);

/* Accepts a string or a blob at idx and returns a new reference to a blob holding its bytes
 * (a string is copied once). Raises for other types. The caller owns the reference. */
sl_blob *sl_blob_from_arg(lua_State *L, int idx);

#endif
