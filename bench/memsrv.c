/*
 * memsrv: a process that keeps N MiB of touched memory and serves TCP (bench/migration, scenario b).
 *
 *   memsrv [--mib N] [--port P]          defaults: 256 MiB, port 80
 *
 * At start every 4 KiB page is filled with 1 KiB of pseudo-random bytes followed by 3 KiB of zeros
 * (as in notes/criu-field-notes.md 4b: zstd then has realistic work, ~25 % ratio), and the checksum of
 * every page is kept in a separate table. Only then does it listen.
 *
 * Protocol (one poll() loop, non-blocking sockets, any number of clients):
 *   "GET ..." request, ended by an empty line  -> an HTTP/1.0 200 answer, then the connection closes;
 *                                                body "count=N bad=B pages=P\n"
 *   line "PING"                                  -> "count=N bad=B\n", the connection stays open
 *   line "VERIFY"                                -> every page re-checked: "verified=P bad=B count=N\n"
 * count is the number of requests answered since start (it must keep growing across migrations);
 * each answer first re-checks one page (round robin) against its checksum, and a mismatch adds to bad,
 * which must stay 0 after any number of checkpoint/restore cycles.
 *
 * Build: gcc -static -O2 -o memsrv memsrv.c   (static: it runs in any container rootfs)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define RANDOM_PART 1024
#define MAX_CONN 1024
#define BUF 512

static uint8_t *mem;
static uint64_t *sums;
static size_t npages;
static uint64_t count, bad;

struct conn {
    int fd;
    size_t len;
    char buf[BUF];
};

static struct conn conns[MAX_CONN];
static struct pollfd pfds[MAX_CONN + 1];

/* FNV-1a over 64-bit words (n is a multiple of 8): cheap enough to re-check all pages at once */
static uint64_t checksum(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h ^= w;
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t xs_state;
static uint64_t xorshift(void) {
    uint64_t x = xs_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    xs_state = x;
    return x * 2685821657736338717ULL;
}

static void fill(void) {
    for (size_t i = 0; i < npages; i++) {
        uint8_t *page = mem + i * PAGE;
        for (size_t j = 0; j < RANDOM_PART; j += 8) {
            uint64_t r = xorshift();
            memcpy(page + j, &r, 8);
        }
        memset(page + RANDOM_PART, 0, PAGE - RANDOM_PART);
        sums[i] = checksum(page, PAGE);
    }
}

static int check_page(size_t i) { return checksum(mem + i * PAGE, PAGE) == sums[i]; }

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void send_all(int fd, const char *s, size_t n) {
    /* answers are tiny: the socket buffer always takes them; a failure just drops the client */
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

static void close_conn(struct conn *c) {
    close(c->fd);
    c->fd = -1;
    c->len = 0;
}

/* One request answered: the counter grows and one page is re-checked. */
static void tick(void) {
    if (npages > 0 && !check_page((size_t)(count % npages))) bad++;
    count++;
}

/* Handle what the client sent so far; returns 0 when the connection must be closed. */
static int serve(struct conn *c) {
    char out[256];
    for (;;) {
        if (c->len >= 4 && memcmp(c->buf, "GET ", 4) == 0) {
            /* an HTTP request: answer once its header block is complete */
            char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
            if (end == NULL) end = memmem(c->buf, c->len, "\n\n", 2);
            if (end == NULL) return c->len < BUF;
            tick();
            char body[128];
            int blen = snprintf(body, sizeof body, "count=%llu bad=%llu pages=%zu\n",
                                (unsigned long long)count, (unsigned long long)bad, npages);
            int n = snprintf(out, sizeof out,
                             "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                             "Connection: close\r\n\r\n%s", blen, body);
            send_all(c->fd, out, (size_t)n);
            shutdown(c->fd, SHUT_WR);
            return 0;
        }
        char *nl = memchr(c->buf, '\n', c->len);
        if (nl == NULL) return c->len < BUF;
        size_t line = (size_t)(nl - c->buf) + 1;
        int n;
        if (line >= 6 && memcmp(c->buf, "VERIFY", 6) == 0) {
            uint64_t b = 0;
            for (size_t i = 0; i < npages; i++) b += !check_page(i);
            bad += b;
            count++;
            n = snprintf(out, sizeof out, "verified=%zu bad=%llu count=%llu\n", npages,
                         (unsigned long long)b, (unsigned long long)count);
        } else {
            tick();
            n = snprintf(out, sizeof out, "count=%llu bad=%llu\n", (unsigned long long)count,
                         (unsigned long long)bad);
        }
        send_all(c->fd, out, (size_t)n);
        memmove(c->buf, c->buf + line, c->len - line);
        c->len -= line;
    }
}

int main(int argc, char **argv) {
    long mib = 256;
    int port = 80;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mib") == 0 && i + 1 < argc) {
            mib = strtol(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            port = (int)strtol(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: %s [--mib N] [--port P]\n", argv[0]);
            return 2;
        }
    }
    if (mib < 0 || port <= 0 || port > 65535) {
        fprintf(stderr, "memsrv: bad --mib or --port\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    npages = (size_t)mib * 1024 * 1024 / PAGE;
    if (npages > 0) {
        mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        sums = calloc(npages, sizeof *sums);
        if (mem == MAP_FAILED || sums == NULL) {
            perror("memsrv: allocating");
            return 1;
        }
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    xs_state = ((uint64_t)ts.tv_sec * 1000000007ULL) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32) ^ 1;
    fill();

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 512) != 0) {
        perror("memsrv: listen");
        return 1;
    }
    set_nonblock(lfd);
    for (int i = 0; i < MAX_CONN; i++) conns[i].fd = -1;
    fprintf(stderr, "memsrv: %zu pages (%ld MiB) touched, listening on port %d\n", npages, mib, port);

    for (;;) {
        int n = 0;
        pfds[n++] = (struct pollfd){.fd = lfd, .events = POLLIN};
        int map[MAX_CONN + 1];
        for (int i = 0; i < MAX_CONN; i++) {
            if (conns[i].fd >= 0) {
                map[n] = i;
                pfds[n++] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
            }
        }
        if (poll(pfds, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) continue;
            perror("memsrv: poll");
            return 1;
        }
        for (int k = 1; k < n; k++) {
            if (!pfds[k].revents) continue;
            struct conn *c = &conns[map[k]];
            ssize_t r = recv(c->fd, c->buf + c->len, BUF - c->len, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                close_conn(c);
                continue;
            }
            c->len += (size_t)r;
            if (!serve(c)) close_conn(c);
        }
        if (pfds[0].revents & POLLIN) {
            for (;;) {
                int fd = accept(lfd, NULL, NULL);
                if (fd < 0) break;
                int slot = -1;
                for (int i = 0; i < MAX_CONN; i++) {
                    if (conns[i].fd < 0) {
                        slot = i;
                        break;
                    }
                }
                if (slot < 0) {
                    close(fd);
                    continue;
                }
                set_nonblock(fd);
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                conns[slot].fd = fd;
                conns[slot].len = 0;
            }
        }
    }
}
