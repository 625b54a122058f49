/* test_av.c: the FFmpeg adapter without Lua: cancellation inside a long decode, audio sample
 * counts across read sizes, errors naming the input. */
#include "av.h"

#include <unistd.h>

/* only the CHECK macros of the harness are used here */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "harness.h"

static char dir[] = "/tmp/sluice-test-av-XXXXXX";
static char video[512], audio[512];

/* Cancels after the hook has been polled n times. */
typedef struct countdown {
  int polls, after;
} countdown;

static int cancel_after(void *arg) {
  countdown *c = arg;
  return ++c->polls > c->after;
}

static void test_cancel(void) {
  countdown c = {0, 40};
  sl_av_cancel cancel = {.cancelled = cancel_after, .arg = &c};
  sl_frame_opts o = {0};
  o.mode = SL_FRAMES_SCENE;
  o.scene = 1.0; /* never selected: one call would decode the whole file */
  o.threads = 1;
  char err[SL_AV_ERRLEN];
  sl_frame_reader *r = sl_frame_open(video, &o, &cancel, err, sizeof err);
  CHECK(r != NULL);
  if (!r) return;
  double t, score;
  int key;
  CHECK_EQ_INT(sl_frame_next(r, &t, &score, &key, err, sizeof err), -1);
  CHECK(strstr(err, "cancelled") != NULL);
  CHECK(strstr(err, video) != NULL);
  long decoded, seeks;
  sl_frame_stats(r, &decoded, &seeks);
  CHECK(decoded > 0 && decoded < 100); /* the file has 250 frames */
  sl_frame_close(r);
}

static void test_audio_counts(void) {
  char err[SL_AV_ERRLEN];
  long totals[3] = {0};
  long sizes[3] = {1, 333, 100000};
  for (int k = 0; k < 3; k++) {
    sl_audio_reader *r = sl_audio_open(audio, 16000, 1, NULL, err, sizeof err);
    CHECK(r != NULL);
    if (!r) return;
    int16_t *buf = malloc((size_t)sizes[k] * sizeof *buf);
    long got;
    while ((got = sl_audio_read(r, buf, sizes[k], err, sizeof err)) > 0) totals[k] += got;
    CHECK_EQ_INT(got, 0);
    CHECK(sl_audio_warning(r) == NULL);
    free(buf);
    sl_audio_close(r);
  }
  /* 2 s at 48 kHz resampled to 16 kHz: 32000 samples, whatever the read size */
  CHECK_EQ_INT(totals[0], 32000);
  CHECK_EQ_INT(totals[1], 32000);
  CHECK_EQ_INT(totals[2], 32000);
}

static void test_errors(void) {
  char err[SL_AV_ERRLEN], path[600];
  snprintf(path, sizeof path, "%s/missing.wav", dir);
  CHECK(sl_audio_open(path, 16000, 1, NULL, err, sizeof err) == NULL);
  CHECK(strstr(err, path) != NULL);
  sl_media_info info;
  CHECK_EQ_INT(sl_av_probe(path, &info, NULL, err, sizeof err), -1);
  /* a video without audio */
  CHECK(sl_audio_open(video, 16000, 1, NULL, err, sizeof err) == NULL);
  CHECK(strstr(err, "no audio stream") != NULL);
  CHECK_EQ_INT(sl_av_probe(video, &info, NULL, err, sizeof err), 0);
  CHECK_EQ_INT(info.nstreams, 1);
  CHECK_EQ_INT(info.streams[0].width, 160);
  sl_media_info_clear(&info);
}

int main(void) {
  if (!mkdtemp(dir)) return 1;
  snprintf(video, sizeof video, "%s/v.mkv", dir);
  snprintf(audio, sizeof audio, "%s/a.wav", dir);
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "ffmpeg -v error -nostdin -f lavfi -i testsrc=size=160x120:rate=25:duration=10 "
           "-c:v libx264 -preset ultrafast %s && "
           "ffmpeg -v error -nostdin -f lavfi -i sine=sample_rate=48000:duration=2 %s",
           video, audio);
  if (system(cmd) != 0) return 1;
  test_cancel();
  test_audio_counts();
  test_errors();
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) return 1;
  return h_done("test_av");
}
