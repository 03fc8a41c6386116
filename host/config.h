/* Daemon configuration: flags resolved at start-up, readable by key. */
#ifndef MB_CONFIG_H
#define MB_CONFIG_H

/* Set key to a copy of value (NULL removes it). */
void config_set(const char *key, const char *value);
/* Borrowed; valid until the key is set again or config_fini(). NULL if unset. */
const char *config_get(const char *key);
void config_fini(void);

#endif
