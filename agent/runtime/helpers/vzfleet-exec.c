/*
 * vzfleet-exec: run a command inside a container in the time namespace of its init.
 *
 * CRIU restores a container into a new time namespace; runc 1.1 (Debian 12) does not know time
 * namespaces, so `runc exec` would leave new processes in the host's, and a later checkpoint of
 * the container could not be restored ("Can't restore sub-task in NS"). runc execs this helper
 * (passed as an open fd, with CAP_SYS_ADMIN added for this process only); it joins init's time
 * namespace, drops CAP_SYS_ADMIN again from every set, forks (a time namespace applies to the
 * children of the caller), and the child execs the command. The parent waits and passes on the
 * child's exit status and the usual terminating signals.
 *
 * Usage: vzfleet-exec COMMAND [ARG...]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

static pid_t child;

static void forward(int sig) {
    if (child > 0)
        kill(child, sig);
}

static int drop_sys_admin(void) {
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN, 0, 0, 0) < 0 && errno != EINVAL)
        return -1;
    if (syscall(SYS_capget, &hdr, data) < 0)
        return -1;
    data[0].effective &= ~(1u << CAP_SYS_ADMIN);
    data[0].permitted &= ~(1u << CAP_SYS_ADMIN);
    data[0].inheritable &= ~(1u << CAP_SYS_ADMIN);
    if (syscall(SYS_capset, &hdr, data) < 0)
        return -1;
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_LOWER, CAP_SYS_ADMIN, 0, 0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: vzfleet-exec COMMAND [ARG...]\n");
        return 127;
    }
    /* fd 3 is this very binary (runc --preserve-fds): a host file that must not leak into the
     * container's processes (CRIU cannot dump a file from a mount the container does not see) */
    close(3);
    int fd = open("/proc/1/ns/time", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (setns(fd, CLONE_NEWTIME) < 0 && errno != EINVAL)
            fprintf(stderr, "vzfleet-exec: joining the container's time namespace: %s\n", strerror(errno));
        close(fd);
    }
    if (drop_sys_admin() < 0) {
        fprintf(stderr, "vzfleet-exec: cannot drop CAP_SYS_ADMIN: %s\n", strerror(errno));
        return 126;
    }
    child = fork();
    if (child < 0) {
        perror("vzfleet-exec: fork");
        return 126;
    }
    if (child == 0) {
        execvp(argv[1], argv + 1);
        fprintf(stderr, "vzfleet-exec: %s: %s\n", argv[1], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
    int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
    for (unsigned i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        signal(sigs[i], forward);
    int status;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR)
            return 126;
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) {
        signal(WTERMSIG(status), SIG_DFL);
        kill(getpid(), WTERMSIG(status));
        return 128 + WTERMSIG(status);
    }
    return 126;
}
