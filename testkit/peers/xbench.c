/* xbench: throughput and round trip between two containers, through an ipclink volume
 * mounted at /dev/shm and, for comparison, TCP over their network.
 *   xbench server            answers every test in order, then exits
 *   xbench client SERVER_IP  drives them and prints one RESULT line per transport:
 *       RESULT <transport> <bytes per second> <round trip ns>
 *   xbench ring-server / xbench ring-client   the polled ring two ways, in turns, by the
 *       same two processes: in the link's shm "ring" (the volume at /ipclink) and in a
 *       "ring" the server creates in the /dev/shm of the IPC namespace both share
 *       (Compose's `ipc: service:`), as programs do without ipclink; the client prints
 *       the median of XBENCH_REPS turns (default 7) of each: RESULT shm-ring and
 *       RESULT shm-ring-ipc; then the median of the ratios of turns taken one after the
 *       other (which cancels what drifts between turns): RATIO <throughput> <round trip>
 * Transports of server/client, in order: tcp, socket (path socket in control/), fifo
 * (up + down), shm-sem (the first slots of shm "ring" handed over with semaphores
 * slots/filled; round trip with ping/pong). The polled ring: both sides poll 64 KiB
 * slots; round trip through two polled words. The link (see the benchmark) declares:
 * shm ring 16Mi, fifos up and down, socket dir control, musl semaphores ping 0, pong 0,
 * slots 16, filled 0. XBENCH_BYTES (default 1 GiB) and XBENCH_TRIPS (default 20000) size
 * the runs. Stream transports move 256 KiB per call. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <semaphore.h>
#include <stdatomic.h>
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

#define CHUNK (64 * 1024)
#define STREAM_CHUNK (256 * 1024) /* per write/read on tcp, socket and fifo */
/* Polled ring: 2 MiB, which the two cores' caches hold. With 8 MiB the figure followed
 * where the kernel happened to place the ring's pages (two allocations of the same kind
 * of file differed by up to 14%), not the hand-off. */
#define RING_SLOTS 32
#define SEM_SLOTS 16   /* semaphore ring: 1 MiB, the value of "slots" */
#define PORT 5099
#define SOCK_PATH "/dev/shm/control/xbench.sock"

struct header {
    _Alignas(64) _Atomic uint64_t phase;
    _Alignas(64) _Atomic uint64_t head;
    _Alignas(64) _Atomic uint64_t tail;
    _Alignas(64) _Atomic uint64_t ping;
    _Alignas(64) _Atomic uint64_t pong;
};

static uint64_t total_bytes, trips;
static unsigned char *buf;

static void die(const char *what) {
    fprintf(stderr, "xbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void io_all(int fd, void *p, size_t len, int writing) {
    unsigned char *c = p;
    while (len) {
        ssize_t n = writing ? write(fd, c, len) : read(fd, c, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die(writing ? "write" : "read");
        c += n;
        len -= (size_t)n;
    }
}

/* Stream total_bytes one way, then trips 8-byte round trips, over (rd, wr). */
static void stream_client(const char *name, int rd, int wr) {
    uint64_t t0 = now_ns();
    for (uint64_t sent = 0; sent < total_bytes; sent += STREAM_CHUNK) io_all(wr, buf, STREAM_CHUNK, 1);
    char ack;
    io_all(rd, &ack, 1, 0);
    uint64_t t1 = now_ns();
    uint64_t v = 0;
    for (uint64_t i = 0; i < trips; i++) {
        io_all(wr, &i, 8, 1);
        io_all(rd, &v, 8, 0);
        if (v != i) { fprintf(stderr, "xbench: %s: bad echo\n", name); exit(1); }
    }
    uint64_t t2 = now_ns();
    printf("RESULT %s %.0f %.0f\n", name, total_bytes * 1e9 / (double)(t1 - t0),
           (double)(t2 - t1) / (double)trips);
    fflush(stdout);
}

static void stream_server(int rd, int wr) {
    for (uint64_t got = 0; got < total_bytes; got += STREAM_CHUNK) io_all(rd, buf, STREAM_CHUNK, 0);
    io_all(wr, "k", 1, 1);
    uint64_t v;
    for (uint64_t i = 0; i < trips; i++) {
        io_all(rd, &v, 8, 0);
        io_all(wr, &v, 8, 1);
    }
}

static int tcp_socket(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0) die("socket");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    return fd;
}

static int connect_retry(int (*make)(void), const struct sockaddr *a, socklen_t len) {
    for (int tries = 0;; tries++) {
        int fd = make();
        if (connect(fd, a, len) == 0) return fd;
        close(fd);
        if (tries == 600) die("connect");
        usleep(50 * 1000);
    }
}

static int unix_socket(void) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    /* A stream socket's default 208 KiB send buffer is below what TCP autotunes to. */
    int size = 4 << 20;
    if (fd < 0) die("socket");
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    return fd;
}

/* The ring at path: ipclink's declared one, or (create) one this process makes in
 * /dev/shm as programs do without ipclink (what shm_open does); a peer waits until it is
 * there at full size. */
