/* media.c: Lua module sluice.core.media: media work as pool jobs (see av.h for the decoding
 * itself, phash.h for the hashes). No FFmpeg types here.
 *
 *   media.probe(url, cb) -> job                cb(info) | cb(nil, msg)
 *   media.audio_reader(url, opts) -> reader    reader:next(cb) -> job; cb(chunk) | cb(nil) at
 *                                              the end | cb(nil, msg)
 *   media.frame_reader(url, opts) -> reader    reader:next(cb) -> job; cb(frame) | cb(nil) |
 *                                              cb(nil, msg)
 *   media.extract_audio(url, out_wav, rate, channels, cb) -> job   cb(samples) | cb(nil, msg)
 *   media.image_hash(url, cb) -> job           cb(dhash, phash) of the first frame
 *
 * A reader owns its decoder state. reader:next() hands that state to one pool job, which
 * decodes just enough for the next chunk or frame (and writes the WAV/JPEG file there), so
 * consecutive jobs may run on different worker threads but never two at once. The state is
 * freed by the reader's __gc/close, or by the job's free function if a job still holds it.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "av.h"
#include "blob.h"
#include "phash.h"
#include "sluice.h"

#define AUDIO_MT "sluice.media.audio_reader"
#define FRAMES_MT "sluice.media.frame_reader"

static int job_cancelled_cb(void *arg) { return sl_job_cancelled(arg); }

/* Media jobs run a little below the loop thread's priority (decode, scale and encode are
 * throughput work; the loop's timers and I/O are latency work). Returns the nice value to
 * restore, or INT_MIN when it was not changed. */
#define MEDIA_JOB_NICE 5
static int lower_priority(void) {
  pid_t tid = (pid_t)syscall(SYS_gettid);
  errno = 0;
  int before = getpriority(PRIO_PROCESS, (id_t)tid);
  if (errno != 0 || setpriority(PRIO_PROCESS, (id_t)tid, before + MEDIA_JOB_NICE) != 0)
    return INT_MIN;
  return before;
}

/* Gives the worker thread its priority back. Without the right to raise a priority again
 * (RLIMIT_NICE) the thread keeps the lower one, which only ever favours the loop. */
static void restore_priority(int before) {
  if (before != INT_MIN) (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), before);
}

/* Creates dir and its parents (like mkdir -p). Returns 0 or -1 with errno set. */
static int make_dirs(const char *dir) {
  char path[4096];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  memcpy(path, dir, n + 1);
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(path, 0777) < 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  if (mkdir(path, 0777) < 0 && errno != EEXIST) return -1;
  return 0;
}

