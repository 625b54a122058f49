/* fs.c: writing whole files on the engine's worker threads (Lua module sluice.core.fs).
 *
 *   fs.write(path, bytes, cb) -> job   bytes: a string or a sluice.blob; creates the missing
 *                                      parent folders, writes path.<pid>.tmp and renames it
 *                                      over path (a reader never sees half a file);
 *                                      cb(true) or cb(nil, message, code)
 *   fs.extend(path, keep, bytes, cb) -> job
 *                                      the same, the new file being the first `keep` bytes of
 *                                      the file at path, then bytes: a file that grows (a JSON
 *                                      array before its closing bracket, subtitles) without
 *                                      its writer holding what it wrote before; path shorter
 *                                      than keep: cb(nil, message, "EINVAL")
 *
 * Reading a file on the pool is httpd.read_file(root, relpath, cb) (core/httpd.c). The
 * broker's remote stages use both to move the files a unit refers to between machines.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
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
  int64_t keep; /* fs.extend: bytes of the old file that come first; -1 for fs.write */
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
  w->code =
      err == ENOSPC ? "ENOSPC" : (err == EACCES ? "EACCES" : (err == EINVAL ? "EINVAL" : "EIO"));
  snprintf(w->msg, sizeof w->msg, "%s: %s", what, strerror(err));
}

/* Writes len bytes of buf to fd. Returns 0 or an errno. */
static int write_all(int fd, const char *buf, size_t len) {
  size_t off = 0;
  while (off < len) {
    ssize_t n = write(fd, buf + off, len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    off += (size_t)n;
  }
  return 0;
}

/* Copies the first keep bytes of the file at path to fd. Returns 0, an errno, or -1 when the
 * file is shorter than keep. */
static int copy_head(const char *path, int64_t keep, int fd) {
  int src = open(path, O_RDONLY | O_CLOEXEC);
  if (src < 0) return errno;
  char buf[65536];
  int err = 0;
  while (keep > 0) {
    ssize_t n = read(src, buf, keep < (int64_t)sizeof buf ? (size_t)keep : sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = errno;
      break;
    }
    if (n == 0) {
      err = -1;
      break;
    }
    if ((err = write_all(fd, buf, (size_t)n)) != 0) break;
    keep -= n;
  }
  close(src);
  return err;
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
  if (w->keep > 0 && (err = copy_head(w->path, w->keep, fd)) != 0) {
    close(fd);
    unlink(tmp);
    if (err == -1) {
      w->code = "EINVAL";
      snprintf(w->msg, sizeof w->msg, "shorter than the %lld bytes to keep", (long long)w->keep);
      return;
    }
    return fail(w, err, "cannot read it");
  }
  if ((err = write_all(fd, (const char *)w->data->data, w->data->len)) != 0) {
    close(fd);
    unlink(tmp);
    return fail(w, err, "cannot write it");
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

/* Submits the write of the bytes at stack index `bytes` to path (arg 1), keeping `keep` bytes
 * of the old file first (-1: none), calling the function at index bytes + 1. */
static int submit_write(lua_State *L, int64_t keep, int bytes) {
  size_t plen;
  const char *path = luaL_checklstring(L, 1, &plen);
  luaL_argcheck(L, strlen(path) == plen && plen > 0, 1, "empty path or NUL byte in it");
  luaL_argexpected(L, lua_type(L, bytes) == LUA_TSTRING || sl_blob_to(L, bytes), bytes,
                   "string or blob");
  luaL_checktype(L, bytes + 1, LUA_TFUNCTION);
  write_job *w = calloc(1, sizeof *w);
  if (!w) return luaL_error(L, "out of memory");
  w->path = strdup(path);
  if (!w->path) {
    free(w);
    return luaL_error(L, "out of memory");
  }
  w->keep = keep;
  w->data = sl_blob_from_arg(L, bytes);
  return sl_job_submit(L, bytes + 1, &write_class, w);
}

/* fs.write(path, bytes, cb) -> job */
static int l_write(lua_State *L) { return submit_write(L, -1, 2); }

/* fs.extend(path, keep, bytes, cb) -> job */
static int l_extend(lua_State *L) {
  lua_Integer keep = luaL_checkinteger(L, 2);
  luaL_argcheck(L, keep >= 0, 2, "a byte count >= 0");
  return submit_write(L, (int64_t)keep, 3);
}

int luaopen_sluice_fs(lua_State *L) {
  static const luaL_Reg funcs[] = {{"write", l_write}, {"extend", l_extend}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
