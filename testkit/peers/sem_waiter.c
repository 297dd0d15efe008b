/* Blocks in sem_wait on an existing named semaphore, as a member waiting for work would.
 *   sem_waiter NAME      prints "waiting", then exits 0 once the semaphore is posted */
#include <semaphore.h>
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: sem_waiter NAME\n");
        return 2;
    }
    sem_t *s = sem_open(argv[1], 0);
    if (s == SEM_FAILED) {
        perror("sem_open");
        return 1;
    }
    printf("waiting\n");
    fflush(stdout);
    if (sem_wait(s) != 0) {
        perror("sem_wait");
        return 1;
    }
    printf("woken\n");
    return 0;
}
