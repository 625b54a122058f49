/* ocr.c: optical character recognition with Tesseract (Lua module sluice.core.ocr).
 *
 *   ocr.open({lang="eng", datapath=nil, psm=nil}, fn) -> job   fn(engine) or fn(nil, msg, code)
 *   engine:recognize(image_path | encoded_blob, fn) -> job
 *       fn({text=, confidence=0..100, width=, height=,
 *           words={{text=, conf=0..100, x=, y=, w=, h=}...}}) or fn(nil, msg, code)
 *   engine:busy(), engine:close()
 *
 * A TessBaseAPI is not thread-safe: each engine runs one job at a time and belongs to the
 * pool thread running it meanwhile. Initialisation (loading the language's traineddata)
 * and recognition both run on the engine's pool. Images are decoded by Leptonica (PNG,
 * JPEG, TIFF, BMP, PNM, WebP, GIF), from a file or from encoded bytes in a blob.
 */
#include <errno.h>
#include <leptonica/allheaders.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <tesseract/capi.h>

#include "blob.h"
#include "sluice.h"

#define ENGINE_MT "sluice.ocr.engine"

typedef struct engine {
  TessBaseAPI *api;
  int busy;   /* a job owns the engine; set and cleared on the loop thread */
  int closed; /* Lua closed it while busy: the job's free function frees it */
} engine;

typedef struct engine_ud {
  engine *e; /* NULL once closed */
} engine_ud;

static void engine_free(engine *e) {
  if (!e) return;
  if (e->api) {
    TessBaseAPIEnd(e->api);
    TessBaseAPIDelete(e->api);
  }
  free(e);
}

/* ---- opening ------------------------------------------------------------------------- */

typedef struct open_job {
  char *lang, *datapath;
  int psm; /* -1: Tesseract's default */
  engine *e;
  char err[1024];
} open_job;

/* The directory Tesseract will read <lang>.traineddata from. */
static void tessdata_dir(const char *datapath, char *out, size_t len) {
  const char *env = getenv("TESSDATA_PREFIX");
  if (datapath)
    snprintf(out, len, "%s", datapath);
  else if (env && *env)
    snprintf(out, len, "%s", env);
  else
    snprintf(out, len, "/usr/share/tesseract-ocr/5/tessdata");
}

static void open_run(sl_job *job, void *data) {
  (void)job;
  open_job *o = data;
  char dir[1024], file[1200];
  tessdata_dir(o->datapath, dir, sizeof dir);
  /* Several languages may be joined with '+'; check the first. */
  char first[64];
  snprintf(first, sizeof first, "%.*s", (int)strcspn(o->lang, "+"), o->lang);
  snprintf(file, sizeof file, "%s/%s.traineddata", dir, first);
  struct stat st;
  if (stat(file, &st) != 0) {
    snprintf(o->err, sizeof o->err,
             "ocr: %.900s not found (install the Debian package tesseract-ocr-%s)", file, first);
    return;
  }
  TessBaseAPI *api = TessBaseAPICreate();
  if (!api) {
    snprintf(o->err, sizeof o->err, "ocr: out of memory");
    return;
  }
  if (TessBaseAPIInit3(api, o->datapath, o->lang) != 0) {
    snprintf(o->err, sizeof o->err, "ocr: tesseract cannot load language '%.60s' from %.900s",
             o->lang, dir);
    TessBaseAPIDelete(api);
    return;
  }
  if (o->psm >= 0) TessBaseAPISetPageSegMode(api, (TessPageSegMode)o->psm);
  /* Frames come without resolution metadata; slides are screen-sized images. */
  TessBaseAPISetVariable(api, "user_defined_dpi", "96");
  /* Tesseract prints its diagnostics ("Image too small to scale!!", "Line cannot be
   * recognized!!") on stderr, in the middle of the run's own output; results and errors
   * reach Lua through the job instead. */
  TessBaseAPISetVariable(api, "debug_file", "/dev/null");
  engine *e = calloc(1, sizeof *e);
  if (!e) {
    TessBaseAPIEnd(api);
    TessBaseAPIDelete(api);
    snprintf(o->err, sizeof o->err, "ocr: out of memory");
    return;
  }
  e->api = api;
  o->e = e;
}

static int open_finish(lua_State *L, void *data) {
  open_job *o = data;
  if (!o->e) return sl_push_fail(L, "EOCR", "%s", o->err);
  engine_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->e = o->e;
  o->e = NULL;
  luaL_setmetatable(L, ENGINE_MT);
  return 1;
}

