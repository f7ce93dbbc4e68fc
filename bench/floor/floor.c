/* The floor for a keep-alive server on this machine: the least a server can do per heartbeat.
 *
 * A single-threaded epoll loop that speaks just enough of one protocol for its load generator, and
 * does nothing else (no sessions, no timers, no liveness, no limits):
 * - `mqtt`: MQTT 3.1.1 for bench/mqtt_load.py: CONNECT -> CONNACK, PINGREQ -> PINGRESP;
 * - `vitals`: vitals frames (docs/PROTOCOL.md) for `vitals bench`: HELLO -> a WELCOME granting the
 *   proposed timing with a fixed session, PING -> PONG echoing its payload; other frames ignored;
 * - `json`: the classic JSON heartbeat for bench/keepalive_load.py --protocol json: every `{"ping":N}`
 *   -> `{"pong":N+1}` (what `vitals serve --codec json` answers); other objects ignored.
 * Per heartbeat: a share of one epoll_wait, one read, one write. Driven by the same load generator as
 * a real server, its CPU per heartbeat is what the kernel charges for a loopback ping/pong with that
 * generator; a real server's figure above it is that server's own work.
 *
 *   cc -O2 -o floor bench/floor/floor.c && ./floor PORT mqtt|vitals|json
 *
 * Used by bench/compare-mosquitto.sh (FLOOR=1, the default) for its three "floor" rows. Not a server to
 * use: it trusts its input (it only ever talks to a load generator on loopback), and it assumes every
 * read holds whole frames (true on loopback at one small frame per second per connection).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EVENTS 1024

/* Appends to `out` (capacity `cap`, used `*len`) the replies to the MQTT packets in `in`. */
static void answer_mqtt(const unsigned char *in, size_t n, unsigned char *out, size_t cap, size_t *len) {
    static const unsigned char connack[] = {0x20, 0x02, 0x00, 0x00};
    static const unsigned char pingresp[] = {0xd0, 0x00};
    for (size_t p = 0; p + 1 < n; p += 2 + (size_t)in[p + 1]) {
        const unsigned char *r = NULL;
        size_t rl = 0;
        if ((in[p] & 0xf0) == 0x10) r = connack, rl = sizeof connack;
        if ((in[p] & 0xf0) == 0xc0) r = pingresp, rl = sizeof pingresp;
        if (r && *len + rl <= cap) memcpy(out + *len, r, rl), *len += rl;
    }
}

/* Appends to `out` the replies to the vitals frames in `in`: WELCOME for HELLO, PONG for PING. */
static void answer_vitals(const unsigned char *in, size_t n, unsigned char *out, size_t cap, size_t *len) {
    for (size_t p = 0; p + 5 <= n;) {
        unsigned char type = in[p];
        size_t body = ((size_t)in[p + 1] << 24) | ((size_t)in[p + 2] << 16) | ((size_t)in[p + 3] << 8) | in[p + 4];
        if (p + 5 + body > n) break;
        const unsigned char *b = in + p + 5;
        if (type == 0x01 && body >= 46 && *len + 51 <= cap) {
            unsigned char *w = out + *len;
            w[0] = 0x02, w[1] = 0, w[2] = 0, w[3] = 0, w[4] = 46;
            memcpy(w + 5, b, 14); /* magic, version, flags (new session), the proposed timing */
            w[10] = 0;
            memset(w + 19, 0, 32); /* session id, token, resume point */
            w[26] = 1;             /* session id 1 */
            *len += 51;
        } else if (type == 0x03 && body == 12 && *len + 17 <= cap) {
            memcpy(out + *len, in + p, 17);
            out[*len] = 0x04;
            *len += 17;
        }
        p += 5 + body;
    }
}

/* Appends to `out` a `{"pong":N+1}` for every `{"ping":N}` in `in` (objects are not split across
 * reads here: one small object per second per connection on loopback). */
static void answer_json(const unsigned char *in, size_t n, unsigned char *out, size_t cap, size_t *len) {
    static const char key[] = "\"ping\"";
    for (size_t p = 0; p + sizeof key - 1 <= n; p++) {
        if (memcmp(in + p, key, sizeof key - 1) != 0) continue;
        p += sizeof key - 1;
        while (p < n && (in[p] == ' ' || in[p] == ':')) p++;
        unsigned long long v = 0;
        while (p < n && in[p] >= '0' && in[p] <= '9') v = v * 10 + (unsigned long long)(in[p++] - '0');
        if (*len + 32 <= cap) *len += (size_t)snprintf((char *)out + *len, 32, "{\"pong\":%llu}", v + 1);
    }
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[2], "mqtt") != 0 && strcmp(argv[2], "vitals") != 0 && strcmp(argv[2], "json") != 0)) {
        fprintf(stderr, "usage: %s PORT mqtt|vitals|json\n", argv[0]);
        return 2;
    }
    int vitals = strcmp(argv[2], "vitals") == 0;
    int json = strcmp(argv[2], "json") == 0;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 4096) != 0) {
        perror("bind/listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[MAX_EVENTS];
    unsigned char buf[4096];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLET, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                close(fd);
                continue;
            }
            unsigned char reply[1024];
            size_t len = 0;
            if (vitals)
                answer_vitals(buf, (size_t)r, reply, sizeof reply, &len);
            else if (json)
                answer_json(buf, (size_t)r, reply, sizeof reply, &len);
            else
                answer_mqtt(buf, (size_t)r, reply, sizeof reply, &len);
            if (len > 0 && write(fd, reply, len) < 0 && errno != EAGAIN) close(fd);
        }
    }
}
