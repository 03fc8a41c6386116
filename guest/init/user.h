/* Docker-style user resolution ("name", "uid", "uid:gid", "name:group", ...). */
#ifndef MOONBOX_INIT_USER_H
#define MOONBOX_INIT_USER_H

#include <stddef.h>
#include <sys/types.h>

#define MB_MAX_GROUPS 64

struct mb_user {
	uid_t uid;
	gid_t gid;
	gid_t groups[MB_MAX_GROUPS];
	int ngroups;
	char home[256];
};

/* Resolve spec against /etc/passwd and /etc/group of the current root. 0, or a negative
 * errno with a Docker-like message in why. Uses no heap memory beyond its own. */
int mb_resolve_user(const char *spec, struct mb_user *u, char *why, size_t whylen);

#endif
