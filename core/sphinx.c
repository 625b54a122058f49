/* sphinx.c: offline speech recognition with CMU PocketSphinx (Lua module sluice.core.sphinx).
 *
 *   sphinx.load({hmm=, lm=, dict=}, fn) -> job     fn(decoder) or fn(nil, msg, code)
 *   decoder:transcribe(wav_path | pcm_blob, fn) -> job
 *       fn({utterances={{words={{word=,start=,["end"]=,conf=}...}, text=}...},
 *           duration=seconds}) or fn(nil, msg, code)
 *   decoder:busy(), decoder:close()
 *
 * A decoder is not thread-safe, so each one runs at most one job at a time; while a job
 * runs, the decoder struct belongs to the pool thread that runs it (loop-thread code only
 * reads the busy flag). Both model loading (ps_init reads the acoustic model, dictionary and
 * language model: about a second) and decoding run on the engine's pool. Audio is split
 * into utterances by PocketSphinx's own voice-activity detection, exactly as
 * pocketsphinx_continuous does with -infile, and every word carries its start and end in
 * seconds from the start of the audio. WAV files are read here (RIFF header parsed, data
 * streamed in blocks); a blob holds raw 16 kHz mono signed 16-bit little-endian PCM.
 */
#include <errno.h>
#include <pocketsphinx.h>
#include <sphinxbase/err.h>
#include <sphinxbase/feat.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "blob.h"
#include "sluice.h"

#define DECODER_MT "sluice.sphinx.decoder"
#define BLOCK_SAMPLES 2048

typedef struct decoder {
  ps_decoder_t *ps;
  int busy;   /* a job owns the decoder; set and cleared on the loop thread */
  int closed; /* Lua closed it while busy: the job's free function frees it */
  int frate;  /* frames per second (-frate) */
  int samprate;
  mfcc_t *cmn_start; /* the cepstral mean after loading (-cmninit), restored per job */
  int cmn_len;
} decoder;

typedef struct decoder_ud {
  decoder *d; /* NULL once closed */
} decoder_ud;

static void decoder_free(decoder *d) {
  if (!d) return;
  if (d->ps) ps_free(d->ps);
  free(d->cmn_start);
  free(d);
}

/* ---- logging: PocketSphinx reports through one global callback ------------------------- */

/* The last error message PocketSphinx reported on this thread, for error messages. */
static _Thread_local char last_error[512];

static void sphinx_log(void *user, err_lvl_t lvl, const char *fmt, ...) {
  (void)user;
  if (lvl < ERR_WARN) return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  size_t n = strlen(buf);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = '\0';
  if (n == 0) return;
  if (lvl >= ERR_ERROR) snprintf(last_error, sizeof last_error, "%s", buf);
  if (getenv("SLUICE_SPHINX_LOG")) fprintf(stderr, "sphinx: %s\n", buf);
}

/* ---- model loading ------------------------------------------------------------------- */

typedef struct load_job {
  char *hmm, *lm, *dict;
  decoder *d; /* result; owned by the job until finish hands it to Lua */
  char err[1024];
} load_job;

static int path_exists(const char *p, int want_dir) {
  struct stat st;
  if (stat(p, &st) != 0) return 0;
  return want_dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode);
}

