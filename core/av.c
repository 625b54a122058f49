/* av.c: the FFmpeg adapter (see av.h). The only file that includes FFmpeg headers.
 *
 * Inputs are opened with a protocol whitelist (file, http, https, tcp, tls, crypto, data:
 * enough for local files, plain URLs and HLS playlists with AES segments) and an interrupt
 * callback wired to the caller's cancel hook, so a cancelled job stops inside network reads.
 * Readers keep all decoder state in their struct, so a reader can continue on another worker
 * thread for the next job. Readers of one local MP4 open at once share its demuxer (see
 * "shared inputs").
 */
#include "av.h"

#include <errno.h>
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libavutil/mem.h>
#include <libavutil/opt.h>
#include <libavutil/pixdesc.h>
#include <libavutil/time.h>
#include <libswresample/swresample.h>
#include <libswscale/swscale.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define PROTOCOLS "file,http,https,tcp,tls,crypto,data,httpproxy"

/* Inputs opened since the start, open now, and the most open at once (see sl_av_inputs). */
static _Atomic long inputs_opened, inputs_open, inputs_peak;

void sl_av_inputs(long *opened, long *open, long *peak) {
  if (opened) *opened = inputs_opened;
  if (open) *open = inputs_open;
  if (peak) *peak = inputs_peak;
}

static void count_open(void) {
  inputs_opened++;
  long now = ++inputs_open, peak = inputs_peak;
  while (now > peak && !atomic_compare_exchange_weak(&inputs_peak, &peak, now)) {
  }
}

/* Closes an input open_input opened (NULL is ignored). */
static void close_input(AVFormatContext **fmt) {
  if (!*fmt) return;
  avformat_close_input(fmt);
  inputs_open--;
}

static void set_err(char *err, size_t errlen, const char *url, const char *what, int averr) {
  if (!err || errlen == 0) return;
  char buf[AV_ERROR_MAX_STRING_SIZE] = "";
  if (averr) av_strerror(averr, buf, sizeof buf);
  if (what && averr)
    snprintf(err, errlen, "%s: %s: %s", url, what, buf);
  else if (what)
    snprintf(err, errlen, "%s: %s", url, what);
  else
    snprintf(err, errlen, "%s: %s", url, buf);
}

/* FFmpeg's own io_open, which the guard in open_input calls for every open it lets through
 * (the same function for every context: saved once, from a context made for that). */
static int (*default_io_open)(AVFormatContext *s, AVIOContext **pb, const char *url, int flags,
                              AVDictionary **options);

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void do_init(void) {
  const char *lvl = getenv("SLUICE_FFMPEG_LOG");
  int level = AV_LOG_QUIET;
  if (lvl) {
    if (!strcmp(lvl, "error"))
      level = AV_LOG_ERROR;
    else if (!strcmp(lvl, "warning"))
      level = AV_LOG_WARNING;
    else if (!strcmp(lvl, "info"))
      level = AV_LOG_INFO;
    else if (!strcmp(lvl, "debug"))
      level = AV_LOG_DEBUG;
  }
  av_log_set_level(level);
  /* No single FFmpeg allocation may be larger than this: a demuxer that sizes a buffer by a
   * length read from the file (the WAV reader's RIFF INFO tags: an 86-byte file made it
   * allocate and zero 1.9 GB; fuzz_media) then fails with ENOMEM, which the input reports as
   * its one-line error. The largest real allocation is a frame (an 8K RGBA picture: 133 MB)
   * or the index of a 12-hour input (~110 MB). SLUICE_FFMPEG_MAX_ALLOC (bytes) overrides. */
  size_t max_alloc = (size_t)256 << 20;
  const char *ma = getenv("SLUICE_FFMPEG_MAX_ALLOC");
  if (ma && strtoull(ma, NULL, 10) > 0) max_alloc = (size_t)strtoull(ma, NULL, 10);
  av_max_alloc(max_alloc);
  AVFormatContext *probe = avformat_alloc_context();
  if (probe) {
    default_io_open = probe->io_open;
    avformat_free_context(probe);
  }
}

void sl_av_init(void) { pthread_once(&init_once, do_init); }

#define OPEN_TIMEOUT_DEFAULT_US (30 * (int64_t)1000000)
static _Atomic int64_t open_timeout_us = OPEN_TIMEOUT_DEFAULT_US;

void sl_av_set_open_timeout(double seconds) {
  open_timeout_us = seconds > 0 ? (int64_t)(seconds * 1e6) : OPEN_TIMEOUT_DEFAULT_US;
}

double sl_av_open_timeout(void) { return open_timeout_us / 1e6; }

static int past_open_deadline(const sl_av_cancel *c) {
  return c && c->open_deadline && av_gettime_relative() > c->open_deadline;
}

static int interrupt_cb(void *arg) {
  const sl_av_cancel *c = arg;
  return c && ((c->cancelled && c->cancelled(c->arg)) || past_open_deadline(c));
}

static int is_cancelled(const sl_av_cancel *c) { return c && c->cancelled && c->cancelled(c->arg); }

/* At most this many nested opens (variant playlists, segments) while an input opens: a
 * demuxer that opens more is following playlists that name each other round a cycle. */
#define MAX_NESTED_OPENS 256

/* The io_open of every input: while the input opens, a playlist that opens its own URL again
 * (a master playlist naming itself, which FFmpeg's HLS demuxer follows until memory runs out,
 * without ever asking the interrupt callback) or a demuxer that makes more than
 * MAX_NESTED_OPENS opens (playlists naming each other) is refused at once. */
static sl_av_cancel *input_cancel(const AVFormatContext *s);

static int guarded_io_open(AVFormatContext *s, AVIOContext **pb, const char *url, int flags,
                           AVDictionary **options) {
  sl_av_cancel *c = input_cancel(s);
  if (c && c->open_deadline && c->open_url) {
    if (c->nested_opens++ > 0 && url && !strcmp(url, c->open_url)) {
      c->open_refused = "a playlist that names itself (directly or through another playlist)";
      return AVERROR(ELOOP);
    }
    if (c->nested_opens > MAX_NESTED_OPENS) {
      c->open_refused =
          "more than 256 nested playlists or segments opened while opening it "
          "(playlists that name each other?)";
      return AVERROR(ELOOP);
    }
  }
  return default_io_open(s, pb, url, flags, options);
}

/* The cause of a failed open: cancelled, past the open deadline, or FFmpeg's error rc. */
static void open_failed(char *err, size_t errlen, const char *url, const sl_av_cancel *cancel,
                        const char *what, int rc) {
  if (is_cancelled(cancel)) {
    set_err(err, errlen, url, "cancelled", 0);
  } else if (cancel && cancel->open_refused) {
    set_err(err, errlen, url, cancel->open_refused, 0);
  } else if (past_open_deadline(cancel)) {
    char msg[160];
    snprintf(msg, sizeof msg,
             "not opened within %g s (media.open_timeout): an input that never settles, such "
             "as a playlist naming itself, or a server too slow to answer",
             sl_av_open_timeout());
    set_err(err, errlen, url, msg, 0);
  } else {
    set_err(err, errlen, url, what, rc);
  }
}

/* A demuxer's interrupt hook when readers come and go: the demuxer's protocol layer keeps
 * its own copy of the callback and opaque pointer from the open, so the pointer must stay
 * valid as long as the demuxer; the hook says whose cancel applies now. */
typedef struct input_hook {
  sl_av_cancel *cancel;
} input_hook;

static int hook_interrupt_cb(void *arg) {
  const input_hook *h = arg;
  return interrupt_cb(h->cancel);
}

static int open_input_hooked(const char *url, AVFormatContext **out, sl_av_cancel *cancel,
                             input_hook *hook, char *err, size_t errlen);

/* The cancel hook an input's interrupt callback asks now. */
static sl_av_cancel *input_cancel(const AVFormatContext *s) {
  if (s->interrupt_callback.callback == hook_interrupt_cb)
    return ((const input_hook *)s->interrupt_callback.opaque)->cancel;
  return s->interrupt_callback.opaque;
}

/* Opens url and reads stream info. cancel must outlive the context (it is the interrupt
 * callback's opaque pointer). Returns 0 or -1 with err set. */
static int open_input(const char *url, AVFormatContext **out, sl_av_cancel *cancel, char *err,
                      size_t errlen) {
  return open_input_hooked(url, out, cancel, NULL, err, errlen);
}

/* As open_input; with a hook, the demuxer's interrupt callback asks hook->cancel (set to
 * cancel here). */
static int open_input_hooked(const char *url, AVFormatContext **out, sl_av_cancel *cancel,
                             input_hook *hook, char *err, size_t errlen) {
  sl_av_init();
  AVFormatContext *fmt = avformat_alloc_context();
  if (!fmt) {
    set_err(err, errlen, url, "out of memory", 0);
    return -1;
  }
  if (hook) {
    hook->cancel = cancel;
    fmt->interrupt_callback.callback = hook_interrupt_cb;
    fmt->interrupt_callback.opaque = hook;
  } else {
    fmt->interrupt_callback.callback = interrupt_cb;
    fmt->interrupt_callback.opaque = cancel;
  }
  if (default_io_open) fmt->io_open = guarded_io_open;
  AVDictionary *opts = NULL;
  av_dict_set(&opts, "protocol_whitelist", PROTOCOLS, 0);
  if (strstr(url, "://")) av_dict_set(&opts, "rw_timeout", "30000000", 0);
  if (cancel) {
    cancel->open_deadline = av_gettime_relative() + open_timeout_us;
    cancel->open_url = url;
    cancel->nested_opens = 0;
    cancel->open_refused = NULL;
  }
  int rc = avformat_open_input(&fmt, url, NULL, &opts);
  av_dict_free(&opts);
  if (rc < 0) {
    open_failed(err, errlen, url, cancel, NULL, rc);
    if (cancel) cancel->open_deadline = 0;
    return -1;
  }
  rc = avformat_find_stream_info(fmt, NULL);
  if (rc < 0) {
    open_failed(err, errlen, url, cancel, "cannot read stream info", rc);
    if (cancel) cancel->open_deadline = 0;
    avformat_close_input(&fmt);
    return -1;
  }
  if (cancel) cancel->open_deadline = 0;
  if (cancel && cancel->open_refused && fmt->nb_streams == 0) {
    /* (the demuxer skipped the refused playlist and found nothing else) */
    set_err(err, errlen, url, cancel->open_refused, 0);
    avformat_close_input(&fmt);
    return -1;
  }
  count_open();
  *out = fmt;
  return 0;
}

