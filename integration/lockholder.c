/* lockholder FILE: takes a BSD lock (flock) and a POSIX record lock on FILE, says "locked",
 * then waits forever. Used by the migration tests: the locks must survive a live move. */
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    int bsd = open(argv[1], O_RDWR | O_CREAT, 0644);
    int posix = open(argv[1], O_RDWR);
    if (bsd < 0 || posix < 0 || flock(bsd, LOCK_EX | LOCK_NB) != 0)
        return 1;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    if (fcntl(posix, F_SETLK, &fl) != 0)
        return 1;
    if (write(1, "locked\n", 7) != 7)
        return 1;
    for (;;)
        pause();
}