static void load_run(sl_job *job, void *data) {
  (void)job;
  load_job *l = data;
  const char *pkg = "install the Debian package pocketsphinx-en-us";
  if (!path_exists(l->hmm, 1)) {
    snprintf(l->err, sizeof l->err, "sphinx: acoustic model directory %s not found (%s)", l->hmm,
             pkg);
    return;
  }
  if (!path_exists(l->lm, 0)) {
    snprintf(l->err, sizeof l->err, "sphinx: language model %s not found (%s)", l->lm, pkg);
    return;
  }
  if (!path_exists(l->dict, 0)) {
    snprintf(l->err, sizeof l->err, "sphinx: dictionary %s not found (%s)", l->dict, pkg);
    return;
  }
  last_error[0] = '\0';
  cmd_ln_t *config =
      cmd_ln_init(NULL, ps_args(), TRUE, "-hmm", l->hmm, "-lm", l->lm, "-dict", l->dict, NULL);
  if (!config) {
    snprintf(l->err, sizeof l->err, "sphinx: bad configuration: %s", last_error);
    return;
  }
  ps_decoder_t *ps = ps_init(config);
  if (!ps) {
    snprintf(l->err, sizeof l->err, "sphinx: cannot load the model %s: %s", l->hmm,
             last_error[0] ? last_error : "ps_init failed");
    cmd_ln_free_r(config);
    return;
  }
  decoder *d = calloc(1, sizeof *d);
  if (!d) {
    ps_free(ps);
    cmd_ln_free_r(config);
    snprintf(l->err, sizeof l->err, "sphinx: out of memory");
    return;
  }
  d->ps = ps;
  d->frate = (int)cmd_ln_int_r(config, "-frate");
  d->samprate = (int)cmd_ln_float_r(config, "-samprate");
  if (d->frate <= 0) d->frate = 100;
  cmd_ln_free_r(config); /* the decoder keeps its own reference */
  feat_t *fcb = ps_get_feat(ps);
  if (fcb && fcb->cmn_struct && fcb->cmn_struct->veclen > 0) {
    cmn_t *cmn = fcb->cmn_struct;
    d->cmn_start = malloc(sizeof *d->cmn_start * (size_t)cmn->veclen);
    if (d->cmn_start) {
      memcpy(d->cmn_start, cmn->cmn_mean, sizeof *d->cmn_start * (size_t)cmn->veclen);
      d->cmn_len = cmn->veclen;
    }
  }
  l->d = d;
}

static int push_decoder(lua_State *L, decoder *d) {
  decoder_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->d = d;
  luaL_setmetatable(L, DECODER_MT);
  return 1;
}

static int load_finish(lua_State *L, void *data) {
  load_job *l = data;
  if (!l->d) return sl_push_fail(L, "ESPHINX", "%s", l->err);
  decoder *d = l->d;
  l->d = NULL;
  return push_decoder(L, d);
}

static void load_free(void *data) {
  load_job *l = data;
  decoder_free(l->d);
  free(l->hmm);
  free(l->lm);
  free(l->dict);
  free(l);
}

static const sl_job_class load_class = {"sphinx.load", load_run, load_finish, load_free};

/* Pushes opts[key], which must be a string (a path): raises otherwise. */
static const char *check_path(lua_State *L, int t, const char *key) {
  if (lua_getfield(L, t, key) != LUA_TSTRING)
    luaL_error(L, "sphinx.load: option '%s' (a path) is required, got %s", key, luaL_typename(L, -1));
  return lua_tostring(L, -1);
}

/* sphinx.load({hmm=, lm=, dict=}, fn) -> job. Every argument is read and checked before
 * anything is allocated (the strings stay on the stack until they are copied). */
static int l_load(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  const char *hmm = check_path(L, 1, "hmm");   /* 3 */
  const char *lm = check_path(L, 1, "lm");     /* 4 */
  const char *dict = check_path(L, 1, "dict"); /* 5 */
  load_job *l = calloc(1, sizeof *l);
  if (l) {
    l->hmm = strdup(hmm);
    l->lm = strdup(lm);
    l->dict = strdup(dict);
  }
  if (!l || !l->hmm || !l->lm || !l->dict) {
    if (l) load_free(l);
    return luaL_error(L, "out of memory");
  }
  return sl_job_submit(L, 2, &load_class, l); /* owns l from here, whatever happens */
}

/* ---- WAV input ------------------------------------------------------------------------- */

static uint32_t le32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Opens path, checks it is 16-bit mono PCM at rate and leaves the file positioned at the
 * sample data. Returns the file and the data size in bytes, or NULL with err set. */
