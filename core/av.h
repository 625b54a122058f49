/* av.h: the FFmpeg adapter. av.c is the only file that includes FFmpeg headers; everything
 * else (media.c, phash.c, tests) sees the project's own types declared here.
 *
 * Nothing here touches Lua or the loop: every function may block (file and network I/O,
 * decoding) and is meant to run on a pool worker thread. A reader object is used by one
 * thread at a time; it may move between threads between calls.
 *
 * Errors are reported as a negative return value plus a one-line message in the caller's
 * buffer, naming the input and the cause ("x.mp4: Invalid data found when processing input").
 */
#ifndef SLUICE_AV_H
#define SLUICE_AV_H

#include <stddef.h>
#include <stdint.h>

#define SL_AV_ERRLEN 512

/* Polled during long operations (also from FFmpeg's I/O interrupt callback): returns
 * nonzero to abort. */
typedef struct sl_av_cancel {
  int (*cancelled)(void *arg);
  void *arg;
  /* Set by the adapter while it opens an input (monotonic microseconds; 0: none): opening
   * ends with an error past it. Callers leave it 0. */
  int64_t open_deadline;
  /* Kept by the adapter while it opens an input: the input's own URL, how many nested
   * opens (playlists, segments) the demuxer made, and why it refused one. Callers leave
   * them 0. */
  const char *open_url;
  int nested_opens;
  const char *open_refused;
} sl_av_cancel;

/* The longest that opening an input (reading its header and stream info) may take, for every
 * reader and probe from now on (default 30 s; seconds <= 0 restores it). An input that takes
 * longer fails with one line saying so: a playlist that names itself is reloaded for ever by
 * FFmpeg's HLS demuxer, and a server that trickles bytes never trips the read timeout. Cannot
 * fail; safe from any thread. */
void sl_av_set_open_timeout(double seconds);
double sl_av_open_timeout(void);

/* ---- probe ---------------------------------------------------------------------------- */

typedef struct sl_media_stream {
  char type[16];  /* "video", "audio", "subtitle", "data", ... */
  char codec[32]; /* "h264", "aac", ... */
  int width, height;
  double fps; /* average frame rate, 0 when unknown */
  int sample_rate, channels;
  double duration; /* seconds, negative when unknown */
} sl_media_stream;

typedef struct sl_media_info {
  double duration;    /* seconds, negative when unknown */
  char container[64]; /* demuxer name: "mov,mp4,m4a,3gp,3g2,mj2", "wav", "hls", ... */
  int bit_rate;
  int nstreams;
  sl_media_stream *streams; /* owned; freed by sl_media_info_clear */
} sl_media_info;

/* Opens url (a path or an FFmpeg URL), reads its header and stream info. Returns 0 and fills
 * out (the caller clears it with sl_media_info_clear), or -1 with err set. */
int sl_av_probe(const char *url, sl_media_info *out, const sl_av_cancel *cancel, char *err,
                size_t errlen);
void sl_media_info_clear(sl_media_info *info);

/* ---- audio ---------------------------------------------------------------------------- */

typedef struct sl_audio_reader sl_audio_reader;

/* Opens the best audio stream of url, decoding and resampling to signed 16-bit interleaved
 * PCM at rate Hz with channels channels. Returns NULL with err set on failure. */
sl_audio_reader *sl_audio_open(const char *url, int rate, int channels, const sl_av_cancel *cancel,
                               char *err, size_t errlen);

/* Sets the cancel hook polled by the following calls (the job changes between calls). */
void sl_audio_set_cancel(sl_audio_reader *r, const sl_av_cancel *cancel);

/* Reads up to frames sample frames (frames * channels int16 values) into dst. Returns the
 * number read: less than frames only at the end of the input (0 once it is exhausted), or -1
 * with err set when the input fails before any audio was decoded or the read was cancelled.
 * A stream that breaks off after some audio ends there (the error is kept, see
 * sl_audio_warning). */
long sl_audio_read(sl_audio_reader *r, int16_t *dst, long frames, char *err, size_t errlen);

/* The reason the input ended early, or NULL when it ended normally. Borrowed. */
const char *sl_audio_warning(const sl_audio_reader *r);

/* Closes the input; NULL is ignored. */
void sl_audio_close(sl_audio_reader *r);

/* ---- images ----------------------------------------------------------------------------- */

enum sl_image_format { SL_IMG_GRAY8 = 1, SL_IMG_RGB24 = 3 };

/* A view of pixels: data is borrowed unless stated otherwise. stride is bytes per row. */
typedef struct sl_image {
  int width, height, stride;
  int format; /* sl_image_format */
  const uint8_t *data;
} sl_image;

/* ---- video frames ---------------------------------------------------------------------- */

enum sl_frame_mode {
  SL_FRAMES_ALL = 0,   /* every decoded frame */
  SL_FRAMES_EVERY,     /* the first frame at or after each multiple of every seconds */
  SL_FRAMES_KEYFRAMES, /* keyframes only; non-key packets are not decoded */
  SL_FRAMES_SCENE,     /* frames whose scene score (FFmpeg's select=scene) exceeds scene */
  SL_FRAMES_TIMES      /* the first frame at or after each of times[] (ascending) */
};

