/* fuzz_media.c: mutated media files through the C entry points the engine's media jobs use
 * (core/av.h: sl_av_probe, sl_audio_open/read, sl_frame_open/next/luma/render), on a memfd
 * so that nothing touches the disk. Built twice:
 *  - fuzz_media: the input is a media file (any container FFmpeg detects from the bytes);
 *  - fuzz_hls (FUZZ_HLS): the input is an HLS playlist, written as p.m3u8 in a folder that
 *    also holds two real segments (s0.ts, s1.ts from tests/fuzz/hls/), as sluice.media opens
 *    a live monitor's playlist.
 * Each run is bounded: at most 2 s of audio and 6 video frames are decoded, and the cancel
 * hook (the engine's) stops any one input after 5 s (HLS: 2 s, as a live playlist without
 * an end is reloaded until then); libFuzzer's -timeout reports a hang past
 * that. A finding is a crash or a sanitizer report; an error message is a fine answer, but it
 * must be one line naming the input. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "av.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double deadline;
static int past_deadline(void *arg) {
  (void)arg;
  return now_s() > deadline;
}

static char path[512];

static void check_message(const char *err) {
  if (!err[0] || strchr(err, '\n')) {
    fprintf(stderr, "fuzz media: an error that is not one line: '%s'\n", err);
    abort();
  }
  if (!strstr(err, path)) {
    fprintf(stderr, "fuzz media: an error that does not name the input '%s': '%s'\n", path, err);
    abort();
  }
}

#ifdef FUZZ_HLS
static char dir[256];

static void copy_segment(const char *from, const char *to) {
  FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
  if (!in || !out) {
    fprintf(stderr, "fuzz hls: cannot copy %s to %s\n", from, to);
    abort();
  }
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
  fclose(in);
  fclose(out);
}
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  sl_av_init();
#ifdef FUZZ_HLS
  snprintf(dir, sizeof dir, "/tmp/sluice-fuzz-hls.XXXXXX");
  if (!mkdtemp(dir)) abort();
  char to[300];
  snprintf(to, sizeof to, "%s/s0.ts", dir);
  copy_segment(SLUICE_SOURCE_DIR "/tests/fuzz/hls/s0.ts", to);
  snprintf(to, sizeof to, "%s/s1.ts", dir);
  copy_segment(SLUICE_SOURCE_DIR "/tests/fuzz/hls/s1.ts", to);
  snprintf(path, sizeof path, "%s/p.m3u8", dir);
#endif
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
#ifdef FUZZ_HLS
  FILE *f = fopen(path, "wb");
  if (!f) abort();
  fwrite(data, 1, size, f);
  fclose(f);
  int fd = -1;
#else
  int fd = memfd_create("fuzz-media", MFD_CLOEXEC);
  if (fd < 0) abort();
  size_t off = 0;
  while (off < size) {
    ssize_t n = write(fd, data + off, size - off);
    if (n <= 0) abort();
    off += (size_t)n;
  }
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
#endif
  char err[SL_AV_ERRLEN];
  sl_av_cancel cancel = {.cancelled = past_deadline};
#ifdef FUZZ_HLS
  deadline = now_s() + 2; /* a live playlist is reloaded until then */
#else
  deadline = now_s() + 5;
#endif

  sl_media_info info;
  err[0] = '\0';
  if (sl_av_probe(path, &info, &cancel, err, sizeof err) == 0) {
    sl_media_info_clear(&info);
  } else {
    check_message(err);
  }

  /* The audio and the frame reader open at once and read in turns (as the lecture's stages do):
   * an MP4 input is then one demuxer shared by both (core/av.c, shared inputs), and a probe
   * between reads it too. */
  err[0] = '\0';
  sl_audio_reader *a = sl_audio_open(path, 16000, 1, &cancel, err, sizeof err);
  if (!a) check_message(err);
  err[0] = '\0';
  sl_frame_opts fo = {0};
  fo.mode = SL_FRAMES_SCENE;
  fo.scene = 0.1;
  fo.threads = 1;
  sl_frame_reader *v = sl_frame_open(path, &fo, &cancel, err, sizeof err);
  if (!v) check_message(err);
  int audio_on = a != NULL, video_on = v != NULL;
  for (int i = 0; i < 8 && (audio_on || video_on); i++) {
    if (audio_on) {
      int16_t pcm[4000];
      if (sl_audio_read(a, pcm, 4000, err, sizeof err) <= 0) audio_on = 0;
    }
    if (video_on && i < 6) {
      double t, score;
      int key;
      if (sl_frame_next(v, &t, &score, &key, err, sizeof err) != 1) {
        video_on = 0;
      } else {
        sl_image img;
        (void)sl_frame_luma(v, &img, err, sizeof err);
        uint8_t *out = NULL;
        size_t outlen = 0;
        int w, h;
        if (sl_frame_render(v, SL_RENDER_JPEG, 64, 64, 70, &out, &outlen, &w, &h, err, sizeof err) == 0)
          free(out);
      }
    }
    if (i == 1 && sl_av_probe(path, &info, &cancel, err, sizeof err) == 0) sl_media_info_clear(&info);
  }
  if (a) {
    (void)sl_audio_warning(a);
    sl_audio_close(a);
  }
  if (v) {
    (void)sl_frame_warning(v);
    sl_frame_close(v);
  }
  if (fd >= 0) close(fd);
  return 0;
}
