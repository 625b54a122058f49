/* fuzz_httpd.c: raw bytes to the dashboard over a real TCP connection (core/httpd.c's
 * request parser, then sluice.app.dashboard's routing, token, path and file checks), on the
 * engine's own loop. Each input is one connection: the bytes are sent, the client half-closes,
 * and the loop runs until the server has answered and closed (or its answer has stood still
 * for 0.1 s, e.g. an /api/events stream, or 2 s have passed; the client then drops it). A finding is a crash, a sanitizer report,
 * or an answer that is not HTTP. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static int port;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  lua_State *L = fuzz_setup();
  static char dir[] = "/tmp/sluice-fuzz-httpd.XXXXXX";
  if (!mkdtemp(dir)) abort();
  char p[128];
  snprintf(p, sizeof p, "%s/a.txt", dir);
  FILE *f = fopen(p, "w");
  fputs("a file in the output folder\n", f);
  fclose(f);
  lua_getglobal(L, "T");
  lua_getfield(L, -1, "httpd_start");
  lua_pushstring(L, dir);
  if (sl_call(L, 1, 1) != LUA_OK) abort();
  port = (int)lua_tointeger(L, -1);
  lua_pop(L, 2);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) abort();
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  fcntl(fd, F_SETFL, O_NONBLOCK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) abort();
  size_t sent = 0;
  int half_closed = 0, got_eof = 0;
  size_t got = 0;
  char first[16] = {0};
  double end = now_s() + 2, last_byte = 0;
  while (now_s() < end && !(got > 0 && now_s() - last_byte > 0.1)) {
    uv_run(&fuzz_loop, UV_RUN_NOWAIT);
    if (sent < size) {
      ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
      if (n > 0) sent += (size_t)n;
      else if (n < 0 && errno != EAGAIN && errno != ENOTCONN) sent = size; /* the server closed */
    } else if (!half_closed) {
      shutdown(fd, SHUT_WR);
      half_closed = 1;
    }
    char buf[65536];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      if (got < sizeof first - 1) memcpy(first + got, buf, (size_t)n < sizeof first - 1 - got ? (size_t)n : sizeof first - 1 - got);
      got += (size_t)n;
      last_byte = now_s();
    } else if (n == 0 || (n < 0 && errno != EAGAIN)) {
      got_eof = 1;
      break;
    }
  }
  close(fd);
  for (int i = 0; i < 50; i++) uv_run(&fuzz_loop, UV_RUN_NOWAIT); /* the server's side closes */
  if (got > 0 && strncmp(first, "HTTP/1.1 ", got < 9 ? got : 9) != 0) {
    fprintf(stderr, "fuzz httpd: an answer that is not HTTP: '%.15s'\n", first);
    abort();
  }
  (void)got_eof;
  lua_gc(fuzz_L, LUA_GCSTEP, 0);
  return 0;
}