static int write_file(const char *path, const void *data, size_t len, char *err, size_t errlen) {
  FILE *f = fopen(path, "wb");
  if (!f) {
    snprintf(err, errlen, "%.400s: %s", path, strerror(errno));
    return -1;
  }
  size_t w = fwrite(data, 1, len, f);
  int rc = fclose(f);
  if (w != len || rc != 0) {
    snprintf(err, errlen, "%.400s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

static void put_le32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static void put_le16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

/* A 44-byte canonical WAV header for 16-bit PCM. */
static void wav_header(uint8_t h[44], int rate, int channels, uint32_t data_bytes) {
  memcpy(h, "RIFF", 4);
  put_le32(h + 4, 36 + data_bytes);
  memcpy(h + 8, "WAVEfmt ", 8);
  put_le32(h + 16, 16);
  put_le16(h + 20, 1);
  put_le16(h + 22, (uint16_t)channels);
  put_le32(h + 24, (uint32_t)rate);
  put_le32(h + 28, (uint32_t)(rate * channels * 2));
  put_le16(h + 32, (uint16_t)(channels * 2));
  put_le16(h + 34, 16);
  memcpy(h + 36, "data", 4);
  put_le32(h + 40, data_bytes);
}

static int write_wav(const char *path, const int16_t *pcm, long frames, int rate, int channels,
                     char *err, size_t errlen) {
  FILE *f = fopen(path, "wb");
  if (!f) {
    snprintf(err, errlen, "%.400s: %s", path, strerror(errno));
    return -1;
  }
  uint8_t h[44];
  size_t bytes = (size_t)frames * (size_t)channels * 2;
  wav_header(h, rate, channels, (uint32_t)bytes);
  size_t w = fwrite(h, 1, 44, f);
  w += fwrite(pcm, 1, bytes, f); /* little-endian host assumed (x86-64, arm64) */
  int rc = fclose(f);
  if (w != 44 + bytes || rc != 0) {
    snprintf(err, errlen, "%.400s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

/* An option that must be a string. The string stays alive after the pop because the options
 * table holds it; a number is refused rather than converted (luaL_checkstring would convert it
 * in place on the stack, and the converted string, referenced by nothing after the pop, could
 * be collected before the caller copies it: ASan saw that use after free). */
static const char *opt_string(lua_State *L, int idx, const char *key, const char *def) {
  lua_getfield(L, idx, key);
  const char *s = def;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "option '%s' must be a string (got %s)", key, luaL_typename(L, -1));
    s = lua_tostring(L, -1);
  }
  lua_pop(L, 1);
  return s;
}

static double opt_number(lua_State *L, int idx, const char *key, double def) {
  lua_getfield(L, idx, key);
  double v = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static int opt_bool(lua_State *L, int idx, const char *key, int def) {
  lua_getfield(L, idx, key);
  int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static char *dup_or_raise(lua_State *L, const char *s) {
  char *d = strdup(s ? s : "");
  if (!d) luaL_error(L, "out of memory");
  return d;
}

static void push_hash(lua_State *L, uint64_t h) { lua_pushinteger(L, (lua_Integer)h); }

/* ---- probe ------------------------------------------------------------------------------ */

typedef struct probe_job {
  char *url;
  int ok;
  sl_media_info info;
  char err[SL_AV_ERRLEN];
} probe_job;

static void probe_run(sl_job *job, void *data) {
  probe_job *p = data;
  sl_av_cancel c = {.cancelled = job_cancelled_cb, .arg = job};
  p->ok = sl_av_probe(p->url, &p->info, &c, p->err, sizeof p->err) == 0;
}

static int probe_finish(lua_State *L, void *data) {
  probe_job *p = data;
  if (!p->ok) return sl_push_fail(L, "EMEDIA", "%s", p->err);
  lua_createtable(L, 0, 4);
  if (p->info.duration >= 0) {
    lua_pushnumber(L, p->info.duration);
    lua_setfield(L, -2, "duration");
  }
  lua_pushstring(L, p->info.container);
  lua_setfield(L, -2, "container");
  if (p->info.bit_rate > 0) {
    lua_pushinteger(L, p->info.bit_rate);
    lua_setfield(L, -2, "bit_rate");
  }
  lua_createtable(L, p->info.nstreams, 0);
  for (int i = 0; i < p->info.nstreams; i++) {
    const sl_media_stream *s = &p->info.streams[i];
    lua_createtable(L, 0, 6);
    lua_pushstring(L, s->type);
    lua_setfield(L, -2, "type");
    lua_pushstring(L, s->codec);
    lua_setfield(L, -2, "codec");
    if (s->duration >= 0) {
      lua_pushnumber(L, s->duration);
      lua_setfield(L, -2, "duration");
    }
    if (!strcmp(s->type, "video")) {
      lua_pushinteger(L, s->width);
      lua_setfield(L, -2, "width");
      lua_pushinteger(L, s->height);
      lua_setfield(L, -2, "height");
      if (s->fps > 0) {
        lua_pushnumber(L, s->fps);
        lua_setfield(L, -2, "fps");
      }
    } else if (!strcmp(s->type, "audio")) {
      lua_pushinteger(L, s->sample_rate);
      lua_setfield(L, -2, "sample_rate");
      lua_pushinteger(L, s->channels);
      lua_setfield(L, -2, "channels");
    }
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "streams");
  return 1;
}

static void probe_free(void *data) {
  probe_job *p = data;
  sl_media_info_clear(&p->info);
  free(p->url);
  free(p);
}

static const sl_job_class probe_class = {"media.probe", probe_run, probe_finish, probe_free};

/* media.set_open_timeout(seconds): the cap on opening any input from now on (av.h);
 * 0 or less restores the default. Returns the cap in force. */
/* media.inputs() -> opened, open, peak: inputs (demuxers) opened since the start of the
 * process, open now, and the most open at once (see sl_av_inputs). */
static int l_inputs(lua_State *L) {
  long opened, open, peak;
  sl_av_inputs(&opened, &open, &peak);
  lua_pushinteger(L, opened);
  lua_pushinteger(L, open);
  lua_pushinteger(L, peak);
  return 3;
}

static int l_set_open_timeout(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) sl_av_set_open_timeout(luaL_checknumber(L, 1));
  lua_pushnumber(L, sl_av_open_timeout());
  return 1;
}

static int l_probe(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  probe_job *p = calloc(1, sizeof *p);
  if (!p || !(p->url = strdup(url))) {
    free(p);
    return luaL_error(L, "out of memory");
  }
  return sl_job_submit(L, 2, &probe_class, p);
}

/* ---- audio chunks ------------------------------------------------------------------------ */

typedef struct audio_state {
  /* configuration */
  char *url, *dir, *prefix;
  int rate, channels;
  long chunk_len; /* samples per chunk (target) */
  long grow_len;  /* first=: the next chunk's length while that is below chunk_len (the
                     first chunk is short, each next one twice as long); 0: chunk_len */
  long overlap;   /* samples shared with the previous chunk */
  long window;    /* split=silence: search window around each boundary (samples) */
  int silence;    /* cut at the quietest point near each boundary */
  long pause;     /* split=silence: a cut with this many quiet samples around it (a pause)
                     needs no overlap: the next chunk starts there; 0: always overlap */
  int to_blob;    /* hold PCM in blobs instead of writing WAV files */
  /* decoding state, touched by one job at a time */
  sl_audio_reader *reader;
  int16_t *pcm; /* samples [pcm_start, pcm_start + pcm_len) of the output stream */
  long pcm_start, pcm_len, pcm_cap;
  long next_start;  /* where the next chunk begins */
  long emitted_end; /* where the last chunk ended */
  int eof;
  long seq;
  char failed[SL_AV_ERRLEN]; /* sticky error */
  /* ownership (loop thread only) */
  int busy, closed;
} audio_state;

typedef struct audio_ud {
  audio_state *s; /* NULL once closed */
} audio_ud;

static void audio_state_free(audio_state *s) {
  sl_audio_close(s->reader);
  free(s->pcm);
  free(s->url);
  free(s->dir);
  free(s->prefix);
  free(s);
}

typedef struct audio_job {
  audio_state *s;
  int status; /* 1 chunk, 0 end, -1 error */
  long seq, start, len;
  char path[4096];
  sl_blob *blob;
  char err[SL_AV_ERRLEN];
  char warning[SL_AV_ERRLEN];
  int delivered; /* audio_finish handed the chunk to Lua (who then owns its file) */
} audio_job;

/* Reads until the buffer holds samples up to absolute position upto, or the input ends. */
static int audio_fill_to(audio_state *s, long upto, char *err, size_t errlen) {
  while (!s->eof && s->pcm_start + s->pcm_len < upto) {
    long want = upto - (s->pcm_start + s->pcm_len);
    if (want < 4096) want = 4096;
    if (s->pcm_len + want > s->pcm_cap) {
      long cap = s->pcm_cap ? s->pcm_cap : 16384;
      while (cap < s->pcm_len + want) cap *= 2;
      int16_t *np = realloc(s->pcm, (size_t)cap * (size_t)s->channels * sizeof *np);
      if (!np) {
        snprintf(err, errlen, "%s: out of memory", s->url);
        return -1;
      }
      s->pcm = np;
      s->pcm_cap = cap;
    }
    long got = sl_audio_read(s->reader, s->pcm + s->pcm_len * s->channels, want, err, errlen);
    if (got < 0) return -1;
    s->pcm_len += got;
    if (got < want) s->eof = 1;
  }
  return 0;
}

/* Where to cut in [from, to), the chunk that the cut ends starting at `start`: the middle of
 * the longest pause there (a run of 20 ms windows, in 10 ms steps, each at least 20 dB below
 * the mean power of [start, to)) when it lasts s->pause samples or more, and *in_pause is set;
 * else the centre of the quietest 20 ms. A cut in a pause splits no word, so the chunk after
 * can start at the cut without sharing any audio. */
static long cut_point(const audio_state *s, long start, long from, long to, int *in_pause) {
  long win = s->rate / 50, step = s->rate / 100;
  if (win < 1) win = 1;
  if (step < 1) step = 1;
  int ch = s->channels;
  double limit = -1; /* no window is a pause when pauses are not looked for (s->pause 0) */
  if (s->pause > 0) {
    double total = 0;
    const int16_t *p0 = s->pcm + (start - s->pcm_start) * ch;
    for (long i = 0; i < (to - start) * ch; i++) total += (double)p0[i] * p0[i];
    limit = total / (double)((to - start) * ch) * 0.01 * (double)(win * ch);
  }
  long best = (from + to) / 2, run_from = -1, best_run = 0, best_run_mid = 0;
  double best_e = INFINITY;
  for (long a = from; a + win <= to; a += step) {
    double e = 0;
    const int16_t *p = s->pcm + (a - s->pcm_start) * ch;
    for (long i = 0; i < win * ch; i++) e += (double)p[i] * p[i];
    if (e < best_e) {
      best_e = e;
      best = a + win / 2;
    }
    if (e <= limit) {
      if (run_from < 0) run_from = a;
      long len = a + win - run_from;
      if (len > best_run) {
        best_run = len;
        best_run_mid = run_from + len / 2;
      }
    } else {
      run_from = -1;
    }
  }
  *in_pause = s->pause > 0 && best_run >= s->pause;
  return *in_pause ? best_run_mid : best;
}

static void audio_run_inner(sl_job *job, void *data) {
  audio_job *j = data;
  audio_state *s = j->s;
  sl_av_cancel c = {.cancelled = job_cancelled_cb, .arg = job};
  if (s->failed[0]) {
    snprintf(j->err, sizeof j->err, "%s", s->failed);
    j->status = -1;
    return;
  }
  if (!s->reader) {
    s->reader = sl_audio_open(s->url, s->rate, s->channels, &c, j->err, sizeof j->err);
    if (!s->reader) goto fail;
  }
  sl_audio_set_cancel(s->reader, &c);
  long start = s->next_start;
  long target = start + (s->grow_len > 0 ? s->grow_len : s->chunk_len);
  long need = s->silence ? target + s->window / 2 : target;
  if (audio_fill_to(s, need, j->err, sizeof j->err) < 0) goto fail;
  long avail = s->pcm_start + s->pcm_len;
  long end = target < avail ? target : avail;
  int pause = 0;
  /* at the end of the input, a cut that would leave less than half a window goes to the end */
  if (s->silence && s->eof && avail > target && avail - target <= s->window / 2) {
    end = avail;
  } else if (s->silence && avail > target) {
    long lo = target - s->window / 2, hi = target + s->window / 2;
    if (lo < start + s->overlap + 1) lo = start + s->overlap + 1;
    if (hi > avail) hi = avail;
    if (hi > lo) end = cut_point(s, start, lo, hi, &pause);
  }
  if (end <= s->emitted_end || end <= start) {
    j->status = 0; /* nothing new: the input is exhausted */
    const char *w = sl_audio_warning(s->reader);
    if (w) snprintf(j->warning, sizeof j->warning, "%s", w);
    return;
  }
  long len = end - start;
  const int16_t *pcm = s->pcm + (start - s->pcm_start) * s->channels;
  j->seq = ++s->seq;
  j->start = start;
  j->len = len;
  if (s->to_blob) {
    size_t bytes = (size_t)len * (size_t)s->channels * sizeof(int16_t);
    j->blob = sl_blob_new(bytes);
    if (!j->blob) {
      snprintf(j->err, sizeof j->err, "%s: out of memory", s->url);
      goto fail;
    }
    memcpy(j->blob->data, pcm, bytes);
  } else {
    snprintf(j->path, sizeof j->path, "%s/%s_%05ld.wav", s->dir, s->prefix, j->seq);
    if (make_dirs(s->dir) < 0) {
      snprintf(j->err, sizeof j->err, "%s: %s", s->dir, strerror(errno));
      goto fail;
    }
    if (write_wav(j->path, pcm, len, s->rate, s->channels, j->err, sizeof j->err) < 0) goto fail;
  }
  s->emitted_end = end;
  if (s->grow_len > 0) {
    s->grow_len *= 2;
    if (s->grow_len >= s->chunk_len) s->grow_len = 0;
  }
  s->next_start = end - (pause ? 0 : s->overlap);
  if (s->next_start < start + 1) s->next_start = start + 1;
  /* drop samples no later chunk needs */
  long drop = s->next_start - s->pcm_start;
  if (drop > 0) {
    memmove(s->pcm, s->pcm + drop * s->channels,
            (size_t)(s->pcm_len - drop) * (size_t)s->channels * sizeof *s->pcm);
    s->pcm_len -= drop;
    s->pcm_start += drop;
  }
  j->status = 1;
  return;
fail:
  j->status = -1;
  /* a cancelled or failed decoder is not resumed */
  snprintf(s->failed, sizeof s->failed, "%s", j->err);
}

static void audio_run(sl_job *job, void *data) {
  int before = lower_priority();
  audio_run_inner(job, data);
  audio_state *s = ((audio_job *)data)->s;
  if (s->reader) sl_audio_set_cancel(s->reader, NULL);
  restore_priority(before);
}

/* The end of a stream for Lua: nil, plus the warning when the input broke off early. */
static int push_end(lua_State *L, const char *warning) {
  lua_pushnil(L);
  if (!warning[0]) return 1;
  lua_pushstring(L, warning);
  return 2;
}

static int audio_finish(lua_State *L, void *data) {
  audio_job *j = data;
  j->delivered = 1;
  audio_state *s = j->s;
  if (j->status < 0) return sl_push_fail(L, "EMEDIA", "%s", j->err);
  if (j->status == 0) return push_end(L, j->warning);
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, j->seq);
  lua_setfield(L, -2, "seq");
  lua_pushnumber(L, (double)j->start / s->rate);
  lua_setfield(L, -2, "t0");
  lua_pushnumber(L, (double)(j->start + j->len) / s->rate);
  lua_setfield(L, -2, "t1");
  lua_pushinteger(L, j->start);
  lua_setfield(L, -2, "start");
  lua_pushinteger(L, j->len);
  lua_setfield(L, -2, "samples");
  lua_pushinteger(L, s->rate);
  lua_setfield(L, -2, "rate");
  lua_pushinteger(L, s->channels);
  lua_setfield(L, -2, "channels");
  if (j->blob) {
    sl_blob_push(L, j->blob);
    j->blob = NULL;
    lua_setfield(L, -2, "blob");
  } else {
    lua_pushstring(L, j->path);
    lua_setfield(L, -2, "path");
  }
  return 1;
}

static void audio_job_free(void *data) {
  audio_job *j = data;
  /* A cancelled job's chunk never reached anyone: its file goes with it. */
  if (!j->delivered && j->status == 1 && j->path[0]) unlink(j->path);
  sl_blob_release(j->blob);
  j->s->busy = 0;
  if (j->s->closed) audio_state_free(j->s);
  free(j);
}

static const sl_job_class audio_class = {"media.audio_chunks", audio_run, audio_finish,
                                         audio_job_free};

/* media.audio_reader(url, {seconds=, overlap=, rate=, channels=, output="wav"|"blob", dir=,
 * prefix=, split="silence", window=, pause=0.3, first=}) -> reader. Opening happens in the
 * first job. first = S: the first chunk is S seconds, each next one twice as long until
 * `seconds`. pause (split="silence"): seconds of quiet around a cut for the next chunk to
 * start at the cut instead of `overlap` before it (0: always overlap). */
static int l_audio_reader(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  double seconds = opt_number(L, 2, "seconds", 30);
  double overlap = opt_number(L, 2, "overlap", 0);
  int rate = (int)opt_number(L, 2, "rate", 16000);
  int channels = (int)opt_number(L, 2, "channels", 1);
  const char *output = opt_string(L, 2, "output", "wav");
  const char *split = opt_string(L, 2, "split", NULL);
  luaL_argcheck(L, seconds > 0, 2, "seconds must be positive");
  double first = opt_number(L, 2, "first", 0);
  luaL_argcheck(L, first == 0 || (first > overlap && first <= seconds), 2,
                "first must be in (overlap, seconds]");
  luaL_argcheck(L, overlap >= 0 && overlap < seconds, 2, "overlap must be in [0, seconds)");
  luaL_argcheck(L, rate >= 1000 && rate <= 384000, 2, "rate must be 1000..384000");
  luaL_argcheck(L, channels >= 1 && channels <= 8, 2, "channels must be 1..8");
  luaL_argcheck(L, !strcmp(output, "wav") || !strcmp(output, "blob"), 2,
                "output must be \"wav\" or \"blob\"");
  luaL_argcheck(L, !split || !strcmp(split, "silence"), 2, "split must be \"silence\"");
  int to_blob = !strcmp(output, "blob");
  const char *dir = opt_string(L, 2, "dir", NULL);
  if (!to_blob && !dir) luaL_argerror(L, 2, "dir is required for output=\"wav\"");
  const char *prefix = opt_string(L, 2, "prefix", "chunk");
  audio_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->s = NULL;
  luaL_setmetatable(L, AUDIO_MT);
  audio_state *s = calloc(1, sizeof *s);
  if (!s) return luaL_error(L, "out of memory");
  u->s = s;
  s->url = dup_or_raise(L, url);
  s->dir = dup_or_raise(L, dir ? dir : "");
  s->prefix = dup_or_raise(L, prefix);
  s->rate = rate;
  s->channels = channels;
  s->chunk_len = lround(seconds * rate);
  s->overlap = lround(overlap * rate);
  if (s->chunk_len < 1) s->chunk_len = 1;
  if (s->overlap >= s->chunk_len) s->overlap = s->chunk_len - 1;
  s->grow_len = first > 0 ? lround(first * rate) : 0;
  if (s->grow_len >= s->chunk_len || s->grow_len <= s->overlap) s->grow_len = 0;
  s->silence = split != NULL;
  double pause = opt_number(L, 2, "pause", 0.3);
  luaL_argcheck(L, pause >= 0, 2, "pause must be >= 0");
  s->pause = s->silence ? lround(pause * rate) : 0;
  double window = opt_number(L, 2, "window", fmin(2.0, seconds / 4));
  luaL_argcheck(L, window > 0, 2, "window must be positive");
  s->window = lround(window * rate);
  /* the cut must stay after the overlap of the chunk it ends */
  long max_window = 2 * (s->chunk_len - s->overlap - 1);
  if (s->window > max_window) s->window = max_window > 0 ? max_window : 0;
  s->to_blob = to_blob;
  return 1;
}

static audio_ud *check_audio(lua_State *L) {
  audio_ud *u = luaL_checkudata(L, 1, AUDIO_MT);
  sl_check_open(L, u->s, "audio reader");
  return u;
}

static int audio_next(lua_State *L) {
  audio_ud *u = check_audio(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (u->s->busy) return luaL_error(L, "audio reader: next() called while a read is running");
  audio_job *j = calloc(1, sizeof *j);
  if (!j) return luaL_error(L, "out of memory");
  j->s = u->s;
  u->s->busy = 1;
  return sl_job_submit_cpu(L, 2, &audio_class, j);
}

static int audio_close(lua_State *L) {
  audio_ud *u = luaL_checkudata(L, 1, AUDIO_MT);
  audio_state *s = u->s;
  u->s = NULL;
  if (!s) return 0;
  s->closed = 1;
  if (!s->busy) audio_state_free(s);
  return 0;
}

/* ---- extract the whole audio track --------------------------------------------------------- */

typedef struct extract_job {
  char *url, *out;
  int rate, channels;
  long frames;
  char err[SL_AV_ERRLEN];
} extract_job;

static void extract_run_inner(sl_job *job, void *data) {
  extract_job *e = data;
  sl_av_cancel c = {.cancelled = job_cancelled_cb, .arg = job};
  sl_audio_reader *r = sl_audio_open(e->url, e->rate, e->channels, &c, e->err, sizeof e->err);
  if (!r) {
    e->frames = -1;
    return;
  }
  FILE *f = fopen(e->out, "wb");
  if (!f) {
    snprintf(e->err, sizeof e->err, "%s: %s", e->out, strerror(errno));
    e->frames = -1;
    sl_audio_close(r);
    return;
  }
  uint8_t h[44];
  wav_header(h, e->rate, e->channels, 0);
  int ok = fwrite(h, 1, 44, f) == 44;
  enum { BLOCK = 16384 };
  int16_t *buf = malloc((size_t)BLOCK * (size_t)e->channels * sizeof *buf);
  long total = 0;
  ok = ok && buf;
  while (ok) {
    long got = sl_audio_read(r, buf, BLOCK, e->err, sizeof e->err);
    if (got < 0) {
      total = -1;
      break;
    }
    if (got > 0 && fwrite(buf, (size_t)e->channels * 2, (size_t)got, f) != (size_t)got) ok = 0;
    total += got;
    if (got < BLOCK) break;
  }
  free(buf);
  if (ok && total >= 0) {
    wav_header(h, e->rate, e->channels, (uint32_t)((size_t)total * (size_t)e->channels * 2));
    ok = fseek(f, 0, SEEK_SET) == 0 && fwrite(h, 1, 44, f) == 44;
  }
  if (fclose(f) != 0) ok = 0;
  if (!ok && total >= 0) {
    snprintf(e->err, sizeof e->err, "%s: %s", e->out, strerror(errno));
    total = -1;
  }
  if (total < 0) remove(e->out);
  e->frames = total;
  sl_audio_close(r);
}

static void extract_run(sl_job *job, void *data) {
  int before = lower_priority();
  extract_run_inner(job, data);
  restore_priority(before);
}

static int extract_finish(lua_State *L, void *data) {
  extract_job *e = data;
  if (e->frames < 0) return sl_push_fail(L, "EMEDIA", "%s", e->err);
  lua_pushinteger(L, e->frames);
  return 1;
}

static void extract_free(void *data) {
  extract_job *e = data;
  free(e->url);
  free(e->out);
  free(e);
}

static const sl_job_class extract_class = {"media.extract_audio", extract_run, extract_finish,
                                           extract_free};

static int l_extract_audio(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  const char *out = luaL_checkstring(L, 2);
  int rate = (int)luaL_checkinteger(L, 3);
  int channels = (int)luaL_checkinteger(L, 4);
  luaL_checktype(L, 5, LUA_TFUNCTION);
  luaL_argcheck(L, rate >= 1000 && rate <= 384000, 3, "rate must be 1000..384000");
  luaL_argcheck(L, channels >= 1 && channels <= 8, 4, "channels must be 1..8");
  extract_job *e = calloc(1, sizeof *e);
  if (!e) return luaL_error(L, "out of memory");
  e->url = strdup(url);
  e->out = strdup(out);
  e->rate = rate;
  e->channels = channels;
  if (!e->url || !e->out) {
    extract_free(e);
    return luaL_error(L, "out of memory");
  }
  return sl_job_submit_cpu(L, 5, &extract_class, e);
}

/* ---- frames -------------------------------------------------------------------------------- */

typedef struct frame_state {
  char *url, *dir, *prefix;
  sl_frame_opts opts;
  double *times;
  int format; /* sl_render_format, 0: no image */
  int max_width, max_height, quality;
  int to_blob;
  int want_phash;
  int cells; /* columns of the cell statistics (0: none), see sl_cell_stats */
  sl_frame_reader *reader;
  long seq;
  int retimed; /* reader:retime gave new times: the next job hands them to the reader */
  int ended;
  char failed[SL_AV_ERRLEN];
  int busy, closed;
} frame_state;

typedef struct frames_ud {
  frame_state *s;
} frames_ud;

static void frame_state_free(frame_state *s) {
  sl_frame_close(s->reader);
  free(s->times);
  free(s->url);
  free(s->dir);
  free(s->prefix);
  free(s);
}

/* One job delivers up to FRAME_BATCH frames: after the first it goes on while it has run less
 * than FRAME_BATCH_SECONDS and holds less than FRAME_BATCH_BYTES of images, so short items
 * (keyframes, small frames) do not each pay a round trip through the loop (on a loaded machine
 * the wake-up of the loop thread, and so the gap between two jobs of a stream, can take
 * milliseconds). Inputs read over the network deliver one frame a job: there the next frame
 * may be a whole live segment away, and a frame held meanwhile reached Lua that much later
 * (the live monitor's capture fell a segment or two behind the stream in some runs). */
#define FRAME_BATCH 16
#define FRAME_BATCH_SECONDS 0.05
#define FRAME_BATCH_BYTES (8 << 20)

typedef struct frame_item {
  long seq;
  double t, score, mafd;
  int key, width, height, src_width, src_height;
  uint64_t dhash, phash;
  uint8_t *bytes;
  size_t len;
  uint8_t *cells; /* cols * rows * 3 bytes, see sl_cell_stats */
  int cols, rows;
  char path[4096];
  long decoded, seeks;
} frame_item;

typedef struct frame_job {
  frame_state *s;
  int status; /* items ready (n > 0), 0 at the end, -1 on error (with no items) */
  int n;
  frame_item items[FRAME_BATCH];
  char err[SL_AV_ERRLEN];
  char warning[SL_AV_ERRLEN]; /* with status 0: the input broke off early */
  int delivered;              /* frame_finish handed the items to Lua (who then owns their files) */
} frame_job;

static const char *format_ext(int format) {
  switch (format) {
    case SL_RENDER_JPEG:
      return "jpg";
    case SL_RENDER_PNG:
      return "png";
    case SL_RENDER_GRAY:
      return "gray";
    default:
      return "rgb";
  }
}

/* Decodes the next selected frame into it. Returns 1, 0 at the end or -1 with err set. */
static int produce_frame(frame_state *s, frame_item *it, char *err, size_t errlen) {
  int rc = sl_frame_next(s->reader, &it->t, &it->score, &it->key, err, errlen);
  sl_frame_stats(s->reader, &it->decoded, &it->seeks);
  if (rc <= 0) return rc;
  it->seq = ++s->seq;
  it->mafd = sl_frame_mafd(s->reader);
  sl_frame_size(s->reader, &it->src_width, &it->src_height);
  sl_image luma;
  if (sl_frame_luma(s->reader, &luma, err, errlen) < 0) return -1;
  it->dhash = sl_dhash(&luma);
  if (s->want_phash) it->phash = sl_phash(&luma);
  if (s->cells > 0) {
    it->cols = s->cells;
    it->rows = (int)lround((double)s->cells * luma.height / (luma.width > 0 ? luma.width : 1));
    if (it->rows < 1) it->rows = 1;
    it->cells = malloc((size_t)it->cols * (size_t)it->rows * 3);
    if (!it->cells || sl_cell_stats(&luma, it->cols, it->rows, it->cells) < 0) {
      snprintf(err, errlen, "%.400s: out of memory", s->url);
      return -1;
    }
  }
  if (!s->format) {
    it->width = it->src_width;
    it->height = it->src_height;
    return 1;
  }
  if (sl_frame_render(s->reader, s->format, s->max_width, s->max_height, s->quality, &it->bytes,
                      &it->len, &it->width, &it->height, err, errlen) < 0)
    return -1;
  if (s->to_blob) return 1;
  snprintf(it->path, sizeof it->path, "%s/%s_%06ld.%s", s->dir, s->prefix, it->seq,
           format_ext(s->format));
  if (make_dirs(s->dir) < 0) {
    snprintf(err, errlen, "%.400s: %s", s->dir, strerror(errno));
    return -1;
  }
  int w = write_file(it->path, it->bytes, it->len, err, errlen);
  free(it->bytes);
  it->bytes = NULL;
  return w < 0 ? -1 : 1;
}

/* The job found the end of the frames: status 0, with the reader's warning if any. */
static void frames_ended(frame_job *j, const frame_state *s) {
  j->status = 0;
  const char *w = s->reader ? sl_frame_warning(s->reader) : NULL;
  if (w) snprintf(j->warning, sizeof j->warning, "%s", w);
}

static void frame_run_inner(sl_job *job, void *data) {
  frame_job *j = data;
  frame_state *s = j->s;
  sl_av_cancel c = {.cancelled = job_cancelled_cb, .arg = job};
  if (s->failed[0]) {
    snprintf(j->err, sizeof j->err, "%s", s->failed);
    j->status = -1;
    return;
  }
  if (s->ended) {
    frames_ended(j, s);
    return;
  }
  /* the reader's cancel hook is this job's before anything reads or seeks (a retime seeks) */
  if (s->reader) sl_frame_set_cancel(s->reader, &c);
  if (s->reader && s->retimed && s->opts.mode == SL_FRAMES_TIMES &&
      sl_frame_retime(s->reader, s->times, s->opts.ntimes, j->err, sizeof j->err) < 0) {
    /* It cannot seek back: the input is opened again, as a new reader would be. */
    sl_frame_close(s->reader);
    s->reader = NULL;
  }
  s->retimed = 0;
  if (!s->reader) {
    s->opts.times = s->times;
    s->reader = sl_frame_open(s->url, &s->opts, &c, j->err, sizeof j->err);
    if (!s->reader) {
      snprintf(s->failed, sizeof s->failed, "%s", j->err);
      j->status = -1;
      return;
    }
  }
  sl_frame_set_cancel(s->reader, &c);
  double start = sl_now();
  size_t bytes = 0;
  int batch = sl_frame_network(s->reader) ? 1 : FRAME_BATCH;
  while (j->n < batch) {
    if (j->n > 0 && (sl_now() - start > FRAME_BATCH_SECONDS || bytes > FRAME_BATCH_BYTES ||
                     sl_job_cancelled(job)))
      break;
    int rc = produce_frame(s, &j->items[j->n], j->err, sizeof j->err);
    if (rc < 0) {
      /* the error is reported now, or by the next job when items are waiting */
      snprintf(s->failed, sizeof s->failed, "%s", j->err);
      free(j->items[j->n].bytes);
      j->items[j->n].bytes = NULL;
      free(j->items[j->n].cells);
      j->items[j->n].cells = NULL;
      break;
    }
    if (rc == 0) {
      s->ended = 1;
      break;
    }
    bytes += j->items[j->n].len;
    j->n++;
  }
  if (j->n > 0)
    j->status = 1;
  else if (s->failed[0])
    j->status = -1;
  else
    frames_ended(j, s);
}

/* After a job the reader keeps no hook into it (the job is freed; a shared demuxer must not
 * call it). */
static void frame_run(sl_job *job, void *data) {
  int before = lower_priority();
  frame_run_inner(job, data);
  frame_state *s = ((frame_job *)data)->s;
  if (s->reader) sl_frame_set_cancel(s->reader, NULL);
  restore_priority(before);
}

static void push_frame(lua_State *L, const frame_state *s, frame_item *it) {
  lua_createtable(L, 0, 14);
  lua_pushinteger(L, it->seq);
  lua_setfield(L, -2, "seq");
  lua_pushnumber(L, it->t);
  lua_setfield(L, -2, "t");
  lua_pushinteger(L, it->width);
  lua_setfield(L, -2, "width");
  lua_pushinteger(L, it->height);
  lua_setfield(L, -2, "height");
  lua_pushinteger(L, it->src_width);
  lua_setfield(L, -2, "source_width");
  lua_pushinteger(L, it->src_height);
  lua_setfield(L, -2, "source_height");
  lua_pushboolean(L, it->key);
  lua_setfield(L, -2, "key");
  if (it->score >= 0) {
    lua_pushnumber(L, it->score);
    lua_setfield(L, -2, "scene_score");
  }
  if (it->mafd >= 0) {
    lua_pushnumber(L, it->mafd);
    lua_setfield(L, -2, "mafd");
  }
  push_hash(L, it->dhash);
  lua_setfield(L, -2, "dhash");
  if (s->want_phash) {
    push_hash(L, it->phash);
    lua_setfield(L, -2, "phash");
  }
  if (s->format) {
    lua_pushstring(L, format_ext(s->format));
    lua_setfield(L, -2, "format");
  }
  if (it->cells) {
    lua_pushlstring(L, (const char *)it->cells, (size_t)it->cols * (size_t)it->rows * 3);
    lua_setfield(L, -2, "cells");
    lua_pushinteger(L, it->cols);
    lua_setfield(L, -2, "cells_cols");
    lua_pushinteger(L, it->rows);
    lua_setfield(L, -2, "cells_rows");
  }
  if (it->bytes) {
    sl_blob *b = sl_blob_new(it->len);
    if (!b) luaL_error(L, "out of memory");
    memcpy(b->data, it->bytes, it->len);
    sl_blob_push(L, b);
    lua_setfield(L, -2, "blob");
  } else if (it->path[0]) {
    lua_pushstring(L, it->path);
    lua_setfield(L, -2, "path");
  }
  lua_pushinteger(L, it->decoded);
  lua_setfield(L, -2, "decoded");
  lua_pushinteger(L, it->seeks);
  lua_setfield(L, -2, "seeks");
}

/* Pushes the first frame and, when the job produced more, a list of the others. */
static int frame_finish(lua_State *L, void *data) {
  frame_job *j = data;
  j->delivered = 1;
  if (j->status < 0) return sl_push_fail(L, "EMEDIA", "%s", j->err);
  if (j->status == 0) return push_end(L, j->warning);
  push_frame(L, j->s, &j->items[0]);
  if (j->n == 1) return 1;
  lua_createtable(L, j->n - 1, 0);
  for (int i = 1; i < j->n; i++) {
    push_frame(L, j->s, &j->items[i]);
    lua_rawseti(L, -2, i);
  }
  return 2;
}

static void frame_job_free(void *data) {
  frame_job *j = data;
  /* A cancelled job's frames never reached anyone: their files go with them. */
  if (!j->delivered)
    for (int i = 0; i < j->n; i++)
      if (j->items[i].path[0]) unlink(j->items[i].path);
  for (int i = 0; i < FRAME_BATCH; i++) {
    free(j->items[i].bytes);
    free(j->items[i].cells);
  }
  j->s->busy = 0;
  if (j->s->closed) frame_state_free(j->s);
  free(j);
}

static const sl_job_class frame_class = {"media.frames", frame_run, frame_finish, frame_job_free};

/* A format name as frame_reader takes it: its sl_render_format, 0 for "none", -1 when unknown. */
static int parse_format(const char *format) {
  return !strcmp(format, "jpeg") || !strcmp(format, "jpg") ? SL_RENDER_JPEG
         : !strcmp(format, "png")                          ? SL_RENDER_PNG
         : !strcmp(format, "gray")                         ? SL_RENDER_GRAY
         : !strcmp(format, "rgb")                          ? SL_RENDER_RGB
         : !strcmp(format, "none")                         ? 0
                                                           : -1;
}

/* media.frame_reader(url, {every=|keyframes=|scene=|times=, min_interval=, max_width=,
 * max_height=, format="jpeg"|"png"|"gray"|"rgb"|"none", quality=, output="file"|"blob", dir=,
 * prefix=, threads=, phash=bool, fast=bool, decode_all=bool, score_width=, sample=, score=bool,
 * start=, stop=, cells=}) -> reader (fast, decode_all, score_width, sample, score, start, stop:
 * see sl_frame_opts in av.h;
 * a scored frame carries scene_score and mafd; cells = N columns: each frame carries
 * sl_cell_stats of its luma as `cells`, with cells_cols, cells_rows) */
static int l_frame_reader(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  sl_frame_opts o = {0};
  int modes = 0;
  double every = opt_number(L, 2, "every", 0);
  double scene = opt_number(L, 2, "scene", -1);
  int keyframes = opt_bool(L, 2, "keyframes", 0);
  lua_getfield(L, 2, "times");
  int has_times = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (every > 0) {
    o.mode = SL_FRAMES_EVERY;
    o.every = every;
    modes++;
  }
  if (keyframes) {
    o.mode = SL_FRAMES_KEYFRAMES;
    modes++;
  }
  if (scene >= 0) {
    luaL_argcheck(L, scene <= 1, 2, "scene threshold must be in 0..1");
    o.mode = SL_FRAMES_SCENE;
    o.scene = scene;
    modes++;
  }
  if (has_times) {
    o.mode = SL_FRAMES_TIMES;
    modes++;
  }
  luaL_argcheck(L, modes <= 1, 2, "give one of every, keyframes, scene, times");
  o.min_interval = opt_number(L, 2, "min_interval", 0);
  o.threads = (int)opt_number(L, 2, "threads", 0);
  o.fast = opt_bool(L, 2, "fast", 0);
  o.decode_all = opt_bool(L, 2, "decode_all", 0);
  o.score_width = (int)opt_number(L, 2, "score_width", 0);
  luaL_argcheck(L, o.score_width >= 0, 2, "score_width must be >= 0");
  o.score = opt_bool(L, 2, "score", 0);
  o.start = opt_number(L, 2, "start", 0);
  o.stop = opt_number(L, 2, "stop", 0);
  luaL_argcheck(L, o.start >= 0 && o.stop >= 0, 2, "start and stop must be >= 0 seconds");
  o.sample = opt_number(L, 2, "sample", 0);
  luaL_argcheck(L, o.sample >= 0, 2, "sample must be >= 0 seconds");
  int cells = (int)opt_number(L, 2, "cells", 0);
  luaL_argcheck(L, cells >= 0 && cells <= 256, 2, "cells must be 0..256 columns");
  const char *format = opt_string(L, 2, "format", "jpeg");
  int fmt = parse_format(format);
  luaL_argcheck(L, fmt >= 0, 2, "format must be jpeg, png, gray, rgb or none");
  const char *output = opt_string(L, 2, "output", "file");
  luaL_argcheck(L, !strcmp(output, "file") || !strcmp(output, "blob"), 2,
                "output must be \"file\" or \"blob\"");
  int to_blob = !strcmp(output, "blob");
  const char *dir = opt_string(L, 2, "dir", NULL);
  if (fmt && !to_blob && !dir) luaL_argerror(L, 2, "dir is required for output=\"file\"");
  frames_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->s = NULL;
  luaL_setmetatable(L, FRAMES_MT);
  frame_state *s = calloc(1, sizeof *s);
  if (!s) return luaL_error(L, "out of memory");
  u->s = s;
  if (has_times) {
    lua_getfield(L, 2, "times");
    luaL_checktype(L, -1, LUA_TTABLE);
    lua_Integer n = luaL_len(L, -1);
    s->times = calloc(n > 0 ? (size_t)n : 1, sizeof *s->times);
    if (!s->times) return luaL_error(L, "out of memory");
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      s->times[i - 1] = luaL_checknumber(L, -1);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    o.ntimes = (int)n;
  }
  s->opts = o;
  s->url = dup_or_raise(L, url);
  s->dir = dup_or_raise(L, dir ? dir : "");
  s->prefix = dup_or_raise(L, opt_string(L, 2, "prefix", "frame"));
  s->format = fmt;
  s->max_width = (int)opt_number(L, 2, "max_width", 0);
  s->max_height = (int)opt_number(L, 2, "max_height", 0);
  s->quality = (int)opt_number(L, 2, "quality", 85);
  s->to_blob = to_blob;
  s->want_phash = opt_bool(L, 2, "phash", 0);
  s->cells = cells;
  return 1;
}

static frames_ud *check_frames(lua_State *L) {
  frames_ud *u = luaL_checkudata(L, 1, FRAMES_MT);
  sl_check_open(L, u->s, "frame reader");
  return u;
}

static int frames_next(lua_State *L) {
  frames_ud *u = check_frames(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (u->s->busy) return luaL_error(L, "frame reader: next() called while a read is running");
  frame_job *j = calloc(1, sizeof *j);
  if (!j) return luaL_error(L, "out of memory");
  j->s = u->s;
  u->s->busy = 1;
  return sl_job_submit_cpu(L, 2, &frame_class, j);
}

/* reader:retime(times[, format[, cells]]): the next reads give the frames at these times (as a
 * new reader of them would), from the same open input, seeking back when needed (see
 * sl_frame_retime); format ("jpeg", ..., "none") and cells as in frame_reader, unchanged when
 * nil. Only for a reader opened with times, and not while a read is running. */
static int frames_retime(lua_State *L) {
  frames_ud *u = check_frames(L);
  frame_state *s = u->s;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (s->busy) return luaL_error(L, "frame reader: retime() called while a read is running");
  if (s->opts.mode != SL_FRAMES_TIMES)
    return luaL_error(L, "frame reader: retime() needs a reader opened with times");
  int fmt = s->format;
  if (!lua_isnoneornil(L, 3)) {
    const char *format = luaL_checkstring(L, 3);
    fmt = parse_format(format);
    luaL_argcheck(L, fmt >= 0, 3, "format must be jpeg, png, gray, rgb or none");
    if (fmt && !s->to_blob && !s->dir[0]) luaL_argerror(L, 3, "the reader has no dir for files");
  }
  int cells = s->cells;
  if (!lua_isnoneornil(L, 4)) {
    cells = (int)luaL_checkinteger(L, 4);
    luaL_argcheck(L, cells >= 0 && cells <= 256, 4, "cells must be 0..256 columns");
  }
  lua_Integer n = luaL_len(L, 2);
  luaL_argcheck(L, n <= INT_MAX, 2, "too many times");
  double *times = calloc(n > 0 ? (size_t)n : 1, sizeof *times);
  if (!times) return luaL_error(L, "out of memory");
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    int ok;
    times[i - 1] = lua_tonumberx(L, -1, &ok);
    lua_pop(L, 1);
    if (!ok) {
      free(times);
      return luaL_argerror(L, 2, "times must be numbers");
    }
  }
  free(s->times);
  s->times = times;
  s->opts.ntimes = (int)n;
  s->format = fmt;
  s->cells = cells;
  s->retimed = 1;
  s->ended = 0;
  return 0;
}

static int frames_close(lua_State *L) {
  frames_ud *u = luaL_checkudata(L, 1, FRAMES_MT);
  frame_state *s = u->s;
  u->s = NULL;
  if (!s) return 0;
  s->closed = 1;
  if (!s->busy) frame_state_free(s);
  return 0;
}

/* ---- hashes of an image file ---------------------------------------------------------------- */

typedef struct hash_job {
  char *url;
  int ok;
  uint64_t dhash, phash;
  char err[SL_AV_ERRLEN];
} hash_job;

static void hash_run(sl_job *job, void *data) {
  hash_job *h = data;
  sl_av_cancel c = {.cancelled = job_cancelled_cb, .arg = job};
  sl_frame_opts o = {0};
  o.threads = 1;
  sl_frame_reader *r = sl_frame_open(h->url, &o, &c, h->err, sizeof h->err);
  if (!r) return;
  double t, score;
  int key;
  int rc = sl_frame_next(r, &t, &score, &key, h->err, sizeof h->err);
  if (rc == 0) snprintf(h->err, sizeof h->err, "%s: no frame", h->url);
  sl_image img;
  if (rc > 0 && sl_frame_luma(r, &img, h->err, sizeof h->err) == 0) {
    h->dhash = sl_dhash(&img);
    h->phash = sl_phash(&img);
    h->ok = 1;
  }
  sl_frame_close(r);
}

static int hash_finish(lua_State *L, void *data) {
  hash_job *h = data;
  if (!h->ok) return sl_push_fail(L, "EMEDIA", "%s", h->err);
  push_hash(L, h->dhash);
  push_hash(L, h->phash);
  return 2;
}

static void hash_free(void *data) {
  hash_job *h = data;
  free(h->url);
  free(h);
}

static const sl_job_class hash_class = {"media.image_hash", hash_run, hash_finish, hash_free};

static int l_image_hash(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  hash_job *h = calloc(1, sizeof *h);
  if (!h || !(h->url = strdup(url))) {
    free(h);
    return luaL_error(L, "out of memory");
  }
  return sl_job_submit_cpu(L, 2, &hash_class, h); /* decodes and hashes: CPU-bound */
}

int luaopen_sluice_media(lua_State *L) {
  static const luaL_Reg audio_methods[] = {
      {"next", audio_next}, {"close", audio_close}, {NULL, NULL}};
  static const luaL_Reg frame_methods[] = {
      {"next", frames_next}, {"retime", frames_retime}, {"close", frames_close}, {NULL, NULL}};
  if (luaL_newmetatable(L, AUDIO_MT)) {
    luaL_newlib(L, audio_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, audio_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, audio_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, FRAMES_MT)) {
    luaL_newlib(L, frame_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, frames_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, frames_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"probe", l_probe},
                                   {"audio_reader", l_audio_reader},
                                   {"frame_reader", l_frame_reader},
                                   {"extract_audio", l_extract_audio},
                                   {"image_hash", l_image_hash},
                                   {"set_open_timeout", l_set_open_timeout},
                                   {"inputs", l_inputs},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
