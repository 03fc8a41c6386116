#!/usr/bin/env bash
# A third-party plugin's life: install moonbox's header + pkg-config file into a
# prefix, build plugins/example from a copy of its folder against that prefix only,
# load it into a running daemon, use it, see unload refused while it holds resources,
# unload it, and see a plugin built for a newer ABI refused.
MB=$1 BUILD=$2 SRC=$3
. "$(dirname "$0")/../lib.sh"

cmake --install "$BUILD" --prefix "$TMP/prefix" >/dev/null
check "the header is installed" test -f "$TMP/prefix/include/moonbox/plugin.h"
check "the pkg-config file is installed" test -f "$TMP/prefix/lib/pkgconfig/moonbox.pc"
cp -r "$SRC/plugins/example" "$TMP/example-src"
export PKG_CONFIG_PATH=$TMP/prefix/lib/pkgconfig
check "pkg-config knows moonbox" pkg-config --exists moonbox
cmake -S "$TMP/example-src" -B "$TMP/example-build" >"$TMP/cmake.log" 2>&1
cmake --build "$TMP/example-build" >>"$TMP/cmake.log" 2>&1 || cat "$TMP/cmake.log"
SO=$TMP/example-build/example.so
check "the example plugin builds out of tree" test -f "$SO"
FLAGS=$TMP/example-build/CMakeFiles/example.dir/flags.make
check "it compiles against the installed prefix" grep -q "$TMP/prefix" "$FLAGS"
check "and not against the source tree's headers" bash -c "! grep -q '$SRC/host' '$FLAGS'"

# An operator script that uses the plugin's module once it exists.
mkdir -p "$TMP/ops"
cat > "$TMP/ops/example.lua" <<'LUA'
api.route("GET", "/v1/t/greet/{name}", function(req)
  if not example then api.error(503, "unavailable", "the example plugin is not loaded") end
  return { greeting = example.greet(req.params.name), later = example.later(0.05, "waited") }
end)
api.route("POST", "/v1/t/hold", function() return { held = example.hold() } end)
api.route("POST", "/v1/t/release", function() return { held = example.release() } end)
LUA
start_daemon ex --scripts "$TMP/ops"
expect_eq "before loading, the route reports the module missing" "$(api GET /v1/t/greet/x | status_of)" 503
out=$(api POST /v1/system/plugins -d "{\"path\":\"$SO\"}")
expect_eq "POST /v1/system/plugins loads it into the running daemon" "$(status_of <<<"$out")" 201
expect_eq "its ABI is reported" "$(body_of <<<"$out" | jq -r .abi)" "1.1"
out=$(api GET /v1/t/greet/moon)
expect_eq "its Lua module works (incl. a yielding call)" \
  "$(body_of <<<"$out" | jq -r '.greeting + "/" + .later')" "hello, moon/waited"
check "system info lists it" bash -c "curl -s --unix-socket '$D_SOCK' http://x/v1/system/info | jq -e '.plugins[] | select(.name==\"example\")' >/dev/null"
expect_eq "loading it twice is a conflict" \
  "$(api POST /v1/system/plugins -d "{\"path\":\"$SO\"}" | status_of)" 409
api POST /v1/t/hold >/dev/null
out=$(api DELETE /v1/system/plugins/example)
expect_eq "unload is refused while it holds a resource" "$(status_of <<<"$out")" 409
check "the refusal says why" grep -q "live resource" <<<"$out"
api POST /v1/t/release >/dev/null
expect_eq "unload succeeds once released" "$(api DELETE /v1/system/plugins/example | status_of)" 204
out=$(api GET /v1/t/greet/moon)
expect_eq "after unload the module is gone" "$(status_of <<<"$out")" 503

# A plugin built for a newer ABI minor and one for another major are refused clearly.
for v in "1 99" "2 0"; do
  set -- $v
  sed -e "s/^#define MB_ABI_MAJOR 1/#define MB_ABI_MAJOR $1/" -e "s/^#define MB_ABI_MINOR [0-9]*/#define MB_ABI_MINOR $2/" \
    "$TMP/prefix/include/moonbox/plugin.h" > "$TMP/plugin-future.h"
  mkdir -p "$TMP/future/moonbox"; cp "$TMP/plugin-future.h" "$TMP/future/moonbox/plugin.h"
  sed 's/"example"/"future"/; s/"example", funcs/"future_mod", funcs/' "$TMP/example-src/example.c" > "$TMP/future.c"
  cc -shared -fPIC -o "$TMP/future-$1-$2.so" -I"$TMP/future" $(pkg-config --cflags lua5.4) "$TMP/future.c"
  out=$(api POST /v1/system/plugins -d "{\"path\":\"$TMP/future-$1-$2.so\"}")
  expect_eq "a plugin built for ABI $1.$2 is refused" "$(status_of <<<"$out")" 400
  check "the refusal for $1.$2 is explained" grep -q "ABI" <<<"$out"
done
check "refusals are logged" grep -q "plugin ABI" "$D_LOG"
rc=0; stop_daemon || rc=$?
expect_eq "clean stop" "$rc" 0

# Started with --plugins, it loads at start too.
mkdir -p "$TMP/plugdir"; cp "$SO" "$TMP/plugdir/"
start_daemon ex2 --scripts "$TMP/ops" --plugins "$TMP/plugdir"
expect_eq "--plugins DIR loads it at start" \
  "$(api GET /v1/t/greet/sun | body_of | jq -r .greeting)" "hello, sun"
stop_daemon
finish
