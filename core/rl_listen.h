/* rl_listen.h: listen addresses parsed and turned into listening sockets. */
#ifndef RL_LISTEN_H
#define RL_LISTEN_H

#include <stddef.h>
#include <sys/socket.h>

struct rl_addr {
	struct sockaddr_storage sa;
	socklen_t len;
	int is_unix;
	int tls;            /* tls://host:port */
	char text[128];     /* as the operator wrote it */
};

/* "tcp://host:port", "tcp://[v6]:port", "host:port", "unix:/path".
 * 0 or -EINVAL with the reason in err. */
int rl_addr_parse(const char *s, struct rl_addr *a, char *err, size_t errlen);

/* The same for outbound connects, which must not block: only a numeric
 * host (or none, or a unix path) is turned into a here.  0 with a filled
 * in; 1 when the host is a name, copied to host and the port to port for
 * asynchronous resolution (rl_resolve.h); -EINVAL with the reason in err. */
int rl_addr_parse_numeric(const char *s, struct rl_addr *a, char *host,
			  size_t hostlen, char *port, size_t portlen,
			  char *err, size_t errlen);

/* A listening socket.  TCP sockets use SO_REUSEPORT so each worker has its
 * own and the kernel spreads connections; a unix socket is made once and
 * shared (dup) since unix sockets cannot be spread that way.
 * Returns the fd or -errno with the reason in err. */
int rl_listen_open(const struct rl_addr *a, char *err, size_t errlen);

/* Fail if the TCP address is in use by anyone, even a process using
 * SO_REUSEPORT too.  0 or -errno with the reason in err. */
int rl_listen_probe(const struct rl_addr *a, char *err, size_t errlen);

/* Text for a connected peer: "1.2.3.4:5", "[::1]:5" or "unix". */
int rl_addr_peer_text(int fd, char *buf, size_t len);

#endif
