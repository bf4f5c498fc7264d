#!/usr/bin/env bash
# Builds the image docker-compose.yml uses (rustle:local) with no container registry at
# all: the release binaries built on this host, the shared libraries they link (glibc,
# libgcc) copied from this host, in a FROM scratch image. Afterwards
#   docker-compose up -d
# starts the cluster offline (no --build).
set -euo pipefail
cd "$(dirname "$0")/.."

# PROFILE=debug reuses the binaries a `cargo test` run built (CI does); SKIP_CARGO_BUILD=1
# uses whatever binaries are there.
image="${RUSTLE_IMAGE:-rustle:local}"
target="${CARGO_TARGET_DIR:-target}"
profile="${PROFILE:-release}"

if [[ "${SKIP_CARGO_BUILD:-0}" != 1 ]]; then
  if [[ "$profile" == release ]]; then
    cargo build --release --locked -p bzzz-node -p rustle-gateway
  else
    cargo build --locked -p bzzz-node -p rustle-gateway
  fi
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$stage/data"
for bin in bzzz-node rustle-gateway; do
  cp "$target/$profile/$bin" "$root/usr/local/bin/"
  strip "$root/usr/local/bin/$bin" 2>/dev/null || true
done

# The dynamic loader and every library the binaries link, at the same paths.
libs="$(ldd "$root/usr/local/bin/bzzz-node" "$root/usr/local/bin/rustle-gateway" \
  | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)"
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

# A user for the services, name resolution for service names (compose DNS).
echo 'root:x:0:0:root:/:/nonexistent' > "$root/etc/passwd"
echo 'rustle:x:65532:65532:rustle:/data:/nonexistent' >> "$root/etc/passwd"
printf 'root:x:0:\nrustle:x:65532:\n' > "$root/etc/group"
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"

cat > "$stage/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY root/ /
COPY --chown=65532:65532 data /data
ENV BZZZ_DATA_DIR=/data/bzzz RUSTLE_DATA_DIR=/data RUSTLE_JOURNAL_DIR=/data/journal PATH=/usr/local/bin
USER 65532:65532
EXPOSE 8080 4001
CMD ["rustle-gateway"]
DOCKERFILE

docker build --quiet -t "$image" "$stage" >/dev/null
echo "built $image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.1f MB", $1 / 1e6 }')"