static FILE *wav_open(const char *path, int rate, long *data_bytes, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "sphinx: cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  unsigned char hdr[12];
  if (fread(hdr, 1, 12, f) != 12 || memcmp(hdr, "RIFF", 4) != 0 || memcmp(hdr + 8, "WAVE", 4)) {
    snprintf(err, errlen, "sphinx: %s is not a WAV file (no RIFF/WAVE header)", path);
    fclose(f);
    return NULL;
  }
  int have_fmt = 0;
  unsigned fmt_tag = 0, channels = 0, bits = 0;
  uint32_t srate = 0;
  for (;;) {
    unsigned char ch[8];
    if (fread(ch, 1, 8, f) != 8) {
      snprintf(err, errlen, "sphinx: %s: WAV file has no data chunk", path);
      break;
    }
    uint32_t size = le32(ch + 4);
    if (memcmp(ch, "fmt ", 4) == 0) {
      unsigned char fmt[40];
      if (size < 16 || size > sizeof fmt || fread(fmt, 1, size, f) != size) {
        snprintf(err, errlen, "sphinx: %s: malformed WAV fmt chunk", path);
        break;
      }
      fmt_tag = le16(fmt);
      channels = le16(fmt + 2);
      srate = le32(fmt + 4);
      bits = le16(fmt + 14);
      if (fmt_tag == 0xFFFE && size >= 26) fmt_tag = le16(fmt + 24); /* extensible */
      have_fmt = 1;
      if (size & 1) fseek(f, 1, SEEK_CUR);
    } else if (memcmp(ch, "data", 4) == 0) {
      if (!have_fmt) {
        snprintf(err, errlen, "sphinx: %s: WAV data chunk before fmt chunk", path);
        break;
      }
      if (fmt_tag != 1 || channels != 1 || bits != 16 || (int)srate != rate) {
        snprintf(err, errlen,
                 "sphinx: %s is %s %u Hz, %u channel(s), %u-bit; sphinx needs %d Hz mono 16-bit "
                 "PCM (convert with: ffmpeg -i IN -ar %d -ac 1 -c:a pcm_s16le OUT.wav)",
                 path, fmt_tag == 1 ? "PCM" : "non-PCM", srate, channels, bits, rate, rate);
        break;
      }
      *data_bytes = (long)size;
      return f;
    } else {
      if (fseek(f, (long)size + (size & 1), SEEK_CUR) != 0) {
        snprintf(err, errlen, "sphinx: %s: truncated WAV file", path);
        break;
      }
    }
  }
  fclose(f);
  return NULL;
}

/* ---- decoding ---------------------------------------------------------------------------- */

typedef struct word {
  char *text;
  int sf, ef; /* absolute frames, inclusive */
  double conf;
  int utt; /* utterance index */
} word;

typedef struct transcribe_job {
  decoder *d;
  char *path;   /* a WAV file, or */
  sl_blob *pcm; /* raw samples (one reference) */
  word *words;
  size_t nwords, cap;
  int nutts;
  long nsamples;
  char err[1024];
} transcribe_job;

static int add_word(transcribe_job *t, const char *w, int sf, int ef, double conf) {
  if (t->nwords == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    word *nw = realloc(t->words, cap * sizeof *nw);
    if (!nw) return -1;
    t->words = nw;
    t->cap = cap;
  }
  size_t len = strlen(w);
  /* Alternate pronunciations are spelled word(2): keep the word. */
  const char *paren = strchr(w, '(');
  if (paren && paren > w && w[len - 1] == ')') len = (size_t)(paren - w);
  char *copy = malloc(len + 1);
  if (!copy) return -1;
  memcpy(copy, w, len);
  copy[len] = '\0';
  t->words[t->nwords++] = (word){copy, sf, ef, conf, t->nutts};
  return 0;
}

/* Collects the words of the utterance that just ended. Silence, sentence markers and
 * fillers (<s>, </s>, <sil>, [NOISE], ++...++) are skipped. base is the frame at which the
 * utterance started, for decoders whose frame counter restarts with each utterance. */
static int collect_utterance(transcribe_job *t, int base) {
  ps_decoder_t *ps = t->d->ps;
  logmath_t *lmath = ps_get_logmath(ps);
  int before = (int)t->nwords;
  for (ps_seg_t *seg = ps_seg_iter(ps); seg; seg = ps_seg_next(seg)) {
    const char *w = ps_seg_word(seg);
    if (!w || !*w || w[0] == '<' || w[0] == '[' || w[0] == '+') continue;
    int sf, ef;
    ps_seg_frames(seg, &sf, &ef);
    int32 ascr, lscr, lback;
    int32 pprob = ps_seg_prob(seg, &ascr, &lscr, &lback);
    double conf = logmath_exp(lmath, pprob);
    if (add_word(t, w, sf + base, ef + base, conf) != 0) {
      ps_seg_free(seg);
      return -1;
    }
  }
  if ((int)t->nwords > before) t->nutts++;
  return 0;
}

