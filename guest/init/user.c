/* Resolve a Docker-style user spec against the container's /etc/passwd and /etc/group.
 * Runs in the container's child process after pivot_root/setns. */
#include "user.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "init.h"

static bool numeric(const char *s, unsigned long *out)
{
	if (!*s)
		return false;
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

/* Split a passwd/group line into fields (in place). Returns the count. */
static int split(char *line, char **f, int max)
{
	int n = 0;
	f[n++] = line;
	for (char *p = line; *p && n < max; p++) {
		if (*p == ':') {
			*p = 0;
			f[n++] = p + 1;
		}
	}
	return n;
}

static bool in_list(const char *list, const char *name)
{
	size_t nl = strlen(name);
	const char *p = list;
	while (*p) {
		const char *e = strchr(p, ',');
		size_t l = e ? (size_t)(e - p) : strlen(p);
		if (l == nl && strncmp(p, name, l) == 0)
			return true;
		if (!e)
			break;
		p = e + 1;
	}
	return false;
}

int mb_resolve_user(const char *spec, struct mb_user *u, char *why, size_t whylen)
{
	memset(u, 0, sizeof(*u));
	snprintf(u->home, sizeof(u->home), "/");
	if (!spec || !*spec)
		spec = "0";
	char user[256], group[256] = "";
	snprintf(user, sizeof(user), "%s", spec);
	char *colon = strchr(user, ':');
	if (colon) {
		*colon = 0;
		snprintf(group, sizeof(group), "%s", colon + 1);
	}
	unsigned long num = 0;
	bool user_num = numeric(user, &num);
	bool found = false;
	char name[256] = "";
	if (user_num)
		u->uid = (uid_t)num;

	char *pw = NULL;
	if (mb_slurp("/etc/passwd", &pw, NULL) == 0) {
		char *save = NULL;
		for (char *l = strtok_r(pw, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
			char *f[7];
			if (split(l, f, 7) < 7)
				continue;
			unsigned long fuid, fgid;
			if (!numeric(f[2], &fuid) || !numeric(f[3], &fgid))
				continue;
			if ((user_num && fuid == num) || (!user_num && strcmp(f[0], user) == 0)) {
				u->uid = (uid_t)fuid;
				u->gid = (gid_t)fgid;
				snprintf(u->home, sizeof(u->home), "%s", *f[5] ? f[5] : "/");
				snprintf(name, sizeof(name), "%s", f[0]);
				found = true;
				break;
			}
		}
		free(pw);
	}
	if (!user_num && !found) {
		snprintf(why, whylen, "unable to find user %s: no matching entries in passwd file",
		         user);
		return -ENOENT;
	}

	bool group_num = false;
	unsigned long gnum = 0;
	if (*group) {
		group_num = numeric(group, &gnum);
		if (group_num)
			u->gid = (gid_t)gnum;
	}
	bool group_found = !*group || group_num;
	char *gr = NULL;
	if (mb_slurp("/etc/group", &gr, NULL) == 0) {
		char *save = NULL;
		for (char *l = strtok_r(gr, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
			char *f[4];
			if (split(l, f, 4) < 4)
				continue;
			unsigned long fgid;
			if (!numeric(f[2], &fgid))
				continue;
			if (*group && !group_num && strcmp(f[0], group) == 0) {
				u->gid = (gid_t)fgid;
				group_found = true;
			}
			if (*name && in_list(f[3], name) && u->ngroups < MB_MAX_GROUPS)
				u->groups[u->ngroups++] = (gid_t)fgid;
		}
		free(gr);
	}
	if (!group_found) {
		snprintf(why, whylen, "unable to find group %s: no matching entries in group file",
		         group);
		return -ENOENT;
	}
	/* The primary group is always in the list (like Docker). */
	bool have = false;
	for (int i = 0; i < u->ngroups; i++)
		have |= u->groups[i] == u->gid;
	if (!have && u->ngroups < MB_MAX_GROUPS)
		u->groups[u->ngroups++] = u->gid;
	return 0;
}
