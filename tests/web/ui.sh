#!/usr/bin/env bash
# The web UI in a real browser (headless chromium driven by puppeteer-core, see ui.js)
# against a real daemon, a real registry and real microVMs: connect, run a container from
# the form, its logs, stats and a shell, stop and remove it, the images page.
# Needs chromium and node (.ci/setup installs them) and puppeteer-core in
# $MOONBOX_WEB_TEST_MODULES (default: <build>/web-test, filled by .ci/setup with npm);
# without them it skips (exit 77) and says why.
MB=$1
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
. "$HERE/../registry/lib.sh"

MODULES=${MOONBOX_WEB_TEST_MODULES:-$(dirname "$MB")/web-test}
if ! command -v node >/dev/null || [ ! -x /usr/bin/chromium ] || [ ! -d "$MODULES/node_modules/puppeteer-core" ]; then
  echo "# skipped: needs node, /usr/bin/chromium and puppeteer-core in $MODULES (.ci/setup installs them)"
  exit 77
fi

# test-specific network names and subnets, so a real daemon on this machine and the other
# tests are never touched (one run at a time)
one_run_at_a_time web
export MOONBOX_NET_DEFAULT_BRIDGE=mbw0 MOONBOX_NET_DEFAULT_SUBNET=10.238.0.0/24
export MOONBOX_NET_TABLE=moonbox_web MOONBOX_NET_TAP_PREFIX=mbwt MOONBOX_NET_BRIDGE_PREFIX=mbwn
export MOONBOX_NET_POOL=10.239.0.0/16

on_cleanup() {
  fixture_cleanup
  remove_daemon_networks
}

fixture_init
start_registry web plain >/dev/null
$PY "$HERE/../containers/images.py" "$REG_web" >/dev/null
start_daemon web --log-level info
HOST_PORT=$(free_port)
mkdir -p "$TMP/shots"
# chromium keeps its profile under HOME: give it the test's temp dir
# (ui.js bounds every wait and has its own watchdog; timeout(1) is the last resort; sed -u
# so that its lines are seen even if ctest stops the test)
rc=0
HOME=$TMP NODE_PATH="$MODULES/node_modules" timeout -k 10 450 node "$HERE/ui.js" "$D_PORT" "$D_TOKEN" \
  "$REG_web/test/httpd" "$HOST_PORT" "$TMP/shots" 2>&1 | sed -u 's/^/    /' || rc=$?
if [ "$rc" -eq 0 ]; then
  pass "the web UI drives a container's whole life"
else
  fail "the web UI (see the lines above)"
  echo "# the daemon's last log lines:"
  tail -n 40 "$D_LOG" | sed 's/^/#   /'
fi
list=$(api GET '/v1/containers?all=1' --max-time 30 | body_of) && left=$(jq length <<<"$list") ||
  left="(the daemon did not answer)"
if [ "$left" != 0 ]; then
  # what the UI left behind goes, so the daemon stops quickly and cleanly
  for id in $(jq -r '.[].id' <<<"${list:-[]}" 2>/dev/null); do
    api DELETE "/v1/containers/$id?force=1" --max-time 60 >/dev/null || true
  done
fi
expect_eq "nothing is left running" "$left" 0
finish