/* ---- shared inputs -----------------------------------------------------------------------
 *
 * Readers of one local MP4/MOV file that are open at the same time share its demuxer. The MP4
 * demuxer builds the index of every sample of every track while it opens (an audio reader
 * holds the video's index too): about 9 MB per reader for a two-hour lecture, and the lecture
 * pipeline reads its input three ways at once (audio chunks, slide samples, slide grabs).
 *
 * Each reader reads its own stream through a cursor. A turn holds the input's lock: when
 * another reader used the demuxer since this one's last turn, the demuxer is moved back to
 * just after this reader's last packet (every MP4 sample is in the index, so the seek lands
 * on that exact packet; the decoder is not flushed and goes on as if nothing happened), the
 * other streams are discarded, and up to CURSOR_BATCH packets are read into the cursor's
 * queue. Decoding happens outside the lock. Other inputs (other containers, URLs) keep a
 * demuxer per reader: their seeks are not exact or not cheap. */

#define CURSOR_BATCH 32

typedef struct shared_input {
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
  AVFormatContext *fmt; /* NULL while the first reader opens it */
  input_hook *hook;     /* its interrupt hook: the cancel of the reader whose turn it is */
  int refs;             /* cursors using it (registry lock) */
  pthread_mutex_t lock; /* held for every use of fmt once it is open */
  const void *owner;    /* the cursor whose place the demuxer is at */
  struct shared_input *next;
} shared_input;

typedef struct cursor {
  AVFormatContext *fmt; /* this reader's demuxer, or the shared one */
  shared_input *shared; /* NULL: fmt is this reader's own */
  input_hook *own_hook; /* the interrupt hook of an own demuxer of a local file */
  sl_av_cancel *cancel; /* the reader's, for the interrupt callback during its turns */
  int stream;           /* the stream this reader reads (set after open_decoder) */
  int64_t last_dts;     /* dts of the last packet of the stream read (INT64_MIN: none) */
  int64_t seek_ts;      /* the last seek, redone when displaced before a packet was read */
  int seek_flags, sought, at_end, pending_rc;
  AVPacket *queue[CURSOR_BATCH];
  int qhead, qlen;
} cursor;

static pthread_mutex_t shared_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t shared_registry_cond = PTHREAD_COND_INITIALIZER;
static shared_input *shared_inputs;

