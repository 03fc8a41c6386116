#include "config.h"

#include <string.h>

#include "util.h"

struct kv {
	char *k, *v;
	struct kv *next;
};

static struct kv *head;

void config_set(const char *key, const char *value)
{
	for (struct kv **p = &head; *p; p = &(*p)->next) {
		if (strcmp((*p)->k, key) == 0) {
			struct kv *e = *p;
			if (value) {
				free(e->v);
				e->v = xstrdup(value);
			} else {
				*p = e->next;
				free(e->k);
				free(e->v);
				free(e);
			}
			return;
		}
	}
	if (!value)
		return;
	struct kv *e = xcalloc(1, sizeof(*e));
	e->k = xstrdup(key);
	e->v = xstrdup(value);
	e->next = head;
	head = e;
}

const char *config_get(const char *key)
{
	for (struct kv *e = head; e; e = e->next)
		if (strcmp(e->k, key) == 0)
			return e->v;
	return NULL;
}

void config_fini(void)
{
	while (head) {
		struct kv *e = head;
		head = e->next;
		free(e->k);
		free(e->v);
		free(e);
	}
}
