/* buf.h: a growable byte buffer for C modules that build text (response heads, canonical
 * encodings). Always NUL-terminated after the bytes added; an allocation failure sets oom
 * and later adds do nothing, so callers check once at the end. Free b.p when done. */
#ifndef SLUICE_BUF_H
#define SLUICE_BUF_H

#include <stdlib.h>
#include <string.h>

typedef struct sl_buf {
  char *p;
  size_t len, cap;
  int oom;
} sl_buf;

static inline void sl_buf_add(sl_buf *b, const void *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static inline void sl_buf_str(sl_buf *b, const char *s) { sl_buf_add(b, s, strlen(s)); }

#endif
