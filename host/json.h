/*
 * JSON <-> Lua through jansson, with moonbox's conventions:
 *  - JSON null is the light userdata json.null (so keys with null values survive);
 *  - decoded arrays carry the metatable json.array_mt, so an empty array encodes
 *    back as [] and an empty plain table as {};
 *  - Lua integers are JSON integers, Lua floats JSON reals (2.0 stays 2.0);
 *  - strings must be valid UTF-8 to be encoded.
 */
#ifndef MB_JSON_H
#define MB_JSON_H

#include "moonbox/plugin.h"

/* [-0, +1, m] Push j as a Lua value. */
void json_push(lua_State *L, const json_t *j);
/* [-0, +0, -] Convert the value at idx. Returns a new reference, or NULL with err. */
json_t *json_from_lua(lua_State *L, int idx, mb_err *err);
/* [-0, +0, -] Encode the value at idx; returns a malloc'ed string (caller frees) and its
 * length, or NULL with err. flags: jansson JSON_* dump flags (JSON_COMPACT is added
 * unless JSON_INDENT is given). */
char *json_encode_lua(lua_State *L, int idx, size_t flags, size_t *len, mb_err *err);
/* [-0, +1, m] Decode s and push the value; on error push nothing and fill err. */
int json_decode_push(lua_State *L, const char *s, size_t len, mb_err *err);
/* True if the value at idx is json.null. */
int json_isnull(lua_State *L, int idx);
/* [-0, +1, m] Push the array metatable (creates it on first use). */
void json_push_array_mt(lua_State *L);
/* [-0, +1, m] Push json.null. */
void json_push_null(lua_State *L);

#endif
