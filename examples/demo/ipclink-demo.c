/* ipclink-demo: a producer and a consumer that hand frames over through a link mounted
 * at /dev/shm, with unchanged POSIX calls and nothing created by the program:
 *   shm "frames" (a ring of SLOTS slots), semaphores "slots" (initial SLOTS) and
 *   "frame-ready" (initial 0).
 *   ipclink-demo produce   fills a free slot with the next sequence number, posts
 *   ipclink-demo consume   waits, checks the sequence, frees the slot
 * DEMO_INTERVAL_US (default 1000) paces the producer; DEMO_FRAMES (default 0: forever)
 * stops both after that many frames. Each prints a line per 1000 frames.
 * Optionally each frame's sequence number also travels
 *   DEMO_FIFO=events               through that FIFO (8 bytes per frame), and
 *   DEMO_SOCKET=control/demo.sock  over a stream socket the consumer binds there,
 * and the consumer checks all of them.
 * DEMO_CREATE=BYTES is the way without ipclink (Compose's `ipc: service:`): nothing is
 * declared, so the producer creates the semaphores and a ring of BYTES (mode 0600, the
 * ring made whole under another name and renamed into place), and the consumer waits up
 * to 30 s for it to appear.
 * SIGTERM and SIGINT end it at once (as PID 1 of its container it would otherwise
 * ignore them, and every `compose stop` would wait for the engine's timeout). */
#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 8

static void die(const char *what) {
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    exit(1);
}

static unsigned long env_or(const char *name, unsigned long fallback) {
    const char *v = getenv(name);
    return v && *v ? strtoul(v, NULL, 10) : fallback;
}

static void full_io(int fd, void *buf, size_t len, int writing, const char *what) {
    unsigned char *p = buf;
    while (len) {
        ssize_t n = writing ? write(fd, p, len) : read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die(what);
        if (n == 0) {
            fprintf(stderr, "%s: end of stream\n", what);
            exit(1);
        }
        p += n;
        len -= (size_t)n;
    }
}

static void pause_ms(long ms) {
    struct timespec pause = {ms / 1000, (ms % 1000) * 1000 * 1000};
    nanosleep(&pause, NULL);
}

static int socket_at(const char *rel, int serve) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (snprintf(addr.sun_path, sizeof addr.sun_path, "/dev/shm/%s", rel) >= (int)sizeof addr.sun_path) {
        fprintf(stderr, "DEMO_SOCKET is too long\n");
        exit(2);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (serve) {
        unlink(addr.sun_path);
        if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind DEMO_SOCKET");
        if (listen(fd, 1) < 0) die("listen");
        return fd;
    }
    for (int tries = 0; connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0; tries++) {
        if (tries == 300) die("connect DEMO_SOCKET");
        pause_ms(100);
    }
    return fd;
}

static void create_objects(size_t bytes) {
    sem_unlink("/slots");
    sem_unlink("/frame-ready");
    shm_unlink("/frames");
    sem_t *s = sem_open("/slots", O_CREAT | O_EXCL, 0600, SLOTS);
    sem_t *r = sem_open("/frame-ready", O_CREAT | O_EXCL, 0600, 0);
    if (s == SEM_FAILED || r == SEM_FAILED) die("sem_open O_CREAT");
    shm_unlink("/.frames-new");
    int fd = shm_open("/.frames-new", O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) die("shm_open O_CREAT");
    if (ftruncate(fd, (off_t)bytes) < 0) die("ftruncate frames");
    if (rename("/dev/shm/.frames-new", "/dev/shm/frames") < 0) die("rename frames");
    close(fd);
}

static void wait_for_objects(void) {
    for (int tries = 0; access("/dev/shm/frames", F_OK) < 0; tries++) {
        if (tries == 3000) die("wait for /frames");
        pause_ms(10);
    }
}

static void on_stop(int sig) { _exit(128 + sig); }

