/* A program written against POSIX message queues only (mq_open, mq_send,
 * mq_timedreceive, mq_getattr, mq_setattr, mq_close, mq_unlink), for the tests of
 * libipclink_queue.so as an LD_PRELOAD shim. It knows nothing of ipclink.
 *
 *   mq_peer recv /NAME COUNT   create the queue (64 x 64 bytes) if needed, print its
 *                              attributes, receive COUNT messages, check that each
 *                              priority's arrive in the order sent
 *   mq_peer send /NAME COUNT   open it (waiting up to 30 s for it to exist), send COUNT
 *                              messages "SEQ PRIO" with priorities 0..2
 *   mq_peer open /NAME         open it once; print the errno name on failure (exit 3)
 *   mq_peer errors /NAME       the error cases on a fresh queue, one "ok ..." line each
 */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *errname(int e) {
    switch (e) {
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EAGAIN: return "EAGAIN";
    case EMSGSIZE: return "EMSGSIZE";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case EACCES: return "EACCES";
    default: return "other";
    }
}

static int fail(const char *what) {
    printf("%s: %s (%d)\n", what, errname(errno), errno);
    fflush(stdout);
    return 1;
}

static struct timespec in_ms(long ms) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

static int expect(const char *what, int got, int want_errno) {
    if (got != -1 || errno != want_errno) {
        printf("FAIL %s: returned %d, errno %s\n", what, got, errname(errno));
        return 1;
    }
    printf("ok %s %s\n", what, errname(want_errno));
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: mq_peer recv|send|open|errors /NAME [COUNT]\n");
        return 2;
    }
    const char *role = argv[1], *name = argv[2];
    long count = argc > 3 ? strtol(argv[3], NULL, 10) : 0;
    char buf[64];
    if (strcmp(role, "recv") == 0) {
        struct mq_attr attr = {.mq_maxmsg = 64, .mq_msgsize = 64};
        mqd_t q = mq_open(name, O_RDONLY | O_CREAT, 0600, &attr);
        if (q == (mqd_t)-1) return fail("mq_open");
        struct mq_attr got;
        if (mq_getattr(q, &got) != 0) return fail("mq_getattr");
        printf("maxmsg %ld msgsize %ld\n", got.mq_maxmsg, got.mq_msgsize);
        fflush(stdout);
        long last[3] = {-1, -1, -1};
        for (long n = 0; n < count; n++) {
            unsigned prio;
            struct timespec t = in_ms(30000);
            ssize_t len = mq_timedreceive(q, buf, sizeof buf, &prio, &t);
            if (len < 0) return fail("mq_timedreceive");
            buf[len < (ssize_t)sizeof buf ? len : (ssize_t)sizeof buf - 1] = '\0';
            long seq;
            unsigned said;
            if (sscanf(buf, "%ld %u", &seq, &said) != 2 || said != prio || prio > 2 || seq <= last[prio]) {
                printf("out of order or damaged: \"%s\" with priority %u after %ld\n", buf, prio,
                       prio <= 2 ? last[prio] : -1);
                return 1;
            }
            last[prio] = seq;
        }
        printf("received %ld, in order within each priority\n", count);
        return mq_close(q) == 0 ? 0 : fail("mq_close");
    }
    if (strcmp(role, "send") == 0) {
        mqd_t q = (mqd_t)-1;
        for (int i = 0; i < 3000 && q == (mqd_t)-1; i++) {
            q = mq_open(name, O_WRONLY);
            if (q == (mqd_t)-1 && errno != ENOENT) return fail("mq_open");
            if (q == (mqd_t)-1) usleep(10000);
        }
        if (q == (mqd_t)-1) return fail("mq_open");
        for (long n = 0; n < count; n++) {
            unsigned prio = (unsigned)(n % 3);
            int len = snprintf(buf, sizeof buf, "%ld %u", n, prio);
            if (mq_send(q, buf, (size_t)len, prio) != 0) return fail("mq_send");
        }
        printf("sent %ld\n", count);
        return mq_close(q) == 0 ? 0 : fail("mq_close");
    }
    if (strcmp(role, "open") == 0) {
        mqd_t q = mq_open(name, O_RDONLY);
        if (q == (mqd_t)-1) {
            printf("%s\n", errname(errno));
            return 3;
        }
        printf("opened\n");
        return 0;
    }
    if (strcmp(role, "errors") == 0) {
        struct mq_attr attr = {.mq_maxmsg = 2, .mq_msgsize = 16};
        mqd_t q = mq_open(name, O_RDWR | O_CREAT | O_EXCL, 0600, &attr);
        if (q == (mqd_t)-1) return fail("mq_open");
        int bad = 0;
        bad |= expect("O_EXCL on an existing queue", mq_open(name, O_RDWR | O_CREAT | O_EXCL, 0600, &attr), EEXIST);
        char big[17] = {0};
        bad |= expect("a message over msgsize", mq_send(q, big, sizeof big, 0), EMSGSIZE);
        bad |= expect("a receive buffer under msgsize", (int)mq_receive(q, buf, 8, NULL), EMSGSIZE);
        struct timespec past = in_ms(-1000);
        bad |= expect("a timed receive on an empty queue", (int)mq_timedreceive(q, buf, sizeof buf, NULL, &past), ETIMEDOUT);
        struct mq_attr nb = {.mq_flags = O_NONBLOCK}, old;
        if (mq_setattr(q, &nb, &old) != 0 || old.mq_flags != 0) return fail("mq_setattr");
        bad |= expect("a non-blocking receive on an empty queue", (int)mq_receive(q, buf, sizeof buf, NULL), EAGAIN);
        if (mq_send(q, "a", 1, 1) != 0 || mq_send(q, "b", 1, 5) != 0) return fail("mq_send");
        bad |= expect("a non-blocking send to a full queue", mq_send(q, "c", 1, 0), EAGAIN);
        struct mq_attr now;
        if (mq_getattr(q, &now) != 0 || now.mq_curmsgs != 2 || now.mq_flags != O_NONBLOCK) return fail("mq_getattr");
        unsigned prio = 0;
        if (mq_receive(q, buf, sizeof buf, &prio) != 1 || buf[0] != 'b' || prio != 5) {
            printf("FAIL the higher priority first\n");
            bad = 1;
        } else {
            printf("ok the higher priority first\n");
        }
        if (mq_close(q) != 0) return fail("mq_close");
        bad |= expect("a closed descriptor", mq_send(q, "x", 1, 0), EBADF);
        if (mq_unlink(name) != 0) return fail("mq_unlink");
        bad |= expect("opening an unlinked queue", mq_open(name, O_RDONLY), ENOENT);
        return bad;
    }
    fprintf(stderr, "mq_peer: unknown role %s\n", role);
    return 2;
}
