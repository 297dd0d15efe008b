/* POSIX message-queue benchmark peer, written against mq_* only: the same binary runs
 * on the kernel's queues and, with libipclink_queue.so preloaded, on ipclink's.
 *
 *   mq_bench ping NAME N SIZE    N round trips of SIZE bytes over NAME-ping and
 *                                NAME-pong; prints "rtt_p50_ns X rtt_p99_ns Y"
 *   mq_bench pong NAME N SIZE    sends every message of NAME-ping back on NAME-pong
 *   mq_bench sink NAME N SIZE    receives N messages from NAME-data; prints
 *                                "msgs_per_s X" from the first to the last
 *   mq_bench source NAME N SIZE  sends N messages to NAME-data
 * Queues hold 10 messages (the kernel's default limit for a process without
 * CAP_SYS_RESOURCE) of SIZE bytes; ping and sink unlink theirs at the end. */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static mqd_t open_queue(const char *base, const char *suffix, int flags, long size) {
    char name[256];
    snprintf(name, sizeof name, "%s-%s", base, suffix);
    struct mq_attr attr = {.mq_maxmsg = 10, .mq_msgsize = size};
    mqd_t q = mq_open(name, flags | O_CREAT, 0600, &attr);
    if (q == (mqd_t)-1) {
        fprintf(stderr, "mq_open %s: %s\n", name, strerror(errno));
        exit(1);
    }
    return q;
}

static void unlink_queue(const char *base, const char *suffix) {
    char name[256];
    snprintf(name, sizeof name, "%s-%s", base, suffix);
    mq_unlink(name);
}

static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static void must(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "%s: %s\n", what, strerror(errno));
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: mq_bench ping|pong|sink|source NAME N SIZE\n");
        return 2;
    }
    const char *role = argv[1], *base = argv[2];
    long n = strtol(argv[3], NULL, 10), size = strtol(argv[4], NULL, 10);
    char *buf = calloc(1, (size_t)size);
    if (buf == NULL || n <= 0 || size <= 0) return 2;
    if (strcmp(role, "ping") == 0 || strcmp(role, "pong") == 0) {
        int ping = strcmp(role, "ping") == 0;
        mqd_t out = open_queue(base, ping ? "ping" : "pong", O_WRONLY, size);
        mqd_t in = open_queue(base, ping ? "pong" : "ping", O_RDONLY, size);
        long long *rtt = ping ? calloc((size_t)n, sizeof *rtt) : NULL;
        for (long i = 0; i < n; i++) {
            long long t = ping ? now_ns() : 0;
            if (ping) must(mq_send(out, buf, (size_t)size, 0) == 0, "mq_send");
            must(mq_receive(in, buf, (size_t)size, NULL) >= 0, "mq_receive");
            if (!ping) must(mq_send(out, buf, (size_t)size, 0) == 0, "mq_send");
            if (ping) rtt[i] = now_ns() - t;
        }
        if (ping) {
            qsort(rtt, (size_t)n, sizeof *rtt, cmp);
            printf("rtt_p50_ns %lld rtt_p99_ns %lld\n", rtt[n / 2], rtt[n * 99 / 100]);
            unlink_queue(base, "ping");
            unlink_queue(base, "pong");
        }
        return 0;
    }
    if (strcmp(role, "sink") == 0) {
        mqd_t in = open_queue(base, "data", O_RDONLY, size);
        long long first = 0;
        for (long i = 0; i < n; i++) {
            must(mq_receive(in, buf, (size_t)size, NULL) >= 0, "mq_receive");
            if (i == 0) first = now_ns();
        }
        double s = (double)(now_ns() - first) / 1e9;
        printf("msgs_per_s %.0f\n", s > 0 ? (double)(n - 1) / s : 0.0);
        unlink_queue(base, "data");
        return 0;
    }
    if (strcmp(role, "source") == 0) {
        mqd_t out = open_queue(base, "data", O_WRONLY, size);
        for (long i = 0; i < n; i++) must(mq_send(out, buf, (size_t)size, 0) == 0, "mq_send");
        return 0;
    }
    return 2;
}
