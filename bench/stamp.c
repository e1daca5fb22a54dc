/* The benchmark's leader command: records its life with CLOCK_MONOTONIC stamps.
 *
 * usage: stamp EVENTS_FILE NAME [BEAT_MS]
 *
 * Appends (O_APPEND, one write per line) lines in the format of tests/leader_child.py, so
 * tests/harness.read_lives() parses them:
 *     "<CLOCK_MONOTONIC seconds> <pid> <name> <fencing token or -> <event>"
 * events: start (stamped by the first statement of main, ~1 ms after exec), beat (every BEAT_MS,
 * default 10), stop (on SIGTERM, then exit 0). SIGTERM is blocked and taken with sigtimedwait,
 * so no work happens in a signal handler.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fd;
static const char *name, *token;

static void record(const struct timespec *ts, const char *event) {
    char line[512];
    int n = snprintf(line, sizeof line, "%ld.%06ld %d %s %s %s\n", (long)ts->tv_sec, ts->tv_nsec / 1000L,
                     (int)getpid(), name, token, event);
    if (n > 0 && write(fd, line, (size_t)n) < 0) _exit(3);
}

static void record_now(const char *event) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    record(&ts, event);
}

int main(int argc, char **argv) {
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    if (argc < 3) {
        fprintf(stderr, "usage: stamp EVENTS_FILE NAME [BEAT_MS]\n");
        return 2;
    }
    fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return 3;
    name = argv[2];
    token = getenv("CONSUL_ELECT_FENCING_TOKEN");
    if (!token || !*token) token = "-";
    long beat_ms = argc > 3 ? atol(argv[3]) : 10;
    if (beat_ms <= 0) beat_ms = 10;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    record(&started, "start");
    struct timespec beat = {beat_ms / 1000, (beat_ms % 1000) * 1000000L};
    for (;;) {
        if (sigtimedwait(&set, NULL, &beat) == SIGTERM) {
            record_now("stop");
            return 0;
        }
        record_now("beat");
    }
}