static void *map_ring(struct header **h, const char *path, int create) {
    size_t len = 4096 + (size_t)RING_SLOTS * CHUNK;
    int fd = open(path, O_RDWR | O_CLOEXEC | (create > 0 ? O_CREAT | O_EXCL : 0), 0600);
    for (int tries = 0; fd < 0 && create < 0 && errno == ENOENT && tries < 3000; tries++) {
        usleep(10 * 1000);
        fd = open(path, O_RDWR | O_CLOEXEC);
    }
    if (fd < 0) die(path);
    /* Allocated up front, as ipclink allocates a declared region: a ring only ftruncated
     * would pay for its first page faults inside the timed loop. */
    if (create > 0 && (errno = posix_fallocate(fd, 0, (off_t)len)) != 0) die("fallocate ring");
    struct stat st;
    for (int tries = 0; fstat(fd, &st) == 0 && (size_t)st.st_size < len; tries++) {
        if (tries == 3000) { fprintf(stderr, "xbench: /ring is too small\n"); exit(1); }
        usleep(10 * 1000);
    }
    /* Both rings are mapped with their page tables filled, so neither side times its
     * own first touches. */
    unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (m == MAP_FAILED) die("mmap ring");
    *h = (struct header *)m;
    return m + 4096;
}

static sem_t *sem(const char *name) {
    sem_t *s = sem_open(name, 0);
    if (s == SEM_FAILED) die(name);
    return s;
}

static void sem_wait_all(sem_t *s) {
    while (sem_wait(s) < 0)
        if (errno != EINTR) die("sem_wait");
}

static void spin_until(_Atomic uint64_t *w, uint64_t value) {
    while (atomic_load_explicit(w, memory_order_acquire) != value) __builtin_ia32_pause();
}

/* One turn of the polled ring (turn counts from 1 per ring, which starts zeroed); the
 * client stores bytes per second and the round trip in ns. */
static void ring_test(int server, struct header *h, unsigned char *ring, uint64_t turn,
                      double *bps, double *rtt) {
    uint64_t chunks = total_bytes / CHUNK;
    if (server) {
        spin_until(&h->phase, turn);
        for (uint64_t t = 0; t < chunks; t++) {
            while (atomic_load_explicit(&h->head, memory_order_acquire) == t) __builtin_ia32_pause();
            memcpy(buf, ring + (t % RING_SLOTS) * CHUNK, CHUNK);
            atomic_store_explicit(&h->tail, t + 1, memory_order_release);
        }
        for (uint64_t i = 1; i <= trips * 10; i++) {
            spin_until(&h->ping, i);
            atomic_store_explicit(&h->pong, i, memory_order_release);
        }
    } else {
        atomic_store(&h->head, 0);
        atomic_store(&h->tail, 0);
        atomic_store(&h->ping, 0);
        atomic_store(&h->pong, 0);
        atomic_store_explicit(&h->phase, turn, memory_order_release);
        uint64_t t0 = now_ns();
        for (uint64_t t = 0; t < chunks; t++) {
            while (t - atomic_load_explicit(&h->tail, memory_order_acquire) >= RING_SLOTS) __builtin_ia32_pause();
            memcpy(ring + (t % RING_SLOTS) * CHUNK, buf, CHUNK);
            atomic_store_explicit(&h->head, t + 1, memory_order_release);
        }
        spin_until(&h->tail, chunks);
        uint64_t t1 = now_ns();
        for (uint64_t i = 1; i <= trips * 10; i++) {
            atomic_store_explicit(&h->ping, i, memory_order_release);
            spin_until(&h->pong, i);
        }
        uint64_t t2 = now_ns();
        *bps = total_bytes * 1e9 / (double)(t1 - t0);
        *rtt = (double)(t2 - t1) / (double)(trips * 10);
    }
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, by_value);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Both rings in turns (each turn starts with the other one, so neither always runs
 * first); the client prints the medians. */
static void rings(int server) {
    struct header *lh, *ih;
    unsigned char *link = map_ring(&lh, "/ipclink/ring", 0);
    unsigned char *own = map_ring(&ih, "/dev/shm/ring", server ? 1 : -1);
    int reps = getenv("XBENCH_REPS") ? atoi(getenv("XBENCH_REPS")) : 7;
    if (reps < 1 || reps > 1000) { fprintf(stderr, "xbench: XBENCH_REPS: 1 to 1000\n"); exit(2); }
    double *lb = calloc((size_t)reps * 6, sizeof(double));
    if (!lb) die("calloc");
    double *lr = lb + reps, *ob = lr + reps, *orr = ob + reps, *qb = orr + reps, *qr = qb + reps;
    for (int r = 0; r < reps; r++)
        for (int k = 0; k < 2; k++) {
            if ((r + k) % 2) ring_test(server, ih, own, (uint64_t)r + 1, &ob[r], &orr[r]);
            else ring_test(server, lh, link, (uint64_t)r + 1, &lb[r], &lr[r]);
        }
    if (!server) {
        for (int r = 0; r < reps; r++) {
            qb[r] = lb[r] / ob[r];
            qr[r] = lr[r] / orr[r];
        }
        printf("RATIO %.4f %.4f\n", median(qb, reps), median(qr, reps));
        printf("RESULT shm-ring %.0f %.1f\n", median(lb, reps), median(lr, reps));
        printf("RESULT shm-ring-ipc %.0f %.1f\n", median(ob, reps), median(orr, reps));
        fflush(stdout);
    }
}