static int same_file(const shared_input *e, const struct stat *st) {
  return e->dev == st->st_dev && e->ino == st->st_ino && e->size == st->st_size &&
         e->mtime.tv_sec == st->st_mtim.tv_sec && e->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

/* A local regular file's identity, or 0 for anything else (URLs, pipes, devices). */
static int local_file(const char *url, struct stat *st) {
  if (strstr(url, "://") || !strncmp(url, "file:", 5) || !strncmp(url, "pipe:", 5)) return 0;
  return stat(url, st) == 0 && S_ISREG(st->st_mode);
}

/* The open shared input of this file with a reference taken, waiting while another reader
 * opens it; NULL when there is none (then, with claim, an entry is made that the caller must
 * publish or drop: *claimed). */
static shared_input *shared_find(const struct stat *st, int claim, shared_input **claimed) {
  *claimed = NULL;
  pthread_mutex_lock(&shared_registry_lock);
  for (;;) {
    shared_input *e = shared_inputs;
    while (e && !same_file(e, st)) e = e->next;
    if (e && e->fmt) {
      e->refs++;
      pthread_mutex_unlock(&shared_registry_lock);
      return e;
    }
    if (!e) break;
    pthread_cond_wait(&shared_registry_cond, &shared_registry_lock); /* being opened */
  }
  if (claim) {
    shared_input *e = calloc(1, sizeof *e);
    if (e) {
      e->dev = st->st_dev;
      e->ino = st->st_ino;
      e->size = st->st_size;
      e->mtime = st->st_mtim;
      e->refs = 1;
      pthread_mutex_init(&e->lock, NULL);
      e->next = shared_inputs;
      shared_inputs = e;
      *claimed = e;
    }
  }
  pthread_mutex_unlock(&shared_registry_lock);
  return NULL;
}

static void shared_unlink(shared_input *e) {
  shared_input **pp = &shared_inputs;
  while (*pp && *pp != e) pp = &(*pp)->next;
  if (*pp) *pp = e->next;
}

/* Publishes a claimed entry with its open demuxer (fmt) and the hook it was opened with
 * (which it takes ownership of) or, when fmt is NULL, drops it. */
static void shared_publish(shared_input *e, AVFormatContext *fmt, input_hook *hook) {
  pthread_mutex_lock(&shared_registry_lock);
  if (fmt) {
    e->fmt = fmt;
    e->hook = hook;
  } else {
    shared_unlink(e);
    pthread_mutex_destroy(&e->lock);
    free(e);
  }
  pthread_cond_broadcast(&shared_registry_cond);
  pthread_mutex_unlock(&shared_registry_lock);
}

/* Drops a reference; the last one closes the demuxer. owner: the cursor letting go, cancel
 * its interrupt hook (which the demuxer must not call once the reader is gone). */
static void shared_release(shared_input *e, const void *owner, const sl_av_cancel *cancel) {
  pthread_mutex_lock(&e->lock);
  if (e->owner == owner) e->owner = NULL;
  if (e->hook->cancel == cancel) e->hook->cancel = NULL;
  pthread_mutex_unlock(&e->lock);
  pthread_mutex_lock(&shared_registry_lock);
  int last = --e->refs == 0;
  if (last) shared_unlink(e);
  pthread_mutex_unlock(&shared_registry_lock);
  if (!last) return;
  close_input(&e->fmt);
  free(e->hook);
  pthread_mutex_destroy(&e->lock);
  free(e);
}

static int is_mp4_family(const AVFormatContext *fmt) {
  return fmt->iformat && !strncmp(fmt->iformat->name, "mov,", 4);
}

/* Opens url for a reader: joins the shared demuxer of a local MP4 open already (or being
 * opened), or opens one (shared when it is a local MP4). Returns 0 or -1 with err set. */
static int cursor_open(cursor *c, const char *url, sl_av_cancel *cancel, char *err, size_t errlen) {
  memset(c, 0, sizeof *c);
  c->cancel = cancel;
  c->last_dts = INT64_MIN;
  struct stat st;
  shared_input *claimed = NULL;
  if (local_file(url, &st)) {
    shared_input *e = shared_find(&st, 1, &claimed);
    if (e) {
      c->shared = e;
      c->fmt = e->fmt;
      return 0;
    }
  }
  AVFormatContext *fmt = NULL;
  input_hook *hook = NULL;
  if (claimed && !(hook = calloc(1, sizeof *hook))) {
    shared_publish(claimed, NULL, NULL);
    set_err(err, errlen, url, "out of memory", 0);
    return -1;
  }
  if (open_input_hooked(url, &fmt, cancel, hook, err, errlen) < 0) {
    if (claimed) shared_publish(claimed, NULL, NULL);
    free(hook);
    return -1;
  }
  if (claimed && is_mp4_family(fmt)) {
    shared_publish(claimed, fmt, hook);
    c->shared = claimed;
  } else if (claimed) {
    shared_publish(claimed, NULL, NULL);
    c->own_hook = hook; /* the demuxer calls it until it is closed */
  }
  c->fmt = fmt;
  return 0;
}

/* Holds the demuxer for a use outside reading (opening the decoder reads its streams). */
static void cursor_lock(cursor *c) {
  if (c->shared) pthread_mutex_lock(&c->shared->lock);
}
static void cursor_unlock(cursor *c) {
  if (c->shared) pthread_mutex_unlock(&c->shared->lock);
}

/* Opens the decoder of the best stream of `type` and makes it the cursor's stream; an own
 * demuxer discards the other streams from now on (a shared one, per turn). */
static int open_decoder(AVFormatContext *fmt, enum AVMediaType type, int threads, int *stream,
                        AVCodecContext **out, const char *url, char *err, size_t errlen);
static int cursor_open_decoder(cursor *c, enum AVMediaType type, int threads, int *stream,
                               AVCodecContext **out, const char *url, char *err, size_t errlen) {
  cursor_lock(c);
  int rc = open_decoder(c->fmt, type, threads, stream, out, url, err, errlen);
  cursor_unlock(c);
  if (rc < 0) return rc;
  c->stream = *stream;
  if (!c->shared)
    for (unsigned i = 0; i < c->fmt->nb_streams; i++)
      if ((int)i != c->stream) c->fmt->streams[i]->discard = AVDISCARD_ALL;
  return 0;
}

static void cursor_drop_queue(cursor *c) {
  for (int i = 0; i < c->qlen; i++) av_packet_free(&c->queue[(c->qhead + i) % CURSOR_BATCH]);
  c->qhead = c->qlen = 0;
}

static void cursor_close(cursor *c) {
  cursor_drop_queue(c);
  if (c->shared) {
    shared_release(c->shared, c, c->cancel);
    c->shared = NULL;
    c->fmt = NULL;
  } else {
    close_input(&c->fmt);
    free(c->own_hook);
    c->own_hook = NULL;
  }
}

/* Appends pkt (moved) to the cursor's queue, which has room. Returns 0 or AVERROR(ENOMEM). */
static int cursor_push(cursor *c, AVPacket *pkt) {
  AVPacket *q = av_packet_alloc();
  if (!q) {
    av_packet_unref(pkt);
    return AVERROR(ENOMEM);
  }
  if (pkt->dts != AV_NOPTS_VALUE) c->last_dts = pkt->dts;
  av_packet_move_ref(q, pkt);
  c->queue[(c->qhead + c->qlen++) % CURSOR_BATCH] = q;
  return 0;
}

/* Moves the demuxer to this cursor's next packet: the first index entry after the last packet
 * it read. The MP4 demuxer seeks by presentation time (it shifts the time by the stream's
 * composition offset before searching the decoding times of its index), so the seek goes to at
 * or before that entry and the packets before it are read and dropped; a seek that lands past
 * it is made again further back. The entry's packet goes to the queue. Returns 0 or an AVERROR
 * (AVERROR_EOF: no packet left). */
static int cursor_resume(cursor *c, AVPacket *pkt) {
  AVFormatContext *fmt = c->fmt;
  AVStream *st = fmt->streams[c->stream];
  const AVIndexEntry *e =
      avformat_index_get_entry_from_timestamp(st, c->last_dts + 1, AVSEEK_FLAG_ANY);
  if (!e) return AVERROR_EOF;
  int64_t next = e->timestamp;
  int64_t step = st->time_base.num > 0 ? av_rescale_q(1, (AVRational){1, 1}, st->time_base) : 1;
  if (step < 1) step = 1;
  for (int64_t back = 0; back <= 64 * step; back = back ? back * 2 : step) {
    int rc = av_seek_frame(fmt, c->stream, next - back, AVSEEK_FLAG_BACKWARD | AVSEEK_FLAG_ANY);
    if (rc < 0) return rc;
    for (;;) {
      rc = av_read_frame(fmt, pkt);
      if (rc < 0) return rc;
      if (pkt->stream_index != c->stream || pkt->dts == AV_NOPTS_VALUE || pkt->dts < next) {
        av_packet_unref(pkt);
        continue;
      }
      if (pkt->dts == next) return cursor_push(c, pkt);
      av_packet_unref(pkt); /* landed past it: further back */
      break;
    }
  }
  return AVERROR_BUG;
}

/* With the shared input's lock held: makes this cursor the demuxer's user (its interrupt
 * callback, its stream only) and, unless reposition is 0, moves the demuxer back to where
 * this cursor left it (pkt: scratch). Returns 0, or AVERROR_EOF when its stream has no packet
 * left. */
static int cursor_take(cursor *c, int reposition, AVPacket *pkt) {
  AVFormatContext *fmt = c->fmt;
  c->shared->hook->cancel = c->cancel;
  if (c->shared->owner == c) return 0;
  c->shared->owner = c;
  for (unsigned i = 0; i < fmt->nb_streams; i++)
    fmt->streams[i]->discard = (int)i == c->stream ? AVDISCARD_DEFAULT : AVDISCARD_ALL;
  if (!reposition) return 0;
  int rc;
  if (c->last_dts != INT64_MIN) {
    rc = cursor_resume(c, pkt);
  } else if (c->sought) {
    rc = av_seek_frame(fmt, c->stream, c->seek_ts, c->seek_flags);
  } else {
    const AVIndexEntry *first = avformat_index_get_entry(fmt->streams[c->stream], 0);
    rc = first ? av_seek_frame(fmt, c->stream, first->timestamp,
                               AVSEEK_FLAG_ANY | AVSEEK_FLAG_BACKWARD)
               : AVERROR_EOF;
  }
  /* not in place: the next turn moves it again */
  if (rc < 0) c->shared->owner = NULL;
  return rc;
}

/* The next packet of the reader's stream (packets of other streams may come from an own
 * demuxer; callers skip them as before). Returns 0 or a negative AVERROR, as av_read_frame. */
static int cursor_read(cursor *c, AVPacket *pkt) {
  if (!c->shared) return av_read_frame(c->fmt, pkt);
  if (c->qlen == 0 && !c->pending_rc) {
    if (c->at_end) return AVERROR_EOF;
    pthread_mutex_lock(&c->shared->lock);
    int rc = cursor_take(c, 1, pkt);
    while (rc >= 0 && c->qlen < CURSOR_BATCH) {
      rc = av_read_frame(c->fmt, pkt);
      if (rc < 0) break;
      if (pkt->stream_index != c->stream) {
        av_packet_unref(pkt);
        continue;
      }
      rc = cursor_push(c, pkt);
    }
    pthread_mutex_unlock(&c->shared->lock);
    if (rc < 0) {
      c->pending_rc = rc;
      if (rc == AVERROR_EOF) c->at_end = 1;
    }
  }
  if (c->qlen > 0) {
    AVPacket *q = c->queue[c->qhead];
    c->qhead = (c->qhead + 1) % CURSOR_BATCH;
    c->qlen--;
    av_packet_move_ref(pkt, q);
    av_packet_free(&q);
    return 0;
  }
  int rc = c->pending_rc;
  if (rc != AVERROR_EOF) c->pending_rc = 0; /* a transient error is reported once */
  return rc;
}

/* Seeks the reader's stream as av_seek_frame does; drops what was read ahead. */
static int cursor_seek(cursor *c, int64_t ts, int flags) {
  cursor_drop_queue(c);
  c->pending_rc = c->at_end = 0;
  c->last_dts = INT64_MIN;
  if (!c->shared) return av_seek_frame(c->fmt, c->stream, ts, flags);
  pthread_mutex_lock(&c->shared->lock);
  cursor_take(c, 0, NULL);
  int rc = av_seek_frame(c->fmt, c->stream, ts, flags);
  pthread_mutex_unlock(&c->shared->lock);
  c->seek_ts = ts;
  c->seek_flags = flags;
  c->sought = rc >= 0;
  return rc;
}

static int open_decoder(AVFormatContext *fmt, enum AVMediaType type, int threads, int *stream,
                        AVCodecContext **out, const char *url, char *err, size_t errlen) {
  const AVCodec *codec = NULL;
  int idx = av_find_best_stream(fmt, type, -1, -1, &codec, 0);
  if (idx < 0) {
    if (idx == AVERROR_DECODER_NOT_FOUND)
      set_err(err, errlen, url, "no decoder for its stream", 0);
    else
      set_err(err, errlen, url, type == AVMEDIA_TYPE_AUDIO ? "no audio stream" : "no video stream",
              0);
    return -1;
  }
  AVCodecContext *dec = avcodec_alloc_context3(codec);
  if (!dec) {
    set_err(err, errlen, url, "out of memory", 0);
    return -1;
  }
  int rc = avcodec_parameters_to_context(dec, fmt->streams[idx]->codecpar);
  if (rc >= 0) {
    dec->pkt_timebase = fmt->streams[idx]->time_base;
    if (type == AVMEDIA_TYPE_VIDEO) {
      dec->thread_count = threads;
      dec->thread_type = FF_THREAD_FRAME | FF_THREAD_SLICE;
    }
    /* The decoder's own threads start here and inherit the calling thread's nice value (media
     * jobs run slightly below the loop thread, see media.c). */
    rc = avcodec_open2(dec, codec, NULL);
  }
  if (rc < 0) {
    set_err(err, errlen, url, "cannot open decoder", rc);
    avcodec_free_context(&dec);
    return -1;
  }
  *stream = idx;
  *out = dec;
  return 0;
}

/* ---- probe ------------------------------------------------------------------------------ */

/* Fills out from an open demuxer (which it does not close). Returns 0 or -1 with err set. */
static int describe_input(AVFormatContext *fmt, sl_media_info *out, const char *url, char *err,
                          size_t errlen) {
  out->duration = fmt->duration != AV_NOPTS_VALUE ? fmt->duration / (double)AV_TIME_BASE : -1;
  snprintf(out->container, sizeof out->container, "%s", fmt->iformat->name);
  out->bit_rate = (int)(fmt->bit_rate > INT32_MAX ? INT32_MAX : fmt->bit_rate);
  out->streams = calloc(fmt->nb_streams ? fmt->nb_streams : 1, sizeof *out->streams);
  if (!out->streams) {
    set_err(err, errlen, url, "out of memory", 0);
    return -1;
  }
  int usable = 0;
  for (unsigned i = 0; i < fmt->nb_streams; i++) {
    AVStream *st = fmt->streams[i];
    AVCodecParameters *par = st->codecpar;
    sl_media_stream *s = &out->streams[out->nstreams++];
    const char *type = av_get_media_type_string(par->codec_type);
    snprintf(s->type, sizeof s->type, "%s", type ? type : "unknown");
    snprintf(s->codec, sizeof s->codec, "%s", avcodec_get_name(par->codec_id));
    s->duration = st->duration != AV_NOPTS_VALUE ? st->duration * av_q2d(st->time_base) : -1;
    if (par->codec_type == AVMEDIA_TYPE_VIDEO) {
      s->width = par->width;
      s->height = par->height;
      AVRational r = st->avg_frame_rate.num ? st->avg_frame_rate : st->r_frame_rate;
      s->fps = r.den ? av_q2d(r) : 0;
      if (par->width > 0) usable++;
    } else if (par->codec_type == AVMEDIA_TYPE_AUDIO) {
      s->sample_rate = par->sample_rate;
      s->channels = par->ch_layout.nb_channels;
      if (par->sample_rate > 0) usable++;
    }
  }
  if (usable == 0) {
    sl_media_info_clear(out);
    set_err(err, errlen, url, "no audio or video stream", 0);
    return -1;
  }
  return 0;
}

/* A probe of a local MP4 that readers have open reads their demuxer instead of opening it
 * again (see shared inputs). */
int sl_av_probe(const char *url, sl_media_info *out, const sl_av_cancel *cancel, char *err,
                size_t errlen) {
  memset(out, 0, sizeof *out);
  struct stat st;
  shared_input *claimed;
  shared_input *e = local_file(url, &st) ? shared_find(&st, 0, &claimed) : NULL;
  if (e) {
    pthread_mutex_lock(&e->lock);
    int rc = describe_input(e->fmt, out, url, err, errlen);
    pthread_mutex_unlock(&e->lock);
    shared_release(e, NULL, NULL);
    return rc;
  }
  sl_av_cancel c = cancel ? *cancel : (sl_av_cancel){0};
  AVFormatContext *fmt = NULL;
  if (open_input(url, &fmt, &c, err, errlen) < 0) return -1;
  int rc = describe_input(fmt, out, url, err, errlen);
  close_input(&fmt);
  return rc;
}

void sl_media_info_clear(sl_media_info *info) {
  free(info->streams);
  info->streams = NULL;
  info->nstreams = 0;
}

/* ---- audio ------------------------------------------------------------------------------- */

struct sl_audio_reader {
  char *url;
  cursor in; /* the input (its demuxer may be shared: see shared inputs) */
  AVCodecContext *dec;
  SwrContext *swr;
  AVPacket *pkt;
  AVFrame *frame;
  int stream;
  int rate, channels;
  AVChannelLayout out_layout;
  /* the input format the resampler is set up for */
  int in_rate;
  int in_format;
  AVChannelLayout in_layout;
  /* converted samples not handed out yet */
  int16_t *buf;
  long buf_len, buf_pos, buf_cap; /* in sample frames */
  int input_eof, done;
  long total;
  int decode_errors;
  char last_error[SL_AV_ERRLEN];
  char warning[SL_AV_ERRLEN];
  sl_av_cancel cancel;
};

void sl_audio_set_cancel(sl_audio_reader *r, const sl_av_cancel *cancel) {
  r->cancel = cancel ? *cancel : (sl_av_cancel){0};
}

sl_audio_reader *sl_audio_open(const char *url, int rate, int channels, const sl_av_cancel *cancel,
                               char *err, size_t errlen) {
  sl_audio_reader *r = calloc(1, sizeof *r);
  if (!r || !(r->url = strdup(url))) {
    free(r);
    set_err(err, errlen, url, "out of memory", 0);
    return NULL;
  }
  sl_audio_set_cancel(r, cancel);
  r->rate = rate;
  r->channels = channels;
  av_channel_layout_default(&r->out_layout, channels);
  if (cursor_open(&r->in, url, &r->cancel, err, errlen) < 0 ||
      cursor_open_decoder(&r->in, AVMEDIA_TYPE_AUDIO, 1, &r->stream, &r->dec, url, err, errlen) <
          0) {
    sl_audio_close(r);
    return NULL;
  }
  r->pkt = av_packet_alloc();
  r->frame = av_frame_alloc();
  if (!r->pkt || !r->frame) {
    set_err(err, errlen, url, "out of memory", 0);
    sl_audio_close(r);
    return NULL;
  }
  return r;
}

static int ensure_buf(sl_audio_reader *r, long frames) {
  if (r->buf_len + frames <= r->buf_cap) return 0;
  long cap = r->buf_cap ? r->buf_cap : 4096;
  while (cap < r->buf_len + frames) cap *= 2;
  int16_t *nb = realloc(r->buf, (size_t)cap * (size_t)r->channels * sizeof *nb);
  if (!nb) return -1;
  r->buf = nb;
  r->buf_cap = cap;
  return 0;
}

/* Drains what the resampler still holds into the buffer. */
static int flush_swr(sl_audio_reader *r) {
  if (!r->swr) return 0;
  for (;;) {
    long n = swr_get_out_samples(r->swr, 0);
    if (n <= 0) n = 1024;
    if (ensure_buf(r, n) < 0) return AVERROR(ENOMEM);
    uint8_t *out = (uint8_t *)(r->buf + r->buf_len * r->channels);
    int got = swr_convert(r->swr, &out, (int)n, NULL, 0);
    if (got < 0) return got;
    if (got == 0) break;
    r->buf_len += got;
  }
  return 0;
}

static int convert_frame(sl_audio_reader *r, AVFrame *f) {
  AVChannelLayout in_layout;
  if (f->ch_layout.order == AV_CHANNEL_ORDER_UNSPEC || f->ch_layout.nb_channels == 0) {
    av_channel_layout_default(&in_layout, f->ch_layout.nb_channels ? f->ch_layout.nb_channels
                                                                   : r->dec->ch_layout.nb_channels);
  } else if (av_channel_layout_copy(&in_layout, &f->ch_layout) < 0) {
    return AVERROR(ENOMEM);
  }
  int rc = 0;
  if (!r->swr || r->in_rate != f->sample_rate || r->in_format != f->format ||
      av_channel_layout_compare(&r->in_layout, &in_layout) != 0) {
    if (r->swr) {
      rc = flush_swr(r);
      swr_free(&r->swr);
      if (rc < 0) goto out;
    }
    rc = swr_alloc_set_opts2(&r->swr, &r->out_layout, AV_SAMPLE_FMT_S16, r->rate, &in_layout,
                             f->format, f->sample_rate, 0, NULL);
    if (rc >= 0) rc = swr_init(r->swr);
    if (rc < 0) {
      swr_free(&r->swr);
      goto out;
    }
    av_channel_layout_uninit(&r->in_layout);
    av_channel_layout_copy(&r->in_layout, &in_layout);
    r->in_rate = f->sample_rate;
    r->in_format = f->format;
  }
  long n = swr_get_out_samples(r->swr, f->nb_samples);
  if (n < 0) {
    rc = (int)n;
    goto out;
  }
  if (ensure_buf(r, n) < 0) {
    rc = AVERROR(ENOMEM);
    goto out;
  }
  uint8_t *out = (uint8_t *)(r->buf + r->buf_len * r->channels);
  int got = swr_convert(r->swr, &out, (int)n, (const uint8_t **)f->extended_data, f->nb_samples);
  if (got < 0) {
    rc = got;
    goto out;
  }
  r->buf_len += got;
out:
  av_channel_layout_uninit(&in_layout);
  return rc;
}

/* Decodes until the buffer holds more samples or the input is done. Returns 0, or a negative
 * AVERROR for a failure that ends the reader. */
static int audio_fill(sl_audio_reader *r) {
  for (;;) {
    if (is_cancelled(&r->cancel)) return AVERROR_EXIT;
    int rc = avcodec_receive_frame(r->dec, r->frame);
    if (rc == 0) {
      rc = convert_frame(r, r->frame);
      av_frame_unref(r->frame);
      if (rc < 0) return rc;
      if (r->buf_len > r->buf_pos) return 0;
      continue;
    }
    if (rc == AVERROR_EOF) {
      rc = flush_swr(r);
      r->done = 1;
      return rc;
    }
    if (rc != AVERROR(EAGAIN)) {
      /* A broken frame: remember why, keep going with the next packet. */
      r->decode_errors++;
      set_err(r->last_error, sizeof r->last_error, r->url, "cannot decode audio", rc);
      if (r->input_eof) {
        r->done = 1;
        return flush_swr(r);
      }
    }
    if (r->input_eof) {
      /* the decoder was flushed already and asks for more: nothing will come */
      r->done = 1;
      return flush_swr(r);
    }
    rc = cursor_read(&r->in, r->pkt);
    if (rc < 0) {
      if (rc == AVERROR_EXIT || is_cancelled(&r->cancel)) return AVERROR_EXIT;
      if (rc != AVERROR_EOF)
        set_err(r->warning, sizeof r->warning, r->url, "input ended early", rc);
      r->input_eof = 1;
      avcodec_send_packet(r->dec, NULL);
      continue;
    }
    if (r->pkt->stream_index == r->stream) {
      rc = avcodec_send_packet(r->dec, r->pkt);
      if (rc < 0 && rc != AVERROR(EAGAIN)) {
        r->decode_errors++;
        set_err(r->last_error, sizeof r->last_error, r->url, "cannot decode audio", rc);
      }
    }
    av_packet_unref(r->pkt);
  }
}

/* The length of stream index in seconds as the file's header states it, or -1 when unknown. */
static double stated_seconds(const AVFormatContext *fmt, int index) {
  const AVStream *st = fmt->streams[index];
  if (st->duration != AV_NOPTS_VALUE && st->duration > 0)
    return (double)st->duration * av_q2d(st->time_base);
  if (fmt->duration != AV_NOPTS_VALUE && fmt->duration > 0)
    return (double)fmt->duration / AV_TIME_BASE;
  return -1;
}

/* Writes to warning (if empty) that the input was cut short when the stream's header states
 * clearly more seconds (over 2%, at least 1 s) than the `got` seconds that were `what`. */
static void note_cut_short(char *warning, size_t len, const char *url, const AVFormatContext *fmt,
                           int index, double got, const char *what) {
  if (warning[0]) return;
  double stated = stated_seconds(fmt, index);
  double slack = stated * 0.02 > 1.0 ? stated * 0.02 : 1.0;
  if (stated > 0 && stated - got > slack)
    snprintf(warning, len,
             "%s: input ended early: %.1f s of %.1f s of %s (truncated or damaged file)", url, got,
             stated, what);
}

/* At the end of the audio: a file whose header promises clearly more than could be decoded was
 * cut short (a truncated download, a copy that stopped): say so in r->warning. Some demuxers
 * report such a file's end as a plain end of file. */
static void check_length(sl_audio_reader *r) {
  if (r->total == 0 || r->rate <= 0) return;
  note_cut_short(r->warning, sizeof r->warning, r->url, r->in.fmt, r->stream,
                 (double)r->total / r->rate, "audio decoded");
}

long sl_audio_read(sl_audio_reader *r, int16_t *dst, long frames, char *err, size_t errlen) {
  long got = 0;
  while (got < frames) {
    if (r->buf_pos < r->buf_len) {
      long n = r->buf_len - r->buf_pos;
      if (n > frames - got) n = frames - got;
      memcpy(dst + got * r->channels, r->buf + r->buf_pos * r->channels,
             (size_t)n * (size_t)r->channels * sizeof *dst);
      r->buf_pos += n;
      got += n;
      continue;
    }
    r->buf_pos = r->buf_len = 0;
    if (r->done) break;
    int rc = audio_fill(r);
    if (rc == AVERROR_EXIT) {
      set_err(err, errlen, r->url, "cancelled", 0);
      return -1;
    }
    if (rc < 0) {
      if (r->total + got == 0) {
        set_err(err, errlen, r->url, "cannot decode audio", rc);
        return -1;
      }
      set_err(r->warning, sizeof r->warning, r->url, "decoding stopped", rc);
      r->done = 1;
    }
  }
  r->total += got;
  if (r->done) check_length(r);
  if (got == 0 && r->done && r->total == 0 && r->decode_errors > 0) {
    snprintf(err, errlen, "%s", r->last_error);
    return -1;
  }
  if (got == 0 && r->done && r->total == 0) {
    if (r->warning[0])
      snprintf(err, errlen, "%s", r->warning);
    else
      set_err(err, errlen, r->url, "no audio could be decoded", 0);
    return -1;
  }
  return got;
}

const char *sl_audio_warning(const sl_audio_reader *r) { return r->warning[0] ? r->warning : NULL; }

void sl_audio_close(sl_audio_reader *r) {
  if (!r) return;
  swr_free(&r->swr);
  avcodec_free_context(&r->dec);
  cursor_close(&r->in);
  av_packet_free(&r->pkt);
  av_frame_free(&r->frame);
  av_channel_layout_uninit(&r->in_layout);
  av_channel_layout_uninit(&r->out_layout);
  free(r->buf);
  free(r->url);
  free(r);
}

/* ---- video frames ---------------------------------------------------------------------- */

struct sl_frame_reader {
  char *url;
  cursor in; /* the input (its demuxer may be shared: see shared inputs) */
  AVCodecContext *dec;
  AVStream *st;
  int stream;
  AVPacket *pkt;
  AVFrame *cur;  /* the selected frame */
  AVFrame *tmp;  /* the frame being decoded */
  AVFrame *prev; /* scene detection: the previous frame (luma planes of YUV/gray input) */
  uint8_t *prev_gray, *cur_gray; /* scene detection on other formats: converted luma */
  size_t gray_cap;
  double prev_mafd;
  int have_prev;
  double last_scored;    /* scene sampling (opts.sample): t of the last scored frame */
  double mafd, cur_mafd; /* the last scored frame's mafd (-1: none); the selected frame's */
  int started;           /* opts.start: the first seek was made */
  long scored;           /* frames scored (SL_FRAMES_SCENE) */
  int prefixed;          /* opts.start: decoded again from the keyframe before (seek_before) */
  sl_frame_opts opts;
  double *times;
  long target_index;    /* every: k of the next target k*every; times: index into times */
  double last_selected; /* t of the last selected frame */
  double half_frame;    /* half a frame duration in seconds */
  double origin;        /* the input's start time in seconds */
  int64_t last_pts;     /* stream pts of the last decoded frame */
  int64_t last_dts;     /* dts of the last packet sent to the decoder (or of the last seek) */
  int64_t last_seek;    /* index timestamp of the keyframe last sought, or INT64_MIN */
  double wanted;        /* EVERY and TIMES: the earliest time a frame can still be selected at
                           (-INFINITY: every frame may be; see skip_unneeded) */
  int can_seek;
  int network; /* the input is a URL other than file: (see sl_frame_network) */
  int input_eof, done;
  long decoded, seeks, decode_errors;
  int64_t max_read_pts; /* the latest pts of a packet of the stream read from the input */
  char last_error[SL_AV_ERRLEN];
  char warning[SL_AV_ERRLEN]; /* the input broke off (see sl_frame_warning) */
  /* rendering */
  struct SwsContext *sws;
  struct SwsContext *gray_sws;
  uint8_t *luma;
  size_t luma_cap;
  AVCodecContext *enc;
  int enc_format, enc_w, enc_h, enc_quality;
  int64_t enc_pts;
  sl_av_cancel cancel;
};

void sl_frame_set_cancel(sl_frame_reader *r, const sl_av_cancel *cancel) {
  r->cancel = cancel ? *cancel : (sl_av_cancel){0};
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

sl_frame_reader *sl_frame_open(const char *url, const sl_frame_opts *opts,
                               const sl_av_cancel *cancel, char *err, size_t errlen) {
  sl_frame_reader *r = calloc(1, sizeof *r);
  if (!r || !(r->url = strdup(url))) {
    free(r);
    set_err(err, errlen, url, "out of memory", 0);
    return NULL;
  }
  sl_frame_set_cancel(r, cancel);
  r->opts = *opts;
  r->opts.times = NULL;
  if (opts->mode == SL_FRAMES_TIMES && opts->ntimes > 0) {
    r->times = malloc((size_t)opts->ntimes * sizeof *r->times);
    if (!r->times) {
      set_err(err, errlen, url, "out of memory", 0);
      sl_frame_close(r);
      return NULL;
    }
    memcpy(r->times, opts->times, (size_t)opts->ntimes * sizeof *r->times);
    qsort(r->times, (size_t)opts->ntimes, sizeof *r->times, cmp_double);
  }
  r->last_selected = -INFINITY;
  r->wanted = -INFINITY;
  r->last_pts = INT64_MIN;
  r->last_dts = INT64_MIN;
  r->last_seek = INT64_MIN;
  r->max_read_pts = INT64_MIN;
  if (cursor_open(&r->in, url, &r->cancel, err, errlen) < 0 ||
      cursor_open_decoder(&r->in, AVMEDIA_TYPE_VIDEO, opts->threads, &r->stream, &r->dec, url, err,
                          errlen) < 0) {
    sl_frame_close(r);
    return NULL;
  }
  r->st = r->in.fmt->streams[r->stream];
  if (opts->fast) {
    /* Cheaper decoding: no deblocking, and frames nothing else refers to (B-frames, mostly)
     * are never reconstructed. The frames that come out are fewer and slightly blockier; a
     * score between frames a fraction of a second apart hardly changes. */
    r->dec->skip_loop_filter = AVDISCARD_ALL;
    r->dec->skip_frame = AVDISCARD_NONREF;
  }
  if (opts->mode == SL_FRAMES_KEYFRAMES) r->dec->skip_frame = AVDISCARD_NONKEY;
  r->last_scored = -INFINITY;
  r->mafd = r->cur_mafd = -1;
  AVRational fr = r->st->avg_frame_rate.num ? r->st->avg_frame_rate : r->st->r_frame_rate;
  r->half_frame = fr.num && fr.den ? 0.5 / av_q2d(fr) : 0.01;
  if (r->half_frame > 0.5) r->half_frame = 0.5;
  r->origin =
      r->in.fmt->start_time != AV_NOPTS_VALUE ? r->in.fmt->start_time / (double)AV_TIME_BASE : 0;
  r->can_seek = r->in.fmt->pb && (r->in.fmt->pb->seekable & AVIO_SEEKABLE_NORMAL) &&
                avformat_index_get_entries_count(r->st) > 0;
  r->network = strstr(url, "://") != NULL && strncmp(url, "file:", 5) != 0;
  r->pkt = av_packet_alloc();
  r->cur = av_frame_alloc();
  r->tmp = av_frame_alloc();
  r->prev = av_frame_alloc();
  if (!r->pkt || !r->cur || !r->tmp || !r->prev) {
    set_err(err, errlen, url, "out of memory", 0);
    sl_frame_close(r);
    return NULL;
  }
  return r;
}

/* At the end of the input: a video stream that stops clearly before the length its header
 * states was cut short; say so in r->warning (see check_length for audio). */
static void check_frames_length(sl_frame_reader *r) {
  if (r->max_read_pts == INT64_MIN) return;
  const AVStream *st = r->in.fmt->streams[r->stream];
  double start =
      st->start_time != AV_NOPTS_VALUE ? (double)st->start_time * av_q2d(st->time_base) : 0;
  double read = (double)r->max_read_pts * av_q2d(st->time_base) - start;
  note_cut_short(r->warning, sizeof r->warning, r->url, r->in.fmt, r->stream, read, "video read");
}

/* Before a packet of the stream goes to the decoder: a frame presented a whole frame period or
 * more before the earliest time a frame can still be selected at (r->wanted) is never
 * selected, so when nothing refers to it either (AVDISCARD_NONREF: most B-frames) it need not
 * be reconstructed. Frames that are referred to are decoded as always, so every frame that
 * comes out, and the one selected, is the same as with every frame decoded. The decoder reads
 * skip_frame for each packet it is given (frame threads copy it from the context per packet).
 * Not in the fast mode (which skips them all) or for keyframes (which skip more). */
static void skip_unneeded(sl_frame_reader *r, const AVPacket *pkt) {
  if (r->opts.decode_all || r->opts.fast || r->opts.mode == SL_FRAMES_KEYFRAMES) return;
  int skip = 0;
  if (pkt->pts != AV_NOPTS_VALUE && isfinite(r->wanted)) {
    double t = pkt->pts * av_q2d(r->st->time_base) - r->origin;
    skip = t < r->wanted - 2 * r->half_frame;
  }
  r->dec->skip_frame = skip ? AVDISCARD_NONREF : AVDISCARD_DEFAULT;
}

/* Decodes the next frame into r->tmp. Returns 1, 0 at the end, or a negative AVERROR. */
static int decode_one(sl_frame_reader *r) {
  for (;;) {
    if (is_cancelled(&r->cancel)) return AVERROR_EXIT;
    int rc = avcodec_receive_frame(r->dec, r->tmp);
    if (rc == 0) {
      r->decoded++;
      int64_t pts = r->tmp->best_effort_timestamp;
      if (pts != AV_NOPTS_VALUE) r->last_pts = pts;
      return 1;
    }
    if (rc == AVERROR_EOF) {
      r->done = 1;
      return 0;
    }
    if (rc != AVERROR(EAGAIN)) {
      r->decode_errors++;
      set_err(r->last_error, sizeof r->last_error, r->url, "cannot decode video", rc);
      if (r->input_eof) {
        r->done = 1;
        return 0;
      }
    }
    if (r->input_eof) {
      r->done = 1;
      return 0;
    }
    rc = cursor_read(&r->in, r->pkt);
    if (rc < 0) {
      if (rc == AVERROR_EXIT || is_cancelled(&r->cancel)) return AVERROR_EXIT;
      if (rc != AVERROR_EOF)
        set_err(r->last_error, sizeof r->last_error, r->url, "input ended early", rc);
      r->input_eof = 1;
      check_frames_length(r);
      avcodec_send_packet(r->dec, NULL);
      continue;
    }
    if (r->pkt->stream_index == r->stream) {
      int64_t pts = r->pkt->pts != AV_NOPTS_VALUE ? r->pkt->pts : r->pkt->dts;
      if (pts != AV_NOPTS_VALUE && pts > r->max_read_pts) r->max_read_pts = pts;
    }
    if (r->pkt->stream_index == r->stream &&
        (r->opts.mode != SL_FRAMES_KEYFRAMES || (r->pkt->flags & AV_PKT_FLAG_KEY))) {
      int64_t dts = r->pkt->dts != AV_NOPTS_VALUE ? r->pkt->dts : r->pkt->pts;
      if (dts != AV_NOPTS_VALUE) r->last_dts = dts;
      skip_unneeded(r, r->pkt);
      rc = avcodec_send_packet(r->dec, r->pkt);
      if (rc < 0 && rc != AVERROR(EAGAIN)) {
        r->decode_errors++;
        set_err(r->last_error, sizeof r->last_error, r->url, "cannot decode video", rc);
      }
    }
    av_packet_unref(r->pkt);
  }
}

static double frame_time(const sl_frame_reader *r, const AVFrame *f) {
  int64_t pts = f->best_effort_timestamp;
  if (pts == AV_NOPTS_VALUE) pts = f->pts;
  if (pts == AV_NOPTS_VALUE) return NAN;
  return pts * av_q2d(r->st->time_base) - r->origin;
}

/* Seeks to the keyframe before target when that keyframe lies ahead of the decoder;
 * otherwise decoding forward is cheaper.
 *
 * A keyframe is sought at most once. Index timestamps are decoding times, and the demuxer
 * may seek by presentation time. For a target between a keyframe's dts and its later pts
 * (MP4 with B-frames), the seek lands on the keyframe before. The decoder is then behind
 * that keyframe again, and seeking on every call would loop forever. Decoding forward from
 * where the seek landed reaches the target. */
static void maybe_seek(sl_frame_reader *r, double target) {
  if (!r->can_seek || r->input_eof) return;
  AVRational tb = r->st->time_base;
  int64_t ts = (int64_t)llround((target + r->origin) / av_q2d(tb));
  const AVIndexEntry *e = avformat_index_get_entry_from_timestamp(r->st, ts, AVSEEK_FLAG_BACKWARD);
  if (!e) return;
  /* Index entries and packet dts share a time base: seek only when the keyframe lies
   * beyond the packets the decoder has been fed already. */
  if (r->last_dts != INT64_MIN && e->timestamp <= r->last_dts) return;
  if (r->last_seek != INT64_MIN && e->timestamp <= r->last_seek) return;
  r->last_seek = e->timestamp;
  if (cursor_seek(&r->in, ts, AVSEEK_FLAG_BACKWARD) < 0) return;
  avcodec_flush_buffers(r->dec);
  r->seeks++;
  r->last_dts = e->timestamp;
}

/* Seeks to the keyframe before the one at or before target (for scene scores from target on
 * that need the frames before it) and starts scoring afresh. Returns 1, or 0 when the input
 * cannot seek there. */
static int seek_before(sl_frame_reader *r, double target) {
  r->prefixed = 1;
  if (!r->can_seek) return 0;
  AVRational tb = r->st->time_base;
  int64_t ts = (int64_t)llround((target + r->origin) / av_q2d(tb));
  const AVIndexEntry *e = avformat_index_get_entry_from_timestamp(r->st, ts, AVSEEK_FLAG_BACKWARD);
  if (!e) return 0;
  const AVIndexEntry *before =
      avformat_index_get_entry_from_timestamp(r->st, e->timestamp - 1, AVSEEK_FLAG_BACKWARD);
  if (!before || before->timestamp >= e->timestamp) return 0;
  if (cursor_seek(&r->in, before->timestamp, AVSEEK_FLAG_BACKWARD) < 0) return 0;
  avcodec_flush_buffers(r->dec);
  r->seeks++;
  r->last_dts = before->timestamp;
  r->last_seek = before->timestamp;
  r->input_eof = 0;
  r->have_prev = 0;
  r->prev_mafd = 0;
  r->scored = 0;
  r->last_scored = -INFINITY;
  return 1;
}

int sl_frame_retime(sl_frame_reader *r, const double *times, int ntimes, char *err, size_t errlen) {
  if (r->opts.mode != SL_FRAMES_TIMES) {
    set_err(err, errlen, r->url, "only a reader of given times can take new times", 0);
    return -1;
  }
  double *copy = malloc((ntimes > 0 ? (size_t)ntimes : 1) * sizeof *copy);
  if (!copy) {
    set_err(err, errlen, r->url, "out of memory", 0);
    return -1;
  }
  if (ntimes > 0) memcpy(copy, times, (size_t)ntimes * sizeof *copy);
  qsort(copy, (size_t)(ntimes > 0 ? ntimes : 0), sizeof *copy, cmp_double);
  /* The decoder is past the first new time (or drained at the end of the input): go back to
   * the keyframe before it. A time ahead is left to maybe_seek, as for a new reader. */
  double last =
      r->last_pts != INT64_MIN ? r->last_pts * av_q2d(r->st->time_base) - r->origin : -INFINITY;
  if (ntimes > 0 && (r->input_eof || r->done || copy[0] <= last + r->half_frame)) {
    if (!r->can_seek) {
      free(copy);
      set_err(err, errlen, r->url, "cannot seek back in this input", 0);
      return -1;
    }
    AVRational tb = r->st->time_base;
    int64_t ts = (int64_t)llround((copy[0] + r->origin) / av_q2d(tb));
    const AVIndexEntry *e =
        avformat_index_get_entry_from_timestamp(r->st, ts, AVSEEK_FLAG_BACKWARD);
    int64_t at = e ? e->timestamp : ts;
    int rc = cursor_seek(&r->in, ts, AVSEEK_FLAG_BACKWARD);
    if (rc < 0) {
      free(copy);
      set_err(err, errlen, r->url, "cannot seek back", rc);
      return -1;
    }
    avcodec_flush_buffers(r->dec);
    r->seeks++;
    r->last_dts = r->last_seek = at;
    r->last_pts = INT64_MIN;
    r->input_eof = r->done = 0;
  }
  free(r->times);
  r->times = copy;
  r->opts.ntimes = ntimes;
  r->target_index = 0;
  r->last_selected = -INFINITY;
  return 0;
}

static int is_luma_format(int format, int *bitdepth) {
  const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(format);
  if (!d || (d->flags & (AV_PIX_FMT_FLAG_RGB | AV_PIX_FMT_FLAG_HWACCEL | AV_PIX_FMT_FLAG_PAL)))
    return 0;
  if (d->comp[0].depth != 8) return 0;
  if (format == AV_PIX_FMT_GRAY8) {
    *bitdepth = 8;
    return 1;
  }
  if (!(d->flags & AV_PIX_FMT_FLAG_PLANAR) || d->nb_components < 3) return 0;
  *bitdepth = 8;
  return 1;
}

/* Converts frame f to 8-bit gray into *buf (grown as needed). Returns 0 or an AVERROR. */
static int to_gray(sl_frame_reader *r, const AVFrame *f, uint8_t **buf, size_t *cap) {
  size_t need = (size_t)f->width * (size_t)f->height;
  if (*cap < need) {
    uint8_t *nb = realloc(*buf, need);
    if (!nb) return AVERROR(ENOMEM);
    *buf = nb;
    *cap = need;
  }
  r->gray_sws = sws_getCachedContext(r->gray_sws, f->width, f->height, f->format, f->width,
                                     f->height, AV_PIX_FMT_GRAY8, SWS_POINT, NULL, NULL, NULL);
  if (!r->gray_sws) return AVERROR(EINVAL);
  uint8_t *dst[4] = {*buf};
  int stride[4] = {f->width};
  sws_scale(r->gray_sws, (const uint8_t *const *)f->data, f->linesize, 0, f->height, dst, stride);
  return 0;
}

/* Sum of absolute differences of two w x h 8-bit planes (SSE2's psadbw where available, as
 * FFmpeg's scene_sad does). */
static uint64_t sad_plane(const uint8_t *a, int sa, const uint8_t *b, int sb, int w, int h) {
  uint64_t sum = 0;
  for (int y = 0; y < h; y++) {
    const uint8_t *p = a + (ptrdiff_t)y * sa, *q = b + (ptrdiff_t)y * sb;
    int x = 0;
#ifdef __SSE2__
    __m128i acc = _mm_setzero_si128();
    for (; x + 16 <= w; x += 16) {
      __m128i u = _mm_loadu_si128((const __m128i *)(p + x));
      __m128i v = _mm_loadu_si128((const __m128i *)(q + x));
      acc = _mm_add_epi64(acc, _mm_sad_epu8(u, v));
    }
    sum += (uint64_t)_mm_cvtsi128_si64(acc) +
           (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc));
#endif
    for (; x < w; x++) sum += (uint64_t)abs((int)p[x] - (int)q[x]);
  }
  return sum;
}

/* Makes room for need gray pixels in the scene buffers (prev_gray, cur_gray). Returns 0, or -1
 * when out of memory. */
static int grow_gray(sl_frame_reader *r, size_t need) {
  if (r->gray_cap >= need) return 0;
  uint8_t *a = realloc(r->prev_gray, need), *b = a ? realloc(r->cur_gray, need) : NULL;
  if (a) r->prev_gray = a;
  if (b) r->cur_gray = b;
  if (!a || !b) return -1;
  r->gray_cap = need;
  r->have_prev = 0;
  return 0;
}

/* Scores the w x h gray plane in cur_gray against prev_gray (the formula below), then makes it
 * the previous one. */
static double score_gray(sl_frame_reader *r, int w, int h) {
  double score = 0;
  /* r->prev may hold the luma path's previous frame (the stream changed its pixel format):
   * not comparable, and its buffers must not keep the gray plane's size below (scene_score
   * compared a frame against them by these sizes: a heap overflow found by fuzz_media). */
  if (r->prev->buf[0]) {
    av_frame_unref(r->prev);
    r->have_prev = 0;
  }
  if (r->have_prev && r->prev->width == w && r->prev->height == h) {
    uint64_t sad = sad_plane(r->prev_gray, w, r->cur_gray, w, w, h);
    double mafd = (double)sad / ((double)w * h);
    double diff = fabs(mafd - r->prev_mafd);
    score = fmin(fmin(mafd, diff) / 100.0, 1.0);
    r->prev_mafd = mafd;
    r->mafd = mafd;
  }
  uint8_t *t = r->prev_gray;
  r->prev_gray = r->cur_gray;
  r->cur_gray = t;
  r->prev->width = w;
  r->prev->height = h;
  r->have_prev = 1;
  return score;
}

/* The scene score of FFmpeg's select filter (libavfilter/f_select.c, get_scene_score): the
 * mean absolute difference of the luma plane against the previous frame (mafd, 0..255), and
 * score = clip(min(mafd, |mafd - previous mafd|) / 100, 0, 1). The first frame scores 0. For
 * planar YUV and gray input this is exactly FFmpeg's number; other formats are converted to
 * gray first (FFmpeg would compare the packed RGB bytes). */
static double scene_score(sl_frame_reader *r, AVFrame *f) {
  int depth;
  double score = 0;
  if (is_luma_format(f->format, &depth)) {
    if (r->have_prev && r->prev->width == f->width && r->prev->height == f->height &&
        r->prev->format == f->format) {
      uint64_t sad = sad_plane(r->prev->data[0], r->prev->linesize[0], f->data[0], f->linesize[0],
                               f->width, f->height);
      double mafd = (double)sad / ((double)f->width * f->height);
      double diff = fabs(mafd - r->prev_mafd);
      score = fmin(mafd, diff) / 100.0;
      if (score > 1) score = 1;
      if (score < 0) score = 0;
      r->prev_mafd = mafd;
      r->mafd = mafd;
    }
    av_frame_unref(r->prev);
    if (av_frame_ref(r->prev, f) == 0)
      r->have_prev = 1;
    else
      r->have_prev = 0;
    return score;
  }
  size_t need = (size_t)f->width * (size_t)f->height;
  if (grow_gray(r, need) < 0) return 0;
  size_t cap = r->gray_cap;
  if (to_gray(r, f, &r->cur_gray, &cap) < 0) return 0;
  return score_gray(r, f->width, f->height);
}

/* Box-averages the w x h 8-bit plane src (stride sstride) by an integer factor k into dst
 * (w/k x h/k, no padding). */
static void box_down(const uint8_t *src, int sstride, int w, int h, int k, uint8_t *dst) {
  int ow = w / k, oh = h / k;
  unsigned sums[4096];
  for (int oy = 0; oy < oh; oy++) {
    memset(sums, 0, (size_t)ow * sizeof *sums);
    for (int dy = 0; dy < k; dy++) {
      const uint8_t *p = src + (ptrdiff_t)(oy * k + dy) * sstride;
      for (int ox = 0; ox < ow; ox++) {
        unsigned s = 0;
        const uint8_t *q = p + ox * k;
        for (int dx = 0; dx < k; dx++) s += q[dx];
        sums[ox] += s;
      }
    }
    unsigned n = (unsigned)(k * k);
    for (int ox = 0; ox < ow; ox++) dst[(size_t)oy * ow + ox] = (uint8_t)((sums[ox] + n / 2) / n);
  }
}

/* The scene score on the luma plane box-averaged down to at most opts.score_width pixels wide
 * (opts.score_width > 0): the same formula as scene_score on k*k times fewer pixels. */
static double scene_score_small(sl_frame_reader *r, AVFrame *f) {
  const uint8_t *plane;
  int stride, depth;
  if (is_luma_format(f->format, &depth)) {
    plane = f->data[0];
    stride = f->linesize[0];
  } else {
    if (to_gray(r, f, &r->luma, &r->luma_cap) < 0) return 0;
    plane = r->luma;
    stride = f->width;
  }
  int k = (f->width + r->opts.score_width - 1) / r->opts.score_width;
  if (k < 1) k = 1;
  while (f->width / k > 4096) k++;
  int w = f->width / k, h = f->height / k;
  if (w < 1 || h < 1) return 0;
  size_t need = (size_t)w * (size_t)h;
  if (grow_gray(r, need) < 0) return 0;
  box_down(plane, stride, w * k, h * k, k, r->cur_gray);
  return score_gray(r, w, h);
}

int sl_frame_next(sl_frame_reader *r, double *t_out, double *score_out, int *key, char *err,
                  size_t errlen) {
  const sl_frame_opts *o = &r->opts;
  if (o->start > 0 && !r->started) {
    r->started = 1;
    maybe_seek(r, o->start);
  }
  for (;;) {
    double target = NAN;
    if (o->mode == SL_FRAMES_EVERY) {
      target = r->target_index * o->every;
    } else if (o->mode == SL_FRAMES_TIMES) {
      if (r->target_index >= o->ntimes) return 0;
      target = r->times[r->target_index];
    }
    if (!isnan(target)) {
      maybe_seek(r, target);
      /* what skip_unneeded may leave out: frames before the target (and before start) */
      r->wanted = (o->start > target ? o->start : target) - r->half_frame;
    }
    int rc = r->done ? 0 : decode_one(r);
    if (rc == AVERROR_EXIT) {
      set_err(err, errlen, r->url, "cancelled", 0);
      return -1;
    }
    if (rc < 0) {
      set_err(err, errlen, r->url, "cannot decode video", rc);
      return -1;
    }
    if (rc == 0) {
      if (r->decoded == 0) {
        if (r->last_error[0])
          snprintf(err, errlen, "%s", r->last_error);
        else
          set_err(err, errlen, r->url, "no video frame could be decoded", 0);
        return -1;
      }
      return 0;
    }
    double t = frame_time(r, r->tmp);
    if (isnan(t)) t = r->decoded > 0 ? (r->decoded - 1) * 2 * r->half_frame : 0;
    double score = -1;
    int selected = 0;
    r->mafd = -1;
    if (o->stop > 0 && t > o->stop + r->half_frame) {
      av_frame_unref(r->tmp);
      return 0;
    }
    if (o->start > 0 && t < o->start - r->half_frame) {
      /* before the start: not selected, but scene scores need the frames before */
      if (o->mode == SL_FRAMES_SCENE) {
        r->last_scored = t;
        (void)(o->score_width > 0 ? scene_score_small(r, r->tmp) : scene_score(r, r->tmp));
        r->scored++;
      }
      av_frame_unref(r->tmp);
      continue;
    }
    switch (o->mode) {
      case SL_FRAMES_ALL:
      case SL_FRAMES_KEYFRAMES:
        selected = 1;
        break;
      case SL_FRAMES_SCENE:
        if (o->sample > 0 && t < r->last_scored + o->sample - r->half_frame) break;
        r->last_scored = t;
        score = o->score_width > 0 ? scene_score_small(r, r->tmp) : scene_score(r, r->tmp);
        if (o->start > 0 && ++r->scored == 2) {
          /* The second frame after the seek: its exact score needs the difference before the
           * first, which was not decoded. When it could be selected, decode again from the
           * keyframe before (those frames scored, not selected); otherwise it scores 0. */
          if (r->mafd / 100.0 > o->scene && !r->prefixed && seek_before(r, o->start)) {
            av_frame_unref(r->tmp);
            continue;
          }
          score = 0;
        }
        selected = score > o->scene;
        break;
      case SL_FRAMES_EVERY:
        if (t >= target - r->half_frame) {
          selected = 1;
          /* the next target after this frame */
          r->target_index = (long)floor((t + r->half_frame) / o->every) + 1;
        }
        break;
      case SL_FRAMES_TIMES:
        if (t >= target - r->half_frame) {
          selected = 1;
          while (r->target_index < o->ntimes && r->times[r->target_index] <= t + r->half_frame)
            r->target_index++;
        }
        break;
    }
    if (selected && o->min_interval > 0 && t - r->last_selected < o->min_interval) selected = 0;
    if (selected && o->score && o->mode != SL_FRAMES_SCENE)
      score = o->score_width > 0 ? scene_score_small(r, r->tmp) : scene_score(r, r->tmp);
    if (!selected) {
      av_frame_unref(r->tmp);
      continue;
    }
    r->last_selected = t;
    av_frame_unref(r->cur);
    av_frame_move_ref(r->cur, r->tmp);
    r->cur_mafd = r->mafd;
    *t_out = t;
    *score_out = score;
    *key = r->cur->key_frame;
    return 1;
  }
}

double sl_frame_mafd(const sl_frame_reader *r) { return r->cur_mafd; }

void sl_frame_size(const sl_frame_reader *r, int *width, int *height) {
  *width = r->cur->width;
  *height = r->cur->height;
}

int sl_frame_luma(sl_frame_reader *r, sl_image *out, char *err, size_t errlen) {
  AVFrame *f = r->cur;
  if (!f->data[0]) {
    set_err(err, errlen, r->url, "no current frame", 0);
    return -1;
  }
  int depth;
  out->width = f->width;
  out->height = f->height;
  out->format = SL_IMG_GRAY8;
  if (is_luma_format(f->format, &depth)) {
    out->data = f->data[0];
    out->stride = f->linesize[0];
    return 0;
  }
  int rc = to_gray(r, f, &r->luma, &r->luma_cap);
  if (rc < 0) {
    set_err(err, errlen, r->url, "cannot convert the frame to gray", rc);
    return -1;
  }
  out->data = r->luma;
  out->stride = f->width;
  return 0;
}

/* Opens (or reuses) the encoder for format at w x h. */
static int open_encoder(sl_frame_reader *r, int format, int w, int h, int quality) {
  if (r->enc && r->enc_format == format && r->enc_w == w && r->enc_h == h &&
      r->enc_quality == quality)
    return 0;
  avcodec_free_context(&r->enc);
  const AVCodec *codec =
      avcodec_find_encoder(format == SL_RENDER_JPEG ? AV_CODEC_ID_MJPEG : AV_CODEC_ID_PNG);
  if (!codec) return AVERROR_ENCODER_NOT_FOUND;
  AVCodecContext *enc = avcodec_alloc_context3(codec);
  if (!enc) return AVERROR(ENOMEM);
  enc->width = w;
  enc->height = h;
  enc->time_base = (AVRational){1, 25};
  enc->thread_count = 1;
  if (format == SL_RENDER_JPEG) {
    enc->pix_fmt = AV_PIX_FMT_YUVJ420P;
    enc->color_range = AVCOL_RANGE_JPEG;
    enc->flags |= AV_CODEC_FLAG_QSCALE;
    int q = 2 + (int)lround((100 - quality) * 29.0 / 99.0);
    enc->global_quality = FF_QP2LAMBDA * q;
  } else {
    enc->pix_fmt = AV_PIX_FMT_RGB24;
  }
  int rc = avcodec_open2(enc, codec, NULL);
  if (rc < 0) {
    avcodec_free_context(&enc);
    return rc;
  }
  r->enc = enc;
  r->enc_format = format;
  r->enc_w = w;
  r->enc_h = h;
  r->enc_quality = quality;
  return 0;
}

int sl_frame_render(sl_frame_reader *r, int format, int max_width, int max_height, int quality,
                    uint8_t **out, size_t *outlen, int *width, int *height, char *err,
                    size_t errlen) {
  AVFrame *f = r->cur;
  *out = NULL;
  *outlen = 0;
  if (!f->data[0]) {
    set_err(err, errlen, r->url, "no current frame", 0);
    return -1;
  }
  double scale = 1;
  if (max_width > 0 && f->width > max_width) scale = fmin(scale, (double)max_width / f->width);
  if (max_height > 0 && f->height > max_height) scale = fmin(scale, (double)max_height / f->height);
  int w = scale < 1 ? (int)lround(f->width * scale) : f->width;
  int h = scale < 1 ? (int)lround(f->height * scale) : f->height;
  if (w < 1) w = 1;
  if (h < 1) h = 1;
  if (quality < 1) quality = 1;
  if (quality > 100) quality = 100;
  enum AVPixelFormat dst_fmt = format == SL_RENDER_GRAY   ? AV_PIX_FMT_GRAY8
                               : format == SL_RENDER_JPEG ? AV_PIX_FMT_YUVJ420P
                                                          : AV_PIX_FMT_RGB24;
  r->sws = sws_getCachedContext(r->sws, f->width, f->height, f->format, w, h, dst_fmt,
                                scale < 1 ? SWS_AREA : SWS_BILINEAR, NULL, NULL, NULL);
  if (!r->sws) {
    set_err(err, errlen, r->url, "cannot set up the scaler", 0);
    return -1;
  }
  int rc = 0;
  if (format == SL_RENDER_GRAY || format == SL_RENDER_RGB) {
    int bpp = format == SL_RENDER_GRAY ? 1 : 3;
    size_t len = (size_t)w * (size_t)h * (size_t)bpp;
    uint8_t *buf = malloc(len);
    if (!buf) {
      set_err(err, errlen, r->url, "out of memory", 0);
      return -1;
    }
    uint8_t *dst[4] = {buf};
    int stride[4] = {w * bpp};
    sws_scale(r->sws, (const uint8_t *const *)f->data, f->linesize, 0, f->height, dst, stride);
    *out = buf;
    *outlen = len;
    *width = w;
    *height = h;
    return 0;
  }
  AVFrame *dst = av_frame_alloc();
  AVPacket *pkt = av_packet_alloc();
  if (!dst || !pkt) {
    rc = AVERROR(ENOMEM);
    goto fail;
  }
  dst->format = dst_fmt;
  dst->width = w;
  dst->height = h;
  if ((rc = av_frame_get_buffer(dst, 0)) < 0) goto fail;
  sws_scale(r->sws, (const uint8_t *const *)f->data, f->linesize, 0, f->height, dst->data,
            dst->linesize);
  if ((rc = open_encoder(r, format, w, h, quality)) < 0) goto fail;
  if (format == SL_RENDER_JPEG) {
    dst->quality = r->enc->global_quality;
    dst->color_range = AVCOL_RANGE_JPEG;
  }
  dst->pts = r->enc_pts++;
  if ((rc = avcodec_send_frame(r->enc, dst)) < 0) goto fail;
  if ((rc = avcodec_receive_packet(r->enc, pkt)) < 0) goto fail;
  *out = malloc(pkt->size ? (size_t)pkt->size : 1);
  if (!*out) {
    rc = AVERROR(ENOMEM);
    goto fail;
  }
  memcpy(*out, pkt->data, (size_t)pkt->size);
  *outlen = (size_t)pkt->size;
  *width = w;
  *height = h;
  av_frame_free(&dst);
  av_packet_free(&pkt);
  /* mjpeg and png are intra-only: a fresh encoder per size keeps no state between frames,
   * but after a packet the encoder wants a new send; nothing is buffered. */
  return 0;
fail:
  av_frame_free(&dst);
  av_packet_free(&pkt);
  set_err(err, errlen, r->url,
          format == SL_RENDER_JPEG ? "cannot encode JPEG" : "cannot encode PNG", rc);
  /* an encoder in an error state is not reused */
  avcodec_free_context(&r->enc);
  return -1;
}

const char *sl_frame_warning(const sl_frame_reader *r) { return r->warning[0] ? r->warning : NULL; }

int sl_frame_network(const sl_frame_reader *r) { return r->network; }

void sl_frame_stats(const sl_frame_reader *r, long *decoded, long *seeks) {
  *decoded = r->decoded;
  *seeks = r->seeks;
}

void sl_frame_close(sl_frame_reader *r) {
  if (!r) return;
  avcodec_free_context(&r->dec);
  avcodec_free_context(&r->enc);
  cursor_close(&r->in);
  av_packet_free(&r->pkt);
  av_frame_free(&r->cur);
  av_frame_free(&r->tmp);
  av_frame_free(&r->prev);
  sws_freeContext(r->sws);
  sws_freeContext(r->gray_sws);
  free(r->prev_gray);
  free(r->cur_gray);
  free(r->luma);
  free(r->times);
  free(r->url);
  free(r);
}
