/* ipclink queue channels from C: link with -lipclink_queue (libipclink_queue.so, built by
 * `cargo build --release -p ipclink-queue-preload`). Each call returns a negative errno
 * on failure. A queue channel NAME is the file mq.NAME in the link (e.g.
 * /dev/shm/mq.jobs where the link is mounted at /dev/shm).
 *
 * Loaded with LD_PRELOAD instead, the same library serves unchanged programs' mq_open,
 * mq_send, mq_timedsend, mq_receive, mq_timedreceive, mq_getattr, mq_setattr, mq_close
 * and mq_unlink from the queues of $IPCLINK_QUEUE_DIR (default /dev/shm); see
 * docs/queue.md. */
#ifndef IPCLINK_QUEUE_H
#define IPCLINK_QUEUE_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Opens the queue file at path: a descriptor (close-on-exec), or -errno. */
int ipclink_queue_open(const char *path);

/* Closes it: 0, or -EBADF. */
int ipclink_queue_close(int queue);

/* Sends len bytes with priority (0..32767, higher first), waiting up to timeout_ms for
 * room (negative: as long as it takes; 0: not at all): 0, or -EMSGSIZE, -EINVAL,
 * -EAGAIN (full, timeout 0), -ETIMEDOUT, -EBADMSG (a broken queue), -EBADF. */
int ipclink_queue_send(int queue, const char *msg, size_t len, unsigned priority, long timeout_ms);

/* Receives the oldest message of the highest priority into buf (cap bytes, at least the
 * queue's message size), waiting up to timeout_ms: its length (its priority in
 * *priority if not NULL), or -EMSGSIZE, -EAGAIN, -ETIMEDOUT, -EBADMSG, -EBADF. */
ssize_t ipclink_queue_receive(int queue, char *buf, size_t cap, unsigned *priority, long timeout_ms);

/* The queue's capacity, message size and messages waiting (each pointer may be NULL):
 * 0, or -EBADF. */
int ipclink_queue_getattr(int queue, unsigned *capacity, unsigned *message_size, unsigned *waiting);

#ifdef __cplusplus
}
#endif

#endif
