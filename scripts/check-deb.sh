#!/usr/bin/env bash
# CI: installs a baton .deb (make deb) on this machine, checks what a user
# gets, and removes it again. Needs root and dpkg; says why and does
# nothing otherwise. Checks: baton --version; man -w baton and baton-run;
# the bash completion loads; systemd-analyze verify accepts the units;
# dpkg -r leaves nothing but the conffile, and dpkg -P not even that.
# It never starts a service (nothing runs systemd here).
#
#   scripts/check-deb.sh dist/baton_VERSION_ARCH.deb
set -euo pipefail

deb=${1:?usage: check-deb.sh PACKAGE.deb}
if [ "$(id -u)" != 0 ] || ! command -v dpkg >/dev/null; then
	echo "check-deb: skipped: installing the package needs root and dpkg"
	exit 0
fi
if dpkg-query -W -f='${Status}' baton 2>/dev/null | grep -q installed; then
	echo "check-deb: skipped: a baton package is installed on this machine already; not replacing it"
	exit 0
fi
start=$(date +%s%N)
tmp=$(mktemp -d)
removed=
cleanup() {
	rm -rf "$tmp"
	[ -n "$removed" ] || dpkg -P baton >/dev/null 2>&1 || true
}
trap cleanup EXIT
fail() {
	echo "check-deb: FAIL: $*" >&2
	exit 1
}

dpkg -i "$deb" >/dev/null
dpkg -L baton >"$tmp/files"
conffiles=$(dpkg-query -W -f='${Conffiles}' baton | awk '{print $1}')

# The binary, on PATH.
v=$(baton --version) || fail "baton --version"
[[ $v == "baton version "* ]] || fail "baton --version says: $v"
echo "check-deb: $v"

# The example configuration is valid as installed (its command, baton's
# demo server, exists).
out=$(baton check --config /etc/baton/example.toml 2>&1) || fail "baton check --config /etc/baton/example.toml: $out"
echo "check-deb: baton check accepts /etc/baton/example.toml"

# The man pages, where man finds them.
if command -v man >/dev/null; then
	for page in baton baton-run; do
		man -w "$page" >/dev/null || fail "man -w $page: no such page"
	done
	echo "check-deb: man -w finds baton(1) and baton-run(1)"
else
	echo "check-deb: man is not installed (man-db): the pages are not looked up"
fi

# The bash completion loads and completes baton's commands.
out=$(bash -c 'source /usr/share/bash-completion/completions/baton && complete -p baton' 2>&1) || fail "bash completion: $out"
[[ $out == *baton* ]] || fail "bash completion registers nothing for baton: $out"
# Completing needs bash-completion's helpers (as every script in that
# directory does), which load it.
if [ -r /usr/share/bash-completion/bash_completion ]; then
	out=$(bash -c 'source /usr/share/bash-completion/bash_completion
source /usr/share/bash-completion/completions/baton
COMP_WORDS=(baton re); COMP_CWORD=1; COMP_LINE="baton re"; COMP_POINT=${#COMP_LINE}
__start_baton baton re baton 2>/dev/null; printf "%s\n" "${COMPREPLY[@]}"' 2>&1) || fail "bash completion of baton re: $out"
	[[ $out == *reload* ]] || fail "bash completion of 'baton re' offers: $out"
	echo "check-deb: bash completion loads; baton re<TAB> offers $(echo $out)"
else
	echo "check-deb: bash completion loads ($out); bash-completion is not installed, so it is not run"
fi

# The units, as systemd reads them: the template service as it is; the
# socket with an address, as an administrator's drop-in gives it.
if command -v systemd-analyze >/dev/null; then
	cp /lib/systemd/system/baton@.service /lib/systemd/system/baton@.socket "$tmp/"
	mkdir "$tmp/baton@.socket.d"
	printf '[Socket]\nListenStream=127.0.0.1:8080\n' >"$tmp/baton@.socket.d/listen.conf"
	out=$(systemd-analyze verify /lib/systemd/system/baton@.service "$tmp/baton@.socket" 2>&1) || fail "systemd-analyze verify: $out"
	[ -z "$out" ] || fail "systemd-analyze verify warns: $out"
	echo "check-deb: systemd-analyze verify accepts baton@.service and baton@.socket"
else
	echo "check-deb: systemd-analyze is not installed (Debian's systemd package): the units are not verified"
fi

# Removal leaves the conffile only; purge, nothing.
dpkg -r baton >/dev/null
left=()
while read -r f; do
	[ -d "$f" ] && continue
	grep -qxF "$f" <<<"$conffiles" && continue
	[ -e "$f" ] || [ -L "$f" ] && left+=("$f")
done <"$tmp/files"
[ ${#left[@]} -eq 0 ] || fail "dpkg -r left ${left[*]}"
for c in $conffiles; do
	[ -e "$c" ] || fail "dpkg -r removed the conffile $c"
done
dpkg-query -W -f='${Status}' baton | grep -q config-files || fail "after dpkg -r: $(dpkg-query -W -f='${Status}' baton)"
dpkg -P baton >/dev/null
removed=1
for c in $conffiles; do
	[ ! -e "$c" ] || fail "dpkg -P left the conffile $c"
done
echo "check-deb: dpkg -r left only $conffiles; dpkg -P removed it"
echo "check-deb: ok in $((($(date +%s%N) - start) / 1000000)) ms"
