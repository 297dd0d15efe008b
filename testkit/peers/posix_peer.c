/* An unchanged POSIX program, as a member pod would run it, with /dev/shm being the
 * mounted link. It only opens what the link declares (no O_CREAT anywhere):
 *   shm "frames", fifo "events", socket directory "control",
 *   semaphores "frame-ready" (initial 0) and "slots" (initial 8).
 * Build with glibc (gcc) or musl (musl-gcc -static); the link's semaphore abi must match.
 *
 *   posix_peer consumer   listens on control/consumer.sock, waits on frame-ready,
 *                         checks the frame, reads one fifo line and one socket message
 *   posix_peer producer   writes the frame, posts frame-ready, writes the fifo line,
 *                         connects and sends one socket message
 * Exit 0 and "<role> ok" on stdout when every step worked.
 */
#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define FRAME_BYTES (4u << 20)
#define SOCK_PATH "/dev/shm/control/consumer.sock"

static void die(const char *what) {
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    exit(1);
}

static unsigned char *map_frames(void) {
    int fd = shm_open("/frames", O_RDWR, 0);
    if (fd < 0) die("shm_open /frames");
    void *p = mmap(NULL, FRAME_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) die("mmap frames");
    close(fd);
    return p;
}

static void check_slots(void) {
    sem_t *slots = sem_open("/slots", 0);
    if (slots == SEM_FAILED) die("sem_open /slots");
    int v = -1;
    if (sem_getvalue(slots, &v) != 0) die("sem_getvalue slots");
    if (v != 8) {
        fprintf(stderr, "slots value %d, declared 8\n", v);
        exit(1);
    }
}

static int consumer(void) {
    check_slots();
    int ls = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, SOCK_PATH);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0) die("bind control/consumer.sock");
    if (listen(ls, 4) != 0) die("listen");
    printf("listening\n");
    fflush(stdout);

    sem_t *ready = sem_open("/frame-ready", 0);
    if (ready == SEM_FAILED) die("sem_open /frame-ready");
    if (sem_wait(ready) != 0) die("sem_wait frame-ready");
    unsigned char *frame = map_frames();
    if (memcmp(frame, "frame-42", 8) != 0) {
        fprintf(stderr, "frame header wrong\n");
        return 1;
    }
    for (unsigned i = 8; i < FRAME_BYTES; i += 4096)
        if (frame[i] != (unsigned char)(i / 4096)) {
            fprintf(stderr, "frame byte %u wrong\n", i);
            return 1;
        }

    int fifo = open("/dev/shm/events", O_RDONLY);
    if (fifo < 0) die("open events");
    char line[64] = {0};
    ssize_t n = read(fifo, line, sizeof line - 1);
    if (n <= 0 || strcmp(line, "event-1\n") != 0) {
        fprintf(stderr, "fifo read %zd %s\n", n, line);
        return 1;
    }

    int c = accept(ls, NULL, NULL);
    if (c < 0) die("accept");
    char msg[64] = {0};
    n = read(c, msg, sizeof msg - 1);
    if (n <= 0 || strcmp(msg, "hello-socket") != 0) {
        fprintf(stderr, "socket read %zd %s\n", n, msg);
        return 1;
    }
    unlink(SOCK_PATH);
    printf("consumer ok\n");
    return 0;
}

static int producer(void) {
    check_slots();
    unsigned char *frame = map_frames();
    memcpy(frame, "frame-42", 8);
    for (unsigned i = 8; i < FRAME_BYTES; i += 4096) frame[i] = (unsigned char)(i / 4096);
    sem_t *ready = sem_open("/frame-ready", 0);
    if (ready == SEM_FAILED) die("sem_open /frame-ready");
    if (sem_post(ready) != 0) die("sem_post frame-ready");

    int fifo = open("/dev/shm/events", O_WRONLY);
    if (fifo < 0) die("open events");
    if (write(fifo, "event-1\n", 8) != 8) die("write events");
    close(fifo);

    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, SOCK_PATH);
    for (int tries = 0;; tries++) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
            if (write(s, "hello-socket", 12) != 12) die("write socket");
            close(s);
            break;
        }
        close(s);
        if (tries > 200) die("connect control/consumer.sock");
        struct timespec t = {0, 50 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    printf("producer ok\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "consumer") == 0) return consumer();
    if (argc == 2 && strcmp(argv[1], "producer") == 0) return producer();
    fprintf(stderr, "usage: posix_peer consumer|producer\n");
    return 2;
}
