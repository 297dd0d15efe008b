/* The pod sandbox's process ("pause"): holds the pod's namespaces, reaps children,
 * exits on SIGTERM or SIGINT. Built static (musl) into a scratch image, because no
 * registry is reachable to pull one. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    signal(SIGTERM, quit);
    signal(SIGINT, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