int main(int argc, char **argv) {
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    if (argc != 2 || (strcmp(argv[1], "produce") && strcmp(argv[1], "consume"))) {
        fprintf(stderr, "usage: ipclink-demo produce|consume\n");
        return 2;
    }
    int producer = strcmp(argv[1], "produce") == 0;
    unsigned long create = env_or("DEMO_CREATE", 0);
    if (create && producer) create_objects(create);
    if (create && !producer) wait_for_objects();
    /* The consumer only reads the ring: it opens and maps it read-only, as the link
     * declares it (a reader of `frames`). */
    int fd = shm_open("/frames", producer ? O_RDWR : O_RDONLY, 0);
    if (fd < 0) die("shm_open /frames");
    struct stat st;
    if (fstat(fd, &st) < 0) die("fstat frames");
    size_t slot = (size_t)st.st_size / SLOTS;
    if (slot < sizeof(uint64_t)) {
        fprintf(stderr, "frames is too small for %d slots\n", SLOTS);
        return 1;
    }
    unsigned char *ring = mmap(NULL, (size_t)st.st_size, producer ? PROT_READ | PROT_WRITE : PROT_READ,
                               MAP_SHARED, fd, 0);
    if (ring == MAP_FAILED) die("mmap frames");
    sem_t *slots = sem_open("/slots", 0);
    if (slots == SEM_FAILED) die("sem_open /slots");
    sem_t *ready = sem_open("/frame-ready", 0);
    if (ready == SEM_FAILED) die("sem_open /frame-ready");
    unsigned long interval = env_or("DEMO_INTERVAL_US", 1000);
    unsigned long frames = env_or("DEMO_FRAMES", 0);
    const char *fifo_name = getenv("DEMO_FIFO");
    const char *sock_name = getenv("DEMO_SOCKET");
    int fifo = -1, sock = -1;
    /* The consumer listens before it opens the FIFO: the producer's FIFO open returns
     * only once the consumer's does, so the socket is there when it connects. */
    int listener = (!producer && sock_name && *sock_name) ? socket_at(sock_name, 1) : -1;
    if (fifo_name && *fifo_name) {
        char path[256];
        snprintf(path, sizeof path, "/dev/shm/%s", fifo_name);
        fifo = open(path, producer ? O_WRONLY : O_RDONLY);
        if (fifo < 0) die("open DEMO_FIFO");
    }
    if (sock_name && *sock_name) {
        if (producer) {
            sock = socket_at(sock_name, 0);
        } else {
            sock = accept(listener, NULL, NULL);
            if (sock < 0) die("accept");
        }
    }
    printf("%s: %zu-byte slots, ring of %d%s%s\n", argv[1], slot, SLOTS,
           fifo >= 0 ? ", fifo" : "", sock >= 0 ? ", socket" : "");
    fflush(stdout);
    for (uint64_t seq = 0; frames == 0 || seq < frames; seq++) {
        unsigned char *at = ring + (seq % SLOTS) * slot;
        if (producer) {
            while (sem_wait(slots) < 0) if (errno != EINTR) die("sem_wait slots");
            memcpy(at, &seq, sizeof seq);
            if (sem_post(ready) < 0) die("sem_post frame-ready");
            if (fifo >= 0) full_io(fifo, &seq, sizeof seq, 1, "write DEMO_FIFO");
            if (sock >= 0) full_io(sock, &seq, sizeof seq, 1, "send DEMO_SOCKET");
            if (interval) usleep(interval);
        } else {
            while (sem_wait(ready) < 0) if (errno != EINTR) die("sem_wait frame-ready");
            uint64_t got;
            memcpy(&got, at, sizeof got);
            if (got != seq) {
                fprintf(stderr, "consume: frame %llu carries %llu\n", (unsigned long long)seq,
                        (unsigned long long)got);
                return 1;
            }
            if (sem_post(slots) < 0) die("sem_post slots");
            for (int i = 0; i < 2; i++) {
                int fd = i == 0 ? fifo : sock;
                if (fd < 0) continue;
                full_io(fd, &got, sizeof got, 0, i == 0 ? "read DEMO_FIFO" : "recv DEMO_SOCKET");
                if (got != seq) {
                    fprintf(stderr, "consume: frame %llu came as %llu over the %s\n",
                            (unsigned long long)seq, (unsigned long long)got, i == 0 ? "fifo" : "socket");
                    return 1;
                }
            }
        }
        if ((seq + 1) % 1000 == 0) {
            printf("%s: %llu frames\n", argv[1], (unsigned long long)(seq + 1));
            fflush(stdout);
        }
    }
    printf("%s: done\n", argv[1]);
    return 0;
}
