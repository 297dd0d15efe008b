/* ipclink-demo: a producer and a consumer that hand frames over through a link mounted
 * at /dev/shm, with unchanged POSIX calls and nothing created by the program:
 *   shm "frames" (a ring of SLOTS slots), semaphores "slots" (initial SLOTS) and
 *   "frame-ready" (initial 0).
 *   ipclink-demo produce   fills a free slot with the next sequence number, posts
 *   ipclink-demo consume   waits, checks the sequence, frees the slot
 * DEMO_INTERVAL_US (default 1000) paces the producer; DEMO_FRAMES (default 0: forever)
 * stops both after that many frames. Each prints a line per 1000 frames. */
#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "produce") && strcmp(argv[1], "consume"))) {
        fprintf(stderr, "usage: ipclink-demo produce|consume\n");
        return 2;
    }
    int producer = strcmp(argv[1], "produce") == 0;
    int fd = shm_open("/frames", O_RDWR, 0);
    if (fd < 0) die("shm_open /frames");
    struct stat st;
    if (fstat(fd, &st) < 0) die("fstat frames");
    size_t slot = (size_t)st.st_size / SLOTS;
    if (slot < sizeof(uint64_t)) {
        fprintf(stderr, "frames is too small for %d slots\n", SLOTS);
        return 1;
    }
    unsigned char *ring = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (ring == MAP_FAILED) die("mmap frames");
    sem_t *slots = sem_open("/slots", 0);
    if (slots == SEM_FAILED) die("sem_open /slots");
    sem_t *ready = sem_open("/frame-ready", 0);
    if (ready == SEM_FAILED) die("sem_open /frame-ready");
    unsigned long interval = env_or("DEMO_INTERVAL_US", 1000);
    unsigned long frames = env_or("DEMO_FRAMES", 0);
    printf("%s: %zu-byte slots, ring of %d\n", argv[1], slot, SLOTS);
    fflush(stdout);
    for (uint64_t seq = 0; frames == 0 || seq < frames; seq++) {
        unsigned char *at = ring + (seq % SLOTS) * slot;
        if (producer) {
            while (sem_wait(slots) < 0) if (errno != EINTR) die("sem_wait slots");
            memcpy(at, &seq, sizeof seq);
            if (sem_post(ready) < 0) die("sem_post frame-ready");
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
        }
        if ((seq + 1) % 1000 == 0) {
            printf("%s: %llu frames\n", argv[1], (unsigned long long)(seq + 1));
            fflush(stdout);
        }
    }
    printf("%s: done\n", argv[1]);
    return 0;
}