static void open_free(void *data) {
  open_job *o = data;
  engine_free(o->e);
  free(o->lang);
  free(o->datapath);
  free(o);
}

static const sl_job_class open_class = {"ocr.open", open_run, open_finish, open_free};

/* ocr.open([opts], fn) -> job */
static int l_open(lua_State *L) {
  int fn = lua_istable(L, 1) ? 2 : 1;
  luaL_checktype(L, fn, LUA_TFUNCTION);
  const char *lang = "eng", *datapath = NULL;
  int psm = -1;
  if (fn == 2) {
    lua_getfield(L, 1, "lang");
    if (!lua_isnil(L, -1)) lang = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "datapath");
    if (!lua_isnil(L, -1)) datapath = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "psm");
    if (!lua_isnil(L, -1)) psm = (int)luaL_checkinteger(L, -1);
    luaL_argcheck(L, psm >= -1 && psm <= 13, 1, "psm must be a page segmentation mode 0..13");
  }
  open_job *o = calloc(1, sizeof *o);
  if (!o) return luaL_error(L, "out of memory");
  o->lang = strdup(lang);
  o->datapath = datapath ? strdup(datapath) : NULL;
  o->psm = psm;
  if (!o->lang || (datapath && !o->datapath)) {
    open_free(o);
    return luaL_error(L, "out of memory");
  }
  lua_pop(L, lua_gettop(L) - fn); /* the option strings are copied */
  return sl_job_submit(L, fn, &open_class, o);
}

/* ---- recognition --------------------------------------------------------------------- */

typedef struct ocr_word {
  char *text;
  float conf;
  int x, y, w, h;
} ocr_word;

typedef struct recognize_job {
  engine *e;
  char *path;   /* an image file, or */
  sl_blob *enc; /* encoded image bytes (one reference) */
  char *text;   /* from TessBaseAPIGetUTF8Text (TessDeleteText) */
  int mean_conf, width, height;
  ocr_word *words;
  size_t nwords, cap;
  char err[1024];
} recognize_job;

static void recognize_run(sl_job *job, void *data) {
  (void)job;
  recognize_job *r = data;
  PIX *pix = r->path ? pixRead(r->path) : pixReadMem(r->enc->data, r->enc->len);
  if (!pix) {
    struct stat st;
    if (r->path && stat(r->path, &st) != 0)
      snprintf(r->err, sizeof r->err, "ocr: cannot open %s: %s", r->path, strerror(errno));
    else
      snprintf(r->err, sizeof r->err, "ocr: %s is not an image Leptonica can decode",
               r->path ? r->path : "the blob");
    return;
  }
  r->width = (int)pixGetWidth(pix);
  r->height = (int)pixGetHeight(pix);
  TessBaseAPI *api = r->e->api;
  TessBaseAPISetImage2(api, pix);
  if (TessBaseAPIRecognize(api, NULL) != 0) {
    snprintf(r->err, sizeof r->err, "ocr: tesseract failed to recognise %s",
             r->path ? r->path : "the blob");
    TessBaseAPIClear(api);
    pixDestroy(&pix);
    return;
  }
  r->text = TessBaseAPIGetUTF8Text(api);
  r->mean_conf = TessBaseAPIMeanTextConf(api);
  TessResultIterator *it = TessBaseAPIGetIterator(api);
  if (it) {
    TessPageIterator *pit = TessResultIteratorGetPageIterator(it);
    do {
      char *w = TessResultIteratorGetUTF8Text(it, RIL_WORD);
      if (!w) continue;
      if (!*w) {
        TessDeleteText(w);
        continue;
      }
      if (r->nwords == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        ocr_word *nw = realloc(r->words, cap * sizeof *nw);
        if (!nw) {
          TessDeleteText(w);
          break;
        }
        r->words = nw;
        r->cap = cap;
      }
      int left = 0, top = 0, right = 0, bottom = 0;
      TessPageIteratorBoundingBox(pit, RIL_WORD, &left, &top, &right, &bottom);
      r->words[r->nwords++] = (ocr_word){
          w, TessResultIteratorConfidence(it, RIL_WORD), left, top, right - left, bottom - top};
    } while (TessResultIteratorNext(it, RIL_WORD));
    TessResultIteratorDelete(it);
  }
  TessBaseAPIClear(api);
  pixDestroy(&pix);
}