int main(int argc, char **argv) {
    int turns = argc == 2 && (!strcmp(argv[1], "ring-server") || !strcmp(argv[1], "ring-client"));
    if (!turns && (argc < 2 || (strcmp(argv[1], "server") && (strcmp(argv[1], "client") || argc != 3)))) {
        fprintf(stderr, "usage: xbench server | xbench client SERVER_IP | xbench ring-server | xbench ring-client\n");
        return 2;
    }
    int server = strcmp(argv[1], "server") == 0 || strcmp(argv[1], "ring-server") == 0;
    total_bytes = getenv("XBENCH_BYTES") ? strtoull(getenv("XBENCH_BYTES"), NULL, 10) : 1ull << 30;
    total_bytes = total_bytes / CHUNK * CHUNK;
    trips = getenv("XBENCH_TRIPS") ? strtoull(getenv("XBENCH_TRIPS"), NULL, 10) : 20000;
    total_bytes = total_bytes / STREAM_CHUNK * STREAM_CHUNK;
    buf = malloc(STREAM_CHUNK);
    if (!buf) die("malloc");
    memset(buf, 0xab, STREAM_CHUNK);

    if (turns) {
        rings(server);
        return 0;
    }

    /* tcp */
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(PORT)};
    if (server) {
        int l = tcp_socket();
        if (bind(l, (struct sockaddr *)&in, sizeof in) < 0 || listen(l, 1) < 0) die("tcp listen");
        /* The socket test's listener exists before the client can finish tcp. */
        int ul = unix_socket();
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        strcpy(un.sun_path, SOCK_PATH);
        unlink(SOCK_PATH);
        if (bind(ul, (struct sockaddr *)&un, sizeof un) < 0 || listen(ul, 1) < 0) die("unix listen");
        int c = accept(l, NULL, NULL);
        if (c < 0) die("accept");
        int one = 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        stream_server(c, c);
        close(c);
        c = accept(ul, NULL, NULL);
        if (c < 0) die("accept unix");
        stream_server(c, c);
        close(c);
        unlink(SOCK_PATH);
    } else {
        if (inet_pton(AF_INET, argv[2], &in.sin_addr) != 1) { fprintf(stderr, "bad SERVER_IP\n"); return 2; }
        int c = connect_retry(tcp_socket, (struct sockaddr *)&in, sizeof in);
        stream_client("tcp", c, c);
        close(c);
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        strcpy(un.sun_path, SOCK_PATH);
        c = connect_retry(unix_socket, (struct sockaddr *)&un, sizeof un);
        stream_client("socket", c, c);
        close(c);
    }

    /* fifo: up carries client -> server, down the answers */
    int up = open("/dev/shm/up", server ? O_RDONLY : O_WRONLY);
    int down = open("/dev/shm/down", server ? O_WRONLY : O_RDONLY);
    if (up < 0 || down < 0) die("open fifos");
    fcntl(up, F_SETPIPE_SZ, 1 << 20);
    if (server) stream_server(up, down);
    else stream_client("fifo", down, up);
    close(up);
    close(down);

    struct header *h;
    unsigned char *ring = map_ring(&h, "/dev/shm/ring", 0);
    uint64_t chunks = total_bytes / CHUNK;

    /* shm-sem: the first SEM_SLOTS slots of the ring, handed over by semaphores */
    sem_t *slots = sem("/slots"), *filled = sem("/filled"), *ping = sem("/ping"), *pong = sem("/pong");
    if (server) {
        for (uint64_t t = 0; t < chunks; t++) {
            sem_wait_all(filled);
            memcpy(buf, ring + (t % SEM_SLOTS) * CHUNK, CHUNK);
            sem_post(slots);
        }
        for (uint64_t i = 0; i < trips; i++) {
            sem_wait_all(ping);
            sem_post(pong);
        }
    } else {
        uint64_t t0 = now_ns();
        for (uint64_t t = 0; t < chunks; t++) {
            sem_wait_all(slots);
            memcpy(ring + (t % SEM_SLOTS) * CHUNK, buf, CHUNK);
            sem_post(filled);
        }
        for (int i = 0; i < SEM_SLOTS; i++) sem_wait_all(slots); /* all consumed */
        uint64_t t1 = now_ns();
        for (int i = 0; i < SEM_SLOTS; i++) sem_post(slots);
        for (uint64_t i = 0; i < trips; i++) {
            sem_post(ping);
            sem_wait_all(pong);
        }
        uint64_t t2 = now_ns();
        printf("RESULT shm-sem %.0f %.0f\n", total_bytes * 1e9 / (double)(t1 - t0),
               (double)(t2 - t1) / (double)trips);
        fflush(stdout);
    }
    return 0;
}
