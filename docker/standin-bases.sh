#!/usr/bin/env bash
# Local stand-ins for the two base images of ./Dockerfile, under their registry names, so a
# machine with Docker but no container registry (CI) builds that Dockerfile unchanged:
#
#   rust:1-bookworm                         Debian bookworm (debootstrap, from Debian's
#                                           packages) with this host's Rust toolchain laid
#                                           out as the official image does (rustup in
#                                           /usr/local/cargo/bin, toolchain in
#                                           /usr/local/rustup), the C toolchain the -sys
#                                           crates use, and this host's CA bundle, so cargo
#                                           reaches crates.io the way the host does
#   gcr.io/distroless/cc-debian12:nonroot   Debian's glibc, libgcc, libstdc++, libssl,
#                                           libgomp, CA certificates, tzdata and netbase
#                                           files, users root/nobody/nonroot, USER 65532,
#                                           no shell: the files distroless's cc image holds
#
# Then `docker-compose build` builds ./Dockerfile with nothing pulled (.ci/run does, then
# runs docker/e2e.sh on that image). Both are labelled org.rustle.standin=<recipe>; one
# whose recipe (this script, the Debian root, the host's toolchain and CA bundle) is the
# same is kept, a stale one rebuilt. An image by either name without the label came from a
# registry and is left alone. The debootstrapped root is cached as a tarball in
# $RUSTLE_STANDIN_CACHE (default /var/cache/rustle-standin): debootstrap runs once.
#   bash docker/standin-bases.sh      (needs root or sudo for debootstrap, and Docker)
set -euo pipefail
self="$(readlink -f "$0")"
cd "$(dirname "$0")/.."

RUST_IMAGE=rust:1-bookworm
RUN_IMAGE=gcr.io/distroless/cc-debian12:nonroot
LABEL=org.rustle.standin
cache="${RUSTLE_STANDIN_CACHE:-/var/cache/rustle-standin}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
# The part of the official image (buildpack-deps:bookworm) a Rust build and its -sys crates
# use: a C/C++ compiler, make, pkg-config, OpenSSL and zlib headers, git, curl, xz. Nothing
# more (no cmake: the official image has none), so a build needing more fails here as it
# would there. The runtime libraries of the distroless stand-in come from the same root.
packages=(ca-certificates curl git gcc g++ libc6-dev make pkg-config libssl-dev zlib1g-dev
  xz-utils bzip2 unzip patch file dpkg-dev procps netbase tzdata libssl3 libgomp1)
# The packages whose files distroless's cc-debian12 image is made of.
runtime_packages=(base-files netbase tzdata libc6 libgcc-s1 libstdc++6 libssl3 libgomp1)