/* Forgets what earlier jobs taught the live cepstral mean normalisation, so that a chunk
 * decodes the same whichever decoder runs it and whatever it decoded before (as a fresh
 * pocketsphinx_continuous process would). */
static void reset_cmn(decoder *d) {
  feat_t *fcb = ps_get_feat(d->ps);
  if (!d->cmn_start || !fcb || !fcb->cmn_struct) return;
  cmn_t *cmn = fcb->cmn_struct;
  if (cmn->veclen != d->cmn_len) return;
  memcpy(cmn->cmn_mean, d->cmn_start, sizeof *d->cmn_start * (size_t)d->cmn_len);
  memset(cmn->sum, 0, sizeof *cmn->sum * (size_t)d->cmn_len);
  cmn->nframe = 0;
}

static void transcribe_run(sl_job *job, void *data) {
  transcribe_job *t = data;
  ps_decoder_t *ps = t->d->ps;
  reset_cmn(t->d);
  FILE *f = NULL;
  long remaining = 0;
  const int16 *pcm = NULL;
  if (t->path) {
    f = wav_open(t->path, t->d->samprate, &remaining, t->err, sizeof t->err);
    if (!f) return;
    remaining /= 2;
  } else {
    pcm = (const int16 *)t->pcm->data;
    remaining = (long)(t->pcm->len / 2);
  }
  last_error[0] = '\0';
  if (ps_start_stream(ps) < 0 || ps_start_utt(ps) < 0) {
    snprintf(t->err, sizeof t->err, "sphinx: cannot start decoding: %s", last_error);
    if (f) fclose(f);
    return;
  }
  int16 buf[BLOCK_SAMPLES];
  int utt_started = 0;
  long offset = 0;
  while (remaining > 0) {
    if (sl_job_cancelled(job)) break;
    long n = remaining < BLOCK_SAMPLES ? remaining : BLOCK_SAMPLES;
    const int16 *block;
    if (f) {
      size_t got = fread(buf, 2, (size_t)n, f);
      if (got == 0) break; /* a truncated file: decode what is there */
      n = (long)got;
      block = buf;
    } else {
      block = pcm + offset;
    }
    remaining -= n;
    offset += n;
    ps_process_raw(ps, block, (size_t)n, FALSE, FALSE);
    int in_speech = ps_get_in_speech(ps);
    if (in_speech && !utt_started) utt_started = 1;
    if (!in_speech && utt_started) {
      ps_end_utt(ps);
      if (collect_utterance(t, 0) != 0) goto oom;
      ps_start_utt(ps);
      utt_started = 0;
    }
  }
  ps_end_utt(ps);
  if (utt_started && collect_utterance(t, 0) != 0) goto oom;
  t->nsamples = offset;
  if (f) fclose(f);
  return;
oom:
  if (f) fclose(f);
  snprintf(t->err, sizeof t->err, "sphinx: out of memory");
}

static int transcribe_finish(lua_State *L, void *data) {
  transcribe_job *t = data;
  if (t->err[0]) return sl_push_fail(L, "ESPHINX", "%s", t->err);
  double frate = t->d->frate;
  double duration = (double)t->nsamples / t->d->samprate;
  lua_createtable(L, 0, 3);
  lua_pushnumber(L, duration);
  lua_setfield(L, -2, "duration");
  lua_createtable(L, t->nutts, 0); /* utterances */
  size_t i = 0;
  for (int u = 0; u < t->nutts; u++) {
    lua_createtable(L, 0, 2);
    lua_newtable(L); /* words */
    size_t first = i;
    int k = 0;
    for (; i < t->nwords && t->words[i].utt == u; i++) {
      word *w = &t->words[i];
      double s = w->sf / frate, e = (w->ef + 1) / frate;
      if (e > duration) e = duration;
      if (s > e) s = e;
      lua_createtable(L, 0, 4);
      lua_pushstring(L, w->text);
      lua_setfield(L, -2, "word");
      lua_pushnumber(L, s);
      lua_setfield(L, -2, "start");
      lua_pushnumber(L, e);
      lua_setfield(L, -2, "end");
      lua_pushnumber(L, w->conf);
      lua_setfield(L, -2, "conf");
      lua_rawseti(L, -2, ++k);
    }
    lua_setfield(L, -2, "words");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t j = first; j < i; j++) {
      if (j > first) luaL_addchar(&b, ' ');
      luaL_addstring(&b, t->words[j].text);
    }
    luaL_pushresult(&b);
    lua_setfield(L, -2, "text");
    lua_rawseti(L, -2, u + 1);
  }
  lua_setfield(L, -2, "utterances");
  return 1;
}