static int recognize_finish(lua_State *L, void *data) {
  recognize_job *r = data;
  if (r->err[0]) return sl_push_fail(L, "EOCR", "%s", r->err);
  lua_createtable(L, 0, 5);
  lua_pushstring(L, r->text ? r->text : "");
  lua_setfield(L, -2, "text");
  lua_pushinteger(L, r->mean_conf);
  lua_setfield(L, -2, "confidence");
  lua_pushinteger(L, r->width);
  lua_setfield(L, -2, "width");
  lua_pushinteger(L, r->height);
  lua_setfield(L, -2, "height");
  lua_createtable(L, (int)r->nwords, 0);
  for (size_t i = 0; i < r->nwords; i++) {
    ocr_word *w = &r->words[i];
    lua_createtable(L, 0, 6);
    lua_pushstring(L, w->text);
    lua_setfield(L, -2, "text");
    lua_pushnumber(L, w->conf);
    lua_setfield(L, -2, "conf");
    lua_pushinteger(L, w->x);
    lua_setfield(L, -2, "x");
    lua_pushinteger(L, w->y);
    lua_setfield(L, -2, "y");
    lua_pushinteger(L, w->w);
    lua_setfield(L, -2, "w");
    lua_pushinteger(L, w->h);
    lua_setfield(L, -2, "h");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "words");
  return 1;
}

static void recognize_free(void *data) {
  recognize_job *r = data;
  engine *e = r->e;
  e->busy = 0;
  if (e->closed) engine_free(e);
  for (size_t i = 0; i < r->nwords; i++) TessDeleteText(r->words[i].text);
  free(r->words);
  if (r->text) TessDeleteText(r->text);
  free(r->path);
  sl_blob_release(r->enc);
  free(r);
}

static const sl_job_class recognize_class = {"ocr.recognize", recognize_run, recognize_finish,
                                             recognize_free};

static engine *check_engine(lua_State *L) {
  engine_ud *ud = luaL_checkudata(L, 1, ENGINE_MT);
  sl_check_open(L, ud->e, "ocr engine");
  return ud->e;
}

/* engine:recognize(path | blob, fn) -> job, or nil, msg, "EBUSY" while another job uses
 * this engine. */
static int engine_recognize(lua_State *L) {
  engine *e = check_engine(L);
  int is_path = lua_type(L, 2) == LUA_TSTRING;
  if (!is_path && !sl_blob_to(L, 2)) luaL_typeerror(L, 2, "image path or encoded image blob");
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (e->busy) return sl_push_fail(L, "EBUSY", "ocr: the engine is busy with another job");
  recognize_job *r = calloc(1, sizeof *r);
  if (!r) return luaL_error(L, "out of memory");
  if (is_path) {
    r->path = strdup(lua_tostring(L, 2));
    if (!r->path) {
      free(r);
      return luaL_error(L, "out of memory");
    }
  } else {
    r->enc = sl_blob_retain(sl_blob_check(L, 2));
  }
  r->e = e;
  e->busy = 1; /* cleared by recognize_free, whatever happens to the job */
  return sl_job_submit_cpu(L, 3, &recognize_class, r);
}

static int engine_busy(lua_State *L) {
  engine_ud *ud = luaL_checkudata(L, 1, ENGINE_MT);
  lua_pushboolean(L, ud->e && ud->e->busy);
  return 1;
}

/* __gc, __close and :close share this idempotent function. An engine in use by a job is
 * freed when that job ends. */
static int engine_close(lua_State *L) {
  engine_ud *ud = luaL_checkudata(L, 1, ENGINE_MT);
  engine *e = ud->e;
  ud->e = NULL;
  if (!e) return 0;
  if (e->busy)
    e->closed = 1;
  else
    engine_free(e);
  return 0;
}

static int engine_tostring(lua_State *L) {
  engine_ud *ud = luaL_checkudata(L, 1, ENGINE_MT);
  lua_pushfstring(L, "sluice.ocr.engine (%s)", !ud->e ? "closed" : ud->e->busy ? "busy" : "idle");
  return 1;
}

static int l_version(lua_State *L) {
  lua_pushstring(L, TessVersion());
  return 1;
}

int luaopen_sluice_ocr(lua_State *L) {
  static int quiet = 0;
  if (!quiet) {
    /* Leptonica prints decoding errors to stderr; ours carry the file name instead. */
    setMsgSeverity(L_SEVERITY_NONE);
    quiet = 1;
  }
  static const luaL_Reg methods[] = {{"recognize", engine_recognize},
                                     {"busy", engine_busy},
                                     {"close", engine_close},
                                     {NULL, NULL}};
  if (luaL_newmetatable(L, ENGINE_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, engine_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, engine_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, engine_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"open", l_open}, {"version", l_version}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
