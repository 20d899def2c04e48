/* http.c - libmicrohttpd driven by the libuv loop.
 *
 * MHD runs in external-event mode with its own epoll set; that one descriptor is
 * watched by a uv_poll handle, and a uv_timer covers MHD's connection timeouts. So the
 * loop owns every socket and MHD never starts a thread. Responses that wait on the
 * engine suspend their connection; the loop resumes it when the engine has news.
 */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static void schedule_timer(server *s);

static void run_mhd(server *s)
{
    MHD_run(s->mhd);
    schedule_timer(s);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    run_mhd(h->data);
}

static void on_timer(uv_timer_t *t) { run_mhd(t->data); }

static void schedule_timer(server *s)
{
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(s->mhd, &ms) == MHD_YES)
        uv_timer_start(&s->mhd_timer, on_timer, ms, 0);
    else
        uv_timer_stop(&s->mhd_timer);
}

void http_kick(server *s)
{
    if (s->mhd) run_mhd(s);
}

void http_resume(conn *c)
{
    if (!c->suspended) return;
    c->suspended = 0;
    MHD_resume_connection(c->mhd);
}

static void log_mhd(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    /* A client closing its stream early is normal (and counted in /metrics). */
    if (strstr(fmt, "Failed to send") || strstr(fmt, "closed by remote")) return;
    fputs("tessera: http: ", stderr);
    vfprintf(stderr, fmt, ap);
}

int http_start(server *s, ts_error *err)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, s->opt.host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)s->opt.port);
    } else if (inet_pton(AF_INET6, s->opt.host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)s->opt.port);
        flags |= MHD_USE_IPv6;
    } else {
        return ts_fail(err, TS_ERR_INVALID, "--host %s: not an IPv4 or IPv6 address", s->opt.host);
    }
    s->mhd = MHD_start_daemon(
        flags, (uint16_t)s->opt.port, NULL, NULL, routes_handle, s,
        MHD_OPTION_EXTERNAL_LOGGER, log_mhd, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_NOTIFY_COMPLETED, routes_completed, s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)s->opt.max_connections,
        /* Request line + headers must fit here: oversized headers get 431 from MHD. */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
        /* Idle clients (slow headers or bodies included) lose their connection; requests
         * waiting for the engine are suspended and never time out. */
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)s->opt.idle_timeout,
        MHD_OPTION_END);
    if (!s->mhd)
        return ts_fail(err, TS_ERR_IO, "cannot listen on %s port %d: %s", s->opt.host, s->opt.port,
                       strerror(errno));
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info) return ts_fail(err, TS_ERR_IO, "libmicrohttpd gave no epoll descriptor");
    uv_poll_init(s->loop, &s->mhd_poll, info->epoll_fd);
    s->mhd_poll.data = s;
    uv_poll_start(&s->mhd_poll, UV_READABLE, on_poll);
    uv_timer_init(s->loop, &s->mhd_timer);
    s->mhd_timer.data = s;
    schedule_timer(s);
    return 0;
}

void http_stop(server *s)
{
    if (!s->mhd) return;
    /* MHD must not be stopped with suspended connections. */
    for (job *j = s->jobs; j; j = j->next)
        if (j->conn) http_resume(j->conn);
    MHD_run(s->mhd);
    uv_poll_stop(&s->mhd_poll);
    uv_timer_stop(&s->mhd_timer);
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
}

/* A suspended connection is invisible to MHD, so the loop looks for clients that went
 * away: a peek that reads end-of-file or an error means the peer closed. */
void http_check_disconnects(server *s)
{
    job *next;
    for (job *j = s->jobs; j; j = next) {
        next = j->next;   /* jobs_detach may free j */
        conn *c = j->conn;
        if (!c || !c->suspended) continue;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c->mhd, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci) continue;
        char b;
        ssize_t r = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            s->m.disconnects++;
            jobs_detach(s, j);
            c->sse_closed = 1;   /* a stream ends at once instead of waiting again */
            http_resume(c);   /* MHD now sees the closed socket and cleans up */
        }
    }
}
