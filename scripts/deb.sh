#!/usr/bin/env bash
# make deb: builds dist/baton_VERSION_ARCH.deb with Debian's own dpkg-deb,
# from this tree, with no build dependency beyond Go, make, sed and gzip.
#
# The package: /usr/bin/baton (built as Debian builds Go programs: PIE,
# stripped, -trimpath), the man pages (one per command), bash, zsh and fish
# completions, /lib/systemd/system/baton@.service and baton@.socket (an
# instance per /etc/baton/NAME.toml), /etc/baton/example.toml as a
# conffile, and /usr/share/doc/baton. It is reproducible: every date is
# SOURCE_DATE_EPOCH (the last commit's unless set).
#
# Then lintian checks it when installed; the tags it still reports are
# overridden in the package, each with its reason
# (packaging/debian/lintian-overrides).
#
# Environment: VERSION (default: git describe), DEB_VERSION (default: from
# VERSION), DEB_MAINTAINER (default: the last commit's author), GO.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v dpkg-deb >/dev/null || { echo "deb: dpkg-deb is not installed: it is Debian's dpkg package" >&2; exit 1; }
GO=${GO:-go}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
version=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
maintainer=${DEB_MAINTAINER:-$(git log -1 --format='%an <%ae>' 2>/dev/null || echo 'baton maintainers <root@localhost>')}

# A Debian version starts with a digit: v1.2.3 is 1.2.3; anything else (an
# untagged commit) is 0.0~gitDATE.HASH, which sorts before any release.
if [[ $version =~ ^v?[0-9]+(\.[0-9]+)+ ]]; then
	deb_version=${version#v}
else
	deb_version=0.0~git$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d).$commit
fi
deb_version=${DEB_VERSION:-${deb_version//-/+}}

goarch=$("$GO" env GOARCH)
case $goarch in
amd64 | arm64 | riscv64 | ppc64le | s390x | mips64le) arch=$goarch ;;
386) arch=i386 ;;
arm) arch=armhf ;;
*) echo "deb: no Debian architecture for GOARCH=$goarch" >&2; exit 1 ;;
esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
bin=$stage/baton
# The C parts (cgo: the runtime's, the resolver's) get Debian's hardening
# flags, as dpkg-buildflags gives them.
CGO_CFLAGS=${CGO_CFLAGS:-"-g -O2 -fstack-protector-strong -Wformat -Werror=format-security -D_FORTIFY_SOURCE=2"} \
CGO_LDFLAGS=${CGO_LDFLAGS:-"-Wl,-z,relro -Wl,-z,now"} \
	"$GO" build -trimpath -buildmode=pie \
	-ldflags "-s -w -bindnow -X github.com/baton-dev/baton/internal/cli.Version=$version" \
	-o "$bin" ./cmd/baton

make --no-print-directory install-files BATON="$bin" DESTDIR="$root" PREFIX=/usr \
	UNITDIR=/lib/systemd/system ZSHCOMPDIR=/usr/share/zsh/vendor-completions \
	SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" >/dev/null

# Documentation: the systemd page, the README, a changelog (a native
# package's), the copyright of baton and of every module linked in.
doc=$root/usr/share/doc/baton
install -d "$doc"
gzip -9n <docs/systemd.md >"$doc/systemd.md.gz"
gzip -9n <README.md >"$doc/README.md.gz"
{
	printf 'baton (%s) unstable; urgency=medium\n\n' "$deb_version"
	printf '  * Built from commit %s (%s).\n\n' "$commit" "$version"
	printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"
{
	cat packaging/debian/copyright
	printf '\nGo standard library %s\n' "$("$GO" env GOVERSION)"
	sed -e 's/^[[:space:]]*$/./' -e 's/^/ /' "$("$GO" env GOROOT)/LICENSE"
	modcache=$("$GO" env GOMODCACHE)
	"$GO" version -m "$bin" | awk '$1 == "dep" { print $2, $3 }' | while read -r mod ver; do
		# The module cache escapes capitals as !lowercase.
		dir=$modcache/$(sed -E 's/([A-Z])/!\L\1/g' <<<"$mod")@$ver
		license=$(ls "$dir"/LICENSE* "$dir"/COPYING* 2>/dev/null | head -1 || true)
		printf '\n%s %s\n' "$mod" "$ver"
		if [ -n "$license" ] && grep -q 'Apache License' "$license" && grep -q 'Version 2.0' "$license"; then
			echo " Apache-2.0: /usr/share/common-licenses/Apache-2.0 has its text."
		elif [ -n "$license" ]; then
			sed -e 's/^[[:space:]]*$/./' -e 's/^/ /' "$license"
		else
			echo " (its license file is not in the module cache; see the module's source)"
		fi
	done
} >"$doc/copyright"

# Lintian's overrides: the tags that remain, each with its reason.
install -d "$root/usr/share/lintian/overrides"
install -m 0644 packaging/debian/lintian-overrides "$root/usr/share/lintian/overrides/baton"

# Control files.
install -d "$root/DEBIAN"
depends=$("$GO" run ./scripts/debdeps "$bin")
sed -e "s|@VERSION@|$deb_version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
	-e "s|@DEPENDS@|$depends|" -e "s|@SIZE@|$(du -sk --exclude=DEBIAN "$root" | cut -f1)|" \
	packaging/debian/control.in >"$root/DEBIAN/control"
[ -n "$depends" ] || sed -i '/^Depends: *$/d' "$root/DEBIAN/control"
echo /etc/baton/example.toml >"$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do
	install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

# Reproducible: every file dated SOURCE_DATE_EPOCH, owned by root.
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p dist
rm -f dist/baton_*.deb # one package in dist/: the one just built
deb=dist/baton_${deb_version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"

if command -v lintian >/dev/null; then
	lintian --fail-on error,warning --display-info "$deb"
else
	echo "deb: lintian is not installed (apt-get install lintian); the package is not checked" >&2
fi