log() { echo "standin: $*"; }
# docker build, without the legacy builder's deprecation notice (errors still shown).
build() { docker build --quiet "$@" 2> >(grep -v -e DEPRECATED -e 'Install the buildx' -e 'docs.docker.com/go/buildx' -e '^\s*$' >&2) >/dev/null; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "standin: $* needs root or sudo" >&2; exit 1; fi
}
short_hash() { sha256sum | cut -c1-16; }
# The recipe label of image $1: empty when there is no such image, "-" when it has none.
recipe_of() {
  docker image inspect "$1" >/dev/null 2>&1 || return 0
  local r
  r="$(docker image inspect -f "{{with .Config.Labels}}{{index . \"$LABEL\"}}{{end}}" "$1")"
  echo "${r:--}"
}
# up_to_date <image> <recipe>: true when the image exists and needs no (re)build.
up_to_date() {
  local have
  have="$(recipe_of "$1")"
  if [[ -z "$have" ]]; then
    return 1
  elif [[ "$have" == "$2" ]]; then
    log "$1 is up to date ($LABEL=$2)"
  elif [[ "$have" == - ]]; then
    log "$1 has no $LABEL label: an image from a registry, used as it is"
  else
    log "$1 is stale ($LABEL=$have, want $2): rebuilding"
    return 1
  fi
}

as_root mkdir -p "$cache"
# One run at a time (CI runs of several checkouts share this machine and its images).
exec 9>>"${TMPDIR:-/tmp}/rustle-standin.lock"
flock 9

work="$(mktemp -d "${TMPDIR:-/tmp}/standin.XXXXXX")"
cleanup() {
  # --one-file-system: never into a /proc or /dev debootstrap left mounted in the root.
  if [[ -d "$work/root" ]]; then
    for m in proc sys dev/pts dev; do as_root umount "$work/root/$m" 2>/dev/null || true; done
  fi
  as_root rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# 1. The Debian root, debootstrapped once and cached as a tarball.
root_key="$(printf '%s\n' "$suite" "$mirror" "${packages[@]}" | short_hash)"
tarball="$cache/$suite-$root_key.tar"
if [[ ! -s "$tarball" ]]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap (Debian package)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
  fi
  log "debootstrap $suite from $mirror (once; cached as $tarball)"
  t0=$SECONDS
  as_root debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
    "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
  as_root chroot "$work/root" apt-get clean
  as_root rm -rf "$work/root/var/lib/apt/lists" "$work/root/var/log"/*.log
  as_root mkdir -p "$work/root/var/lib/apt/lists/partial"
  as_root tar --numeric-owner --one-file-system -C "$work/root" -cf "$tarball.part" .
  as_root mv "$tarball.part" "$tarball"
  as_root rm -rf --one-file-system "$work/root"
  log "debootstrap: $((SECONDS - t0)) s, $(du -m "$tarball" | cut -f1) MB"
fi
base="rustle-standin/$suite:$root_key"
if ! docker image inspect "$base" >/dev/null 2>&1; then
  log "docker import $tarball as $base"
  docker import --change 'CMD ["bash"]' --change "LABEL $LABEL=$root_key" "$tarball" "$base" >/dev/null
fi

# 2. rust:1-bookworm: the root, the host's toolchain, the host's CA bundle.
command -v rustup >/dev/null 2>&1 \
  || { echo "standin: the host's Rust toolchain must come from rustup (as the official image's)" >&2; exit 1; }
sysroot="$(rustc --print sysroot)"
version="$(rustc -vV | sed -n 's/^release: //p')"
host="$(rustc -vV | sed -n 's/^host: //p')"
rustup_bin="$(readlink -f "$(command -v rustup)")"
ca=/etc/ssl/certs/ca-certificates.crt
rust_recipe="$( { cat "$self"; echo "$root_key"; rustc -vV; sha256sum <"$rustup_bin"; sha256sum <"$ca"; } | short_hash)"
if ! up_to_date "$RUST_IMAGE" "$rust_recipe"; then
  t0=$SECONDS
  ctx="$work/rust"
  toolchain="$version-$host"
  mkdir -p "$ctx/rustup/toolchains/$toolchain" "$ctx/cargo/bin"
  # rustc, cargo, rustdoc and the standard library; not the 800 MB of docs in share/.
  cp -a "$sysroot/bin" "$sysroot/lib" "$sysroot/etc" "$ctx/rustup/toolchains/$toolchain/"
  cat >"$ctx/rustup/settings.toml" <<TOML
version = "12"
default_toolchain = "$toolchain"
profile = "minimal"
auto_self_update = "disable"
TOML
  cp "$rustup_bin" "$ctx/cargo/bin/rustup"
  for tool in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt rust-gdb rust-lldb; do
    [[ -e "$sysroot/bin/$tool" ]] && ln -s rustup "$ctx/cargo/bin/$tool"
  done
  cp "$ca" "$ctx/ca-certificates.crt"
  # Writable by any user, as in the official image; done here, since a RUN chmod would copy
  # the whole toolchain into another layer.
  chmod -R a+w "$ctx/rustup" "$ctx/cargo"
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $base
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo RUST_VERSION=$version \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
COPY ca-certificates.crt $ca
RUN cargo --version && rustc --version && cc --version >/dev/null && c++ --version >/dev/null
CMD ["bash"]
LABEL $LABEL=$rust_recipe
DOCKERFILE
  log "building $RUST_IMAGE (rustc $version from $sysroot)"
  build -t "$RUST_IMAGE" "$ctx"
  rm -rf "$ctx"
  log "$RUST_IMAGE: $((SECONDS - t0)) s"
fi

# 3. gcr.io/distroless/cc-debian12:nonroot: the runtime packages' files from the same root.
run_recipe="$( { cat "$self"; echo "$root_key"; } | short_hash)"
if ! up_to_date "$RUN_IMAGE" "$run_recipe"; then
  t0=$SECONDS
  ctx="$work/run"
  mkdir -p "$ctx"
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $base AS root
# Every path the packages installed (their docs aside), under /usr where bookworm's merged
# /usr makes /bin, /sbin, /lib and /lib64 symlinks into it; then those symlinks.
RUN set -eu; test -L /lib && test -L /lib64 && test -L /bin && test -L /sbin; mkdir /out; \\
    dpkg -L ${runtime_packages[*]} | sed -E 's#^/(bin|sbin|lib|lib64)(/|\$)#/usr/\\1\\2#' \\
      | grep -vE '^/\\.\$|^/usr/share/(doc|man|lintian|bug)(/|\$)' | sort -u >/paths; \\
    tar -C / --no-recursion -cf - -T /paths | tar -C /out -xf -; \\
    for l in bin sbin lib lib64; do if [ -L "/\$l" ]; then cp -a "/\$l" /out/; fi; done; \\
    mkdir -p /out/etc/ssl/certs /out/tmp /out/root /out/home/nonroot; \\
    cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/; \\
    chmod 1777 /out/tmp; chmod 700 /out/root; chown 65532:65532 /out/home/nonroot; \\
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \\
      'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >/out/etc/passwd; \\
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >/out/etc/group; \\
    echo 'hosts: files dns' >/out/etc/nsswitch.conf; \\
    for sh in bin/sh bin/bash bin/dash usr/bin/sh usr/bin/bash usr/bin/dash; do test ! -e "/out/\$sh"; done; \\
    ma="\$(dpkg-architecture -qDEB_HOST_MULTIARCH)"; \\
    test -e "/out/usr/lib/\$ma/libc.so.6" && test -e "/out/usr/lib/\$ma/libgcc_s.so.1"
FROM scratch
COPY --from=root /out /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532
WORKDIR /home/nonroot
LABEL $LABEL=$run_recipe
DOCKERFILE
  log "building $RUN_IMAGE"
  build -t "$RUN_IMAGE" "$ctx"
  log "$RUN_IMAGE: $((SECONDS - t0)) s"
fi
# The distroless build's first stage and replaced stand-ins (only images with our label),
# and the roots of an older package list.
docker image prune -f --filter "label=$LABEL" --filter dangling=true >/dev/null || true
for old in $(docker images --format '{{.Repository}}:{{.Tag}}' "rustle-standin/$suite"); do
  [[ "$old" == "$base" ]] || docker image rm "$old" >/dev/null 2>&1 || true
done
for old in "$cache/$suite"-*.tar; do
  [[ "$old" == "$tarball" || ! -e "$old" ]] || as_root rm -f "$old"
done
log "ready: $RUST_IMAGE ($(docker image inspect -f '{{.Size}}' "$RUST_IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')), $RUN_IMAGE ($(docker image inspect -f '{{.Size}}' "$RUN_IMAGE" | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
