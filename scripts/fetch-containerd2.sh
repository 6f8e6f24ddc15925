#!/usr/bin/env bash
# Fetches containerd 2.x (Debian unstable's package) for the tests, without
# installing it: apt reads a private source list into private state, `apt-get
# download` fetches the .deb and `dpkg-deb -x` unpacks it into a cache
# outside the clone. Its containerd and ctr need only libc, so they run on
# Debian 12. The machine's own apt sources are never touched.
#
# Prints the directory holding `containerd` and `ctr`. A cached unpack is
# reused (it is keyed by the package's version); a missing one is fetched.
set -euo pipefail

cache=${JITSU_CACHE:-/var/cache/jitsu}/containerd2
mirror=${JITSU_DEBIAN_MIRROR:-http://deb.debian.org/debian}

for dir in "$cache"/containerd_*; do
  if [ -x "$dir/usr/bin/containerd" ] && [ -x "$dir/usr/bin/ctr" ]; then
    echo "$dir/usr/bin"
    exit 0
  fi
done

mkdir -p "$cache"
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" > "$work/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$work/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work"
  -o "Dir::Cache::archives=$work/archives"
  -o "APT::Get::List-Cleanup=false"
  -o "APT::Sandbox::User=root"
)
echo "fetch-containerd2: fetching containerd from Debian unstable's index" >&2
apt-get "${apt_opts[@]}" -qq update >&2
(cd "$work" && apt-get "${apt_opts[@]}" -qq download containerd >&2)
deb=$(ls "$work"/containerd_*.deb)
version=$(dpkg-deb -f "$deb" Version)
case "$version" in
  2.*) ;;
  *) echo "fetch-containerd2: unstable's containerd is $version, not 2.x" >&2; exit 1 ;;
esac
target="$cache/containerd_$version"
rm -rf "$target.partial"
dpkg-deb -x "$deb" "$target.partial"
mv "$target.partial" "$target"
echo "fetch-containerd2: containerd $version in $target" >&2
echo "$target/usr/bin"
