/* fs.c: writing whole files on the engine's worker threads (Lua module sluice.core.fs).
 *
 *   fs.write(path, bytes, cb) -> job   bytes: a string or a sluice.blob; creates the missing
 *                                      parent folders, writes path.<pid>.tmp and renames it
 *                                      over path (a reader never sees half a file);
 *                                      cb(true) or cb(nil, message, code)
 *
 * Reading a file on the pool is httpd.read_file(root, relpath, cb) (core/httpd.c). The
 * broker's remote stages use both to move the files a unit refers to between machines.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blob.h"
#include "sluice.h"

typedef struct write_job {
  char *path;
  sl_blob *data;
  const char *code;
  char msg[256];
} write_job;

static void write_job_free(void *d) {
  write_job *w = d;
  free(w->path);
  sl_blob_release(w->data);
  free(w);
}

/* mkdir -p of path's parent folder. Returns 0 or an errno. */
static int make_parents(const char *path) {
  char dir[PATH_MAX];
  size_t n = strlen(path);
  if (n >= sizeof dir) return ENAMETOOLONG;
  memcpy(dir, path, n + 1);
  char *slash = strrchr(dir, '/');
  if (!slash || slash == dir) return 0;
  *slash = '\0';
  for (char *p = dir + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) return errno;
    *p = '/';
  }
  if (mkdir(dir, 0777) != 0 && errno != EEXIST) return errno;
  return 0;
}

static void fail(write_job *w, int err, const char *what) {
  w->code = err == ENOSPC ? "ENOSPC" : (err == EACCES ? "EACCES" : "EIO");
  snprintf(w->msg, sizeof w->msg, "%s: %s", what, strerror(err));
}

static void write_job_run(sl_job *job, void *d) {
  (void)job;
  write_job *w = d;
  int err = make_parents(w->path);
  if (err) return fail(w, err, "cannot create its folder");
  char tmp[PATH_MAX];
  if (snprintf(tmp, sizeof tmp, "%s.%ld.tmp", w->path, (long)getpid()) >= (int)sizeof tmp)
    return fail(w, ENAMETOOLONG, "path");
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) return fail(w, errno, "cannot create it");
  size_t off = 0, len = w->data->len;
  while (off < len) {
    ssize_t n = write(fd, w->data->data + off, len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = errno;
      close(fd);
      unlink(tmp);
      return fail(w, err, "cannot write it");
    }
    off += (size_t)n;
  }
  if (close(fd) != 0) {
    err = errno;
    unlink(tmp);
    return fail(w, err, "cannot write it");
  }
  if (rename(tmp, w->path) != 0) {
    err = errno;
    unlink(tmp);
    return fail(w, err, "cannot rename it into place");
  }
}

static int write_job_finish(lua_State *L, void *d) {
  write_job *w = d;
  if (w->code) return sl_push_fail(L, w->code, "%s: %s", w->path, w->msg);
  lua_pushboolean(L, 1);
  return 1;
}

static const sl_job_class write_class = {"fs.write", write_job_run, write_job_finish,
                                         write_job_free};

/* fs.write(path, bytes, cb) -> job */
static int l_write(lua_State *L) {
  size_t plen;
  const char *path = luaL_checklstring(L, 1, &plen);
  luaL_argcheck(L, strlen(path) == plen && plen > 0, 1, "empty path or NUL byte in it");
  luaL_argexpected(L, lua_type(L, 2) == LUA_TSTRING || sl_blob_to(L, 2), 2, "string or blob");
  luaL_checktype(L, 3, LUA_TFUNCTION);
  write_job *w = calloc(1, sizeof *w);
  if (!w) return luaL_error(L, "out of memory");
  w->path = strdup(path);
  if (!w->path) {
    free(w);
    return luaL_error(L, "out of memory");
  }
  w->data = sl_blob_from_arg(L, 2);
  return sl_job_submit(L, 3, &write_class, w);
}

int luaopen_sluice_fs(lua_State *L) {
  static const luaL_Reg funcs[] = {{"write", l_write}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