static void transcribe_free(void *data) {
  transcribe_job *t = data;
  decoder *d = t->d;
  d->busy = 0;
  if (d->closed) decoder_free(d);
  for (size_t i = 0; i < t->nwords; i++) free(t->words[i].text);
  free(t->words);
  free(t->path);
  sl_blob_release(t->pcm);
  free(t);
}

static const sl_job_class transcribe_class = {"sphinx.transcribe", transcribe_run,
                                              transcribe_finish, transcribe_free};

static decoder *check_decoder(lua_State *L) {
  decoder_ud *ud = luaL_checkudata(L, 1, DECODER_MT);
  sl_check_open(L, ud->d, "sphinx decoder");
  return ud->d;
}

/* decoder:transcribe(wav_path | pcm_blob, fn) -> job, or nil, msg, "EBUSY" while another
 * job uses this decoder. */
static int decoder_transcribe(lua_State *L) {
  decoder *d = check_decoder(L);
  int is_path = lua_type(L, 2) == LUA_TSTRING;
  if (!is_path && !sl_blob_to(L, 2)) luaL_typeerror(L, 2, "WAV path or PCM blob");
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (d->busy) return sl_push_fail(L, "EBUSY", "sphinx: the decoder is busy with another job");
  transcribe_job *t = calloc(1, sizeof *t);
  if (!t) return luaL_error(L, "out of memory");
  if (is_path) {
    t->path = strdup(lua_tostring(L, 2));
    if (!t->path) {
      free(t);
      return luaL_error(L, "out of memory");
    }
  } else {
    t->pcm = sl_blob_retain(sl_blob_check(L, 2));
    if (t->pcm->len % 2) {
      sl_blob_release(t->pcm);
      free(t);
      return luaL_error(L, "sphinx: a PCM blob must hold whole 16-bit samples");
    }
  }
  t->d = d;
  d->busy = 1; /* cleared by transcribe_free, whatever happens to the job */
  return sl_job_submit_cpu(L, 3, &transcribe_class, t);
}

static int decoder_busy(lua_State *L) {
  decoder_ud *ud = luaL_checkudata(L, 1, DECODER_MT);
  lua_pushboolean(L, ud->d && ud->d->busy);
  return 1;
}

/* __gc, __close and :close share this idempotent function. A decoder that is in use by a
 * job is freed when that job ends. */
static int decoder_close(lua_State *L) {
  decoder_ud *ud = luaL_checkudata(L, 1, DECODER_MT);
  decoder *d = ud->d;
  ud->d = NULL;
  if (!d) return 0;
  if (d->busy)
    d->closed = 1;
  else
    decoder_free(d);
  return 0;
}

static int decoder_tostring(lua_State *L) {
  decoder_ud *ud = luaL_checkudata(L, 1, DECODER_MT);
  lua_pushfstring(L, "sluice.sphinx.decoder (%s)",
                  !ud->d        ? "closed"
                  : ud->d->busy ? "busy"
                                : "idle");
  return 1;
}

int luaopen_sluice_sphinx(lua_State *L) {
  static int logging_set = 0;
  if (!logging_set) {
    /* Runs on the loop thread before any decoder exists, so no pool thread logs yet. */
    err_set_logfp(NULL);
    err_set_callback(sphinx_log, NULL);
    logging_set = 1;
  }
  static const luaL_Reg methods[] = {{"transcribe", decoder_transcribe},
                                     {"busy", decoder_busy},
                                     {"close", decoder_close},
                                     {NULL, NULL}};
  if (luaL_newmetatable(L, DECODER_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, decoder_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, decoder_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, decoder_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"load", l_load}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
