/* Creates a named semaphore the way the C library itself does (sem_open with O_CREAT),
 * so tests can compare its bytes with what ipclink writes.
 *   sem_make NAME VALUE */
#include <fcntl.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: sem_make NAME VALUE\n");
        return 2;
    }
    sem_t *s = sem_open(argv[1], O_CREAT | O_EXCL, 0600, (unsigned)atoi(argv[2]));
    if (s == SEM_FAILED) {
        perror("sem_open");
        return 1;
    }
    return 0;
}
