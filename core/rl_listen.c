/* rl_listen.c: listen addresses parsed and turned into listening sockets. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "rl_listen.h"

#define LISTEN_BACKLOG 4096

static int parse_unix(const char *path, struct rl_addr *a, char *err,
		      size_t len)
{
	struct sockaddr_un *un = (struct sockaddr_un *)&a->sa;

	if (!*path || strlen(path) >= sizeof(un->sun_path)) {
		snprintf(err, len, "unix socket path '%s' is empty or too long",
			 path);
		return -EINVAL;
	}
	un->sun_family = AF_UNIX;
	strcpy(un->sun_path, path);
	a->len = sizeof(*un);
	a->is_unix = 1;
	return 0;
}

/* "host:port" or "[v6]:port" into host and port text. */
static int split_host_port(const char *s, char *host, size_t hostlen,
			   char *port, size_t portlen)
{
	const char *colon, *h = s;
	size_t hlen;
	char *end;
	long p;

	if (*s == '[') {
		colon = strstr(s, "]:");
		if (!colon)
			return -EINVAL;
		h = s + 1;
		hlen = colon - h;
		colon++;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -EINVAL;
		hlen = colon - s;
	}
	if (hlen >= hostlen || strlen(colon + 1) >= portlen)
		return -EINVAL;
	memcpy(host, h, hlen);
	host[hlen] = 0;
	p = strtol(colon + 1, &end, 10);
	if (*end || end == colon + 1 || p < 0 || p > 65535)
		return -EINVAL;
	strcpy(port, colon + 1);
	return 0;
}

/* numeric: only resolve a numeric host (no lookup can block); a name is
 * left to the caller (returns 1). */
static int parse_tcp(const char *s, struct rl_addr *a, int numeric,
		     char *host, size_t hostlen, char *port, size_t portlen,
		     char *err, size_t len)
{
	struct addrinfo hints = { .ai_flags = AI_NUMERICSERV | AI_PASSIVE,
				  .ai_socktype = SOCK_STREAM }, *res;
	int ret;

	if (split_host_port(s, host, hostlen, port, portlen)) {
		snprintf(err, len, "invalid %saddress '%s' (expected "
			 "tcp://host:port, tcp://[v6]:port or unix:/path)",
			 numeric ? "" : "listen ", s);
		return -EINVAL;
	}
	if (numeric)
		hints.ai_flags |= AI_NUMERICHOST;
	ret = getaddrinfo(*host && strcmp(host, "*") ? host : NULL, port,
			  &hints, &res);
	if (ret == EAI_NONAME && numeric)
		return 1;
	if (ret) {
		snprintf(err, len, "cannot resolve %saddress '%s': %s",
			 numeric ? "" : "listen ", s, gai_strerror(ret));
		return -EINVAL;
	}
	memcpy(&a->sa, res->ai_addr, res->ai_addrlen);
	a->len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static int parse_addr(const char *s, struct rl_addr *a, int numeric,
		      char *host, size_t hostlen, char *port, size_t portlen,
		      char *err, size_t len)
{
	memset(a, 0, sizeof(*a));
	snprintf(a->text, sizeof(a->text), "%s", s);
	if (strncmp(s, "unix:", 5) == 0)
		return parse_unix(s + 5 + (strncmp(s + 5, "//", 2) ? 0 : 2),
				  a, err, len);
	if (strncmp(s, "tcp://", 6) == 0)
		s += 6;
	else if (strncmp(s, "tls://", 6) == 0) {
		a->tls = 1;
		s += 6;
	}
	return parse_tcp(s, a, numeric, host, hostlen, port, portlen, err,
			 len);
}

int rl_addr_parse(const char *s, struct rl_addr *a, char *err, size_t len)
{
	char host[256], port[8];

	return parse_addr(s, a, 0, host, sizeof(host), port, sizeof(port),
			  err, len);
}

int rl_addr_parse_numeric(const char *s, struct rl_addr *a, char *host,
			  size_t hostlen, char *port, size_t portlen,
			  char *err, size_t errlen)
{
	return parse_addr(s, a, 1, host, hostlen, port, portlen, err, errlen);
}

/* A stale socket file from an earlier run would make bind fail; a regular
 * file of the same name is not ours to remove. */
static void unlink_stale_socket(const char *path)
{
	struct stat st;

	if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
}

int rl_listen_open(const struct rl_addr *a, char *err, size_t len)
{
	int fd, one = 1, ret;

	fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	if (a->is_unix) {
		unlink_stale_socket(((const struct sockaddr_un *)&a->sa)->sun_path);
	} else {
		if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
		    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)))
			goto fail;
	}
	if (bind(fd, (const struct sockaddr *)&a->sa, a->len) ||
	    listen(fd, LISTEN_BACKLOG))
		goto fail;
	return fd;
fail:
	ret = -errno;
	snprintf(err, len, "cannot listen on '%s': %s", a->text, strerror(errno));
	if (fd >= 0)
		close(fd);
	return ret;
}

int rl_listen_probe(const struct rl_addr *a, char *err, size_t len)
{
	int fd, one = 1, ret = 0;

	if (a->is_unix)
		return 0;
	/* Without SO_REUSEPORT this bind fails if anything listens there,
	 * another ringline included: SO_REUSEPORT would otherwise let two
	 * processes share the port silently, each with its own state. */
	fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&a->sa, a->len)) {
		ret = -errno;
		snprintf(err, len, "cannot listen on '%s': %s", a->text,
			 strerror(errno));
	}
	close(fd);
	return ret;
}

int rl_addr_peer_text(int fd, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN];

	if (getpeername(fd, (struct sockaddr *)&ss, &sl))
		return -errno;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		return snprintf(buf, len, "%s:%u", host, ntohs(in->sin_port));
	}
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		return snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
	}
	return snprintf(buf, len, "unix");
}
