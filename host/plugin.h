/* Plugin loading (see include/moonbox/plugin.h for the ABI itself). */
#ifndef MB_PLUGIN_LOADER_H
#define MB_PLUGIN_LOADER_H

#include "moonbox/plugin.h"

const struct mb_host *plugin_host_api(void);
/* Load one plugin; *name_out (borrowed) gets its name. */
int plugin_load(const char *path, const char **name_out, mb_err *err);
/* Load every *.so in dir (sorted); refusals are logged. Returns how many loaded. */
int plugins_load_dir(const char *dir, mb_err *err);
/* Refused (-EBUSY) while the plugin holds resources. */
int plugin_unload(const char *name, mb_err *err);
mb_plugin *plugin_find(const char *name);
/* A JSON array describing the loaded plugins (new reference). */
json_t *plugins_info(void);
/* Call every plugin's fini (they stay mapped; their Lua functions now raise). */
void plugins_fini(void);
/* Free the plugin records: only after the Lua state is closed. */
void plugins_free(void);

#endif
