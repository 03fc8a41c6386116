# Shared helpers for the registry fixtures. Source it from a script that has run
# `set -euo pipefail`. Everything lives under $FIXTURE_DIR (a fresh mktemp -d); only the
# PIDs recorded in $FIXTURE_DIR/pids are ever stopped. Registries bind to 127.0.0.1 only.

FIXTURE_PY=/usr/bin/python3 # Debian's python: python3-jwt/python3-cryptography live there
FIXTURE_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

fixture_init() {
	FIXTURE_DIR=$(mktemp -d /tmp/mbr-fixture-XXXXXX)
	case "$FIXTURE_DIR" in /tmp/mbr-fixture-*) ;; *) echo "bad fixture dir" >&2; exit 1 ;; esac
	: >"$FIXTURE_DIR/pids"
	export FIXTURE_DIR
}

fixture_cleanup() {
	local pid
	if [ -n "${FIXTURE_DIR:-}" ] && [ -f "$FIXTURE_DIR/pids" ]; then
		while read -r pid; do
			[ -n "$pid" ] && kill "$pid" 2>/dev/null || true
		done <"$FIXTURE_DIR/pids"
		sleep 0.2
		while read -r pid; do
			[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
		done <"$FIXTURE_DIR/pids"
	fi
	if [ -n "${FIXTURE_DIR:-}" ]; then # file systems the tests mounted below it
		{ findmnt -rn -o TARGET | grep "^$FIXTURE_DIR/" || true; } | sort -r | while read -r m; do
			umount "$m" 2>/dev/null || true
		done
	fi
	if [ -n "${FIXTURE_DIR:-}" ] && [ "${KEEP_FIXTURE:-0}" != 1 ]; then
		case "$FIXTURE_DIR" in /tmp/mbr-fixture-*) rm -rf -- "$FIXTURE_DIR" ;; esac
	fi
}

free_port() {
	"$FIXTURE_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url: wait until something answers
	local i
	for i in $(seq 1 100); do
		if curl -s -o /dev/null "$1"; then return 0; fi
		sleep 0.1
	done
	echo "nothing answers at $1" >&2
	return 1
}

# start_registry NAME MODE  (MODE: plain | basic | token)
# Sets REG_<NAME>=127.0.0.1:port and REG_<NAME>_STORAGE=<dir>.
start_registry() {
	local name=$1 mode=$2 dir port auth=""
	dir="$FIXTURE_DIR/$name"
	mkdir -p "$dir/storage"
	port=$(free_port)
	case "$mode" in
	plain) ;;
	basic)
		htpasswd -Bbn testuser testpass >"$dir/htpasswd"
		auth="auth: {htpasswd: {realm: basic-realm, path: $dir/htpasswd}}"
		;;
	token)
		local tport
		tport=$(free_port)
		"$FIXTURE_PY" "$FIXTURE_HERE/token-server.py" --gen "$dir/token.key" "$dir/token.crt"
		"$FIXTURE_PY" "$FIXTURE_HERE/token-server.py" --addr "127.0.0.1:$tport" \
			--key "$dir/token.key" --cert "$dir/token.crt" 2>"$dir/token.log" &
		echo $! >>"$FIXTURE_DIR/pids"
		wait_http "http://127.0.0.1:$tport/token"
		auth="auth: {token: {realm: http://127.0.0.1:$tport/token, service: local-registry, issuer: local-token-issuer, rootcertbundle: $dir/token.crt}}"
		eval "REG_${name}_TOKEN_URL=http://127.0.0.1:$tport/token"
		;;
	*) echo "unknown mode $mode" >&2; return 1 ;;
	esac
	cat >"$dir/config.yml" <<-YAML
	version: 0.1
	log: {level: warn}
	storage: {filesystem: {rootdirectory: $dir/storage}, delete: {enabled: true}, cache: {blobdescriptor: inmemory}}
	http: {addr: 127.0.0.1:$port, secret: moonbox-fixture-$name}
	$auth
	YAML
	docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
	echo $! >>"$FIXTURE_DIR/pids"
	wait_http "http://127.0.0.1:$port/v2/"
	eval "REG_${name}=127.0.0.1:$port"
	eval "REG_${name}_STORAGE=$dir/storage"
	echo "registry $name ($mode) at 127.0.0.1:$port" >&2
}
