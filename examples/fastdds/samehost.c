/* libipclink_samehost.so: an LD_PRELOAD library that gives every process it is loaded
 * into the same Fast-DDS host id, so that participants in different network namespaces
 * (pods, Compose services on their own networks) that share an ipclink link at /dev/shm
 * talk over Fast-DDS's shared-memory transport.
 *
 * Fast-DDS (2.9.1, and its source up to 3.x) derives the host id in each shared-memory
 * locator from the running IPv4 interfaces that getifaddrs() lists (all but 127.0.0.1),
 * and drops a peer's shared-memory locators when its id differs. This library marks
 * every IPv4 interface but loopback as not running in what getifaddrs() returns, so that
 * the id falls back to the one every such process computes. The list itself, and how it
 * is freed, are glibc's. The whole process, and every program it starts (LD_PRELOAD is
 * inherited), sees the same, and every member everywhere gets that one id: use it only
 * with a shared-memory-only profile (see docs/fastdds.md). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stddef.h>
#include <sys/socket.h>

int getifaddrs(struct ifaddrs **ifap) {
    int (*real)(struct ifaddrs **) = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    if (real == NULL) {
        errno = ENOSYS;
        return -1;
    }
    int rc = real(ifap);
    if (rc != 0) {
        return rc;
    }
    for (struct ifaddrs *i = *ifap; i != NULL; i = i->ifa_next) {
        if (i->ifa_addr != NULL && i->ifa_addr->sa_family == AF_INET && !(i->ifa_flags & IFF_LOOPBACK)) {
            i->ifa_flags &= ~(unsigned int)IFF_RUNNING;
        }
    }
    return 0;
}
