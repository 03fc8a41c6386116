/* Loading and reloading the Lua scripts (see scripts.c). */
#ifndef MB_SCRIPTS_H
#define MB_SCRIPTS_H

#include "moonbox/plugin.h"

/* Directories: the operator's overrides the shipped one by relative path. */
int scripts_init(const char *shipped, const char *operator_dir, mb_err *err);
/* Load every script as a new generation; on failure the old one stays. */
int scripts_load(mb_err *err);
/* Run one file (outside the generation machinery) leaving nresults on the main state. */
int scripts_run_file(const char *path, int nresults, mb_err *err);
unsigned scripts_generation(void);
const char *scripts_dir(int i);
void scripts_fini(void);

#endif