typedef struct sl_frame_opts {
  int mode;
  double every;        /* SL_FRAMES_EVERY: interval in seconds */
  double scene;        /* SL_FRAMES_SCENE: threshold in 0..1 */
  const double *times; /* SL_FRAMES_TIMES: ascending seconds; copied by sl_frame_open */
  int ntimes;
  double min_interval; /* minimum seconds between two selected frames (0: none) */
  int threads;         /* decoder threads, 0: automatic */
  /* Reduced decode (0 everywhere: exact, every frame decoded as FFmpeg does). */
  int fast;           /* skip the loop filter and non-reference frames (fewer, blurrier
                         frames: for sampling and scoring, not for pictures to keep) */
  int score_width;    /* SL_FRAMES_SCENE: score on the luma plane scaled down to at most this
                         width (0: the full plane, FFmpeg's exact score) */
  double sample;      /* SL_FRAMES_SCENE: score one frame per `sample` seconds, the score
                         comparing it with the previous scored frame (0: every frame) */
  int score;          /* other modes: score every selected frame against the previous selected
                         one (the same formula; see sl_frame_mafd) */
  int decode_all;     /* SL_FRAMES_EVERY and SL_FRAMES_TIMES decode only what the frames they
                         select need: a packet presenting before the next wanted time whose
                         frame nothing refers to (most B-frames) is not reconstructed. The
                         frames selected are the same, pixel for pixel. 1: decode every frame */
  double start, stop; /* only frames from start to stop seconds (0: from the beginning / to the
                         end); the decoder seeks to the keyframe before start. In SL_FRAMES_SCENE
                         the frame at the seek point scores 0 and the next one needs the frames
                         before it: when its difference could select it, the decoder goes back to
                         the keyframe before and scores those frames (not selecting them), so
                         every score from start on is FFmpeg's; otherwise it scores 0 */
} sl_frame_opts;

typedef struct sl_frame_reader sl_frame_reader;

/* Opens the best video stream of url. Returns NULL with err set on failure. */
sl_frame_reader *sl_frame_open(const char *url, const sl_frame_opts *opts,
                               const sl_av_cancel *cancel, char *err, size_t errlen);
void sl_frame_set_cancel(sl_frame_reader *r, const sl_av_cancel *cancel);

/* Decodes up to the next selected frame. Returns 1 with *t (seconds from the start of the
 * input), *scene_score (-1 when not computed) and *key set; 0 at the end of the input; -1
 * with err set on failure or cancellation. The selected frame stays current until the next
 * call and is what sl_frame_render, sl_frame_luma work on. */
int sl_frame_next(sl_frame_reader *r, double *t, double *scene_score, int *key, char *err,
                  size_t errlen);

/* The mean absolute luma difference (0..255) of the current frame from the previous scored one,
 * or -1 when it was not scored or is the first. */
double sl_frame_mafd(const sl_frame_reader *r);

/* Width and height of the current frame. */
void sl_frame_size(const sl_frame_reader *r, int *width, int *height);

/* A gray view of the current frame at full size (the luma plane, or a converted copy).
 * Valid until the next call on r. Returns 0, or -1 with err set. */
int sl_frame_luma(sl_frame_reader *r, sl_image *out, char *err, size_t errlen);

enum sl_render_format { SL_RENDER_GRAY = 1, SL_RENDER_RGB, SL_RENDER_JPEG, SL_RENDER_PNG };

/* Scales the current frame to fit max_width x max_height (0: no limit; aspect kept, never
 * enlarged) and converts or encodes it. On success returns 0, stores a malloc'ed buffer the
 * caller owns in *out (raw rows without padding for GRAY/RGB; the file bytes for JPEG/PNG)
 * with its length and the output size. quality is 1..100 for JPEG. */
int sl_frame_render(sl_frame_reader *r, int format, int max_width, int max_height, int quality,
                    uint8_t **out, size_t *outlen, int *width, int *height, char *err,
                    size_t errlen);

/* A reader opened in SL_FRAMES_TIMES mode goes on with new times (copied; any order), as a
 * reader newly opened with them would, without opening the input again: a time before the
 * frame last decoded (or any time once the input was read to its end) seeks back to the
 * keyframe before it. One open input (its demuxer's index of every sample grows with the
 * input's length) serves any number of grabs. Returns 0, or -1 with err set (a reader of
 * another mode, or an input that cannot seek back; the reader is then unchanged). */
int sl_frame_retime(sl_frame_reader *r, const double *times, int ntimes, char *err, size_t errlen);

/* Where the reader reached: the number of frames decoded and packets read (for tests and
 * benchmarks: shows that seeking skipped work). */
void sl_frame_stats(const sl_frame_reader *r, long *decoded, long *seeks);

/* 1 when reading the next frame may wait on the network (an http, rtmp, ... URL: a live
 * stream delivers a segment at a time), 0 for local files. A frame decoded from such an input
 * must be handed on at once, not held while the next one is awaited. */
int sl_frame_network(const sl_frame_reader *r);

/* After the last frame: a message when the input broke off before the length its header states,
 * or NULL. The reader keeps ownership of the string. */
const char *sl_frame_warning(const sl_frame_reader *r);

/* Closes the input; NULL is ignored. */
void sl_frame_close(sl_frame_reader *r);

/* Inputs (demuxers) opened since the start of the process, open now, and the most open at
 * once (for tests and benchmarks: each open input holds its demuxer's index; readers and
 * probes of one local MP4 open at once share one). */
void sl_av_inputs(long *opened, long *open, long *peak);

/* Sets FFmpeg's log level from SLUICE_FFMPEG_LOG ("quiet" by default: errors come back
 * through our own messages). Called once per process; cannot fail. */
void sl_av_init(void);

#endif
