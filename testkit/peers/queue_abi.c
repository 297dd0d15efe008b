/* The C ABI of libipclink_queue.so (include/ipclink_queue.h), linked against it:
 *   queue_abi PATH   sends three messages with priorities, reads the attributes,
 *                    receives them back, and checks the errors; "ok ..." per check. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ipclink_queue.h"

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    int q = ipclink_queue_open(argv[1]);
    if (q < 0) {
        printf("open: %d\n", q);
        return 1;
    }
    int bad = 0;
    bad |= ipclink_queue_send(q, "low", 3, 1, -1) != 0;
    bad |= ipclink_queue_send(q, "high", 4, 9, -1) != 0;
    unsigned cap = 0, size = 0, waiting = 0;
    bad |= ipclink_queue_getattr(q, &cap, &size, &waiting) != 0;
    printf("ok attrs %u %u %u\n", cap, size, waiting);
    char buf[64];
    unsigned prio = 0;
    ssize_t n = ipclink_queue_receive(q, buf, sizeof buf, &prio, 0);
    printf("ok first %.*s %u\n", (int)(n > 0 ? n : 0), buf, prio);
    n = ipclink_queue_receive(q, buf, sizeof buf, &prio, 0);
    printf("ok second %.*s %u\n", (int)(n > 0 ? n : 0), buf, prio);
    if (ipclink_queue_receive(q, buf, sizeof buf, &prio, 0) == -EAGAIN) printf("ok empty EAGAIN\n");
    if (ipclink_queue_receive(q, buf, sizeof buf, &prio, 20) == -ETIMEDOUT) printf("ok timeout ETIMEDOUT\n");
    if (ipclink_queue_receive(q, buf, 4, &prio, 0) == -EMSGSIZE) printf("ok small buffer EMSGSIZE\n");
    if (ipclink_queue_send(q, "x", 1, 40000, 0) == -EINVAL) printf("ok priority EINVAL\n");
    if (ipclink_queue_close(q) == 0 && ipclink_queue_close(q) == -EBADF) printf("ok closed EBADF\n");
    if (ipclink_queue_open("/nonexistent/mq.x") == -ENOENT) printf("ok missing ENOENT\n");
    return bad;
}
