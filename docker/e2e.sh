#!/usr/bin/env bash
# End-to-end test with real containers: offline image build, compose up, API smoke test
# through the published port, one node stopped (writes still 201), every node stopped
# (writes 202, fallback), nodes started again (journal replayed, every acknowledged write
# readable), compose down -v. Cleans up on every exit path.
#   bash docker/e2e.sh            (PROFILE=debug SKIP_CARGO_BUILD=1 to reuse test binaries)
# The image (RUSTLE_IMAGE, default rustle:local) comes from docker/offline-build.sh, or with
# E2E_BUILD=dockerfile from `docker-compose build`: ./Dockerfile, as users with a registry
# build it (no pull: its base images must be present; docker/standin-bases.sh makes them);
# E2E_BUILD=none takes the image as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

project="rustle-e2e-$$"
export RUSTLE_PORT="${RUSTLE_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
compose() { docker-compose -p "$project" -f docker-compose.yml "$@"; }
cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "e2e: failed (exit $rc); gateway log tail:" >&2
    compose logs --tail 40 gateway >&2 || true
  fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT INT TERM

base="http://127.0.0.1:$RUSTLE_PORT"
fail() { echo "e2e: $*" >&2; exit 1; }
# wait_for <seconds> <what> <command...>
wait_for() {
  local within=$1 what=$2; shift 2
  local until=$((SECONDS + within))
  until "$@" >/dev/null 2>&1; do
    (( SECONDS < until )) || fail "$what did not happen within ${within}s"
    sleep 0.2
  done
}
status_field() { curl -sf "$base/v1/status" | python3 -c "import json,sys; d=json.load(sys.stdin)['response']['data']; print($1)"; }
# The development key of docker/dev-policy.toml (the README documents it).
KEY="${RUSTLE_KEY:-rk_iuShoUIwh6lLGRSf4xMumu0-qfNphNYu4HJHoiA6jv0}"
auth=(-H "Authorization: Bearer $KEY")
put() { curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" -X PUT "$base/v1/envelopes" --url-query "address=$1" \
  -H 'content-type: application/json' -d "{\"content\": $2}"; }

start=$SECONDS
case "${E2E_BUILD:-offline}" in
  offline) bash docker/offline-build.sh ;;
  dockerfile)
    echo "== docker-compose build (./Dockerfile, image ${RUSTLE_IMAGE:-rustle:local})"
    t0=$SECONDS
    build_log="$(mktemp)"
    # Without the colour codes docker-compose puts around the build's stderr.
    compose build 2>&1 | sed -u 's/\x1b\[[0-9;]*m//g' >"$build_log" \
      || { tail -60 "$build_log" >&2; rm -f "$build_log"; fail "docker-compose build failed"; }
    grep -E '^(Building|Sending build context|Successfully built)|Finished `release`' "$build_log" || true
    rm -f "$build_log"
    echo "docker-compose build: $((SECONDS - t0)) s"
    ;;
  none) docker image inspect "${RUSTLE_IMAGE:-rustle:local}" >/dev/null || fail "no image ${RUSTLE_IMAGE:-rustle:local}" ;;
  *) fail "E2E_BUILD is offline, dockerfile or none, not '$E2E_BUILD'" ;;
esac
echo "== compose up (port $RUSTLE_PORT)"
t0=$SECONDS
compose up -d
wait_for 120 "gateway ready" curl -sf "$base/ready"
echo "cold start (compose up to /ready): $((SECONDS - t0)) s"
endpoints_up() { [[ "$(status_field "sum(e['up'] for e in d['endpoints'])")" == 3 ]]; }
wait_for 60 "three endpoints up" endpoints_up
curl -sf -o /dev/null "$base/docs/" || fail "no Swagger UI at /docs/"
curl -sf -o /dev/null "$base/openapi.json" || fail "no /openapi.json"

echo "== smoke"
acked=()
# write_five <tag> <status>: five new addresses, each answered <status>, acknowledged.
write_five() {
  local i a code
  for i in 1 2 3 4 5; do
    a="ucxl://agent:e2e@bzzz:e2e/notes/$1-$i"
    code="$(put "$a" "{\"n\": $i}")"
    [[ "$code" == "$2" ]] || fail "write $a answered $code, not $2"
    acked+=("$a")
  done
}
A="ucxl://agent:e2e@bzzz:e2e/notes/smoke"
[[ "$(put "$A" '{"n": 0}')" == 201 ]] || fail "first write not 201"
acked+=("$A")
read_back="$(curl -s "${auth[@]}" "$base/v1/envelopes" --url-query "address=$A")"
python3 -c "import json,sys; d=json.loads(sys.argv[1])['response']['data']; assert d['written_by'] == 'dev', d" "$read_back" \
  || fail "read back without written_by dev: $read_back"
[[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/v1/envelopes" --url-query "address=$A")" == 401 ]] \
  || fail "a read without the key was not 401"
[[ "$(status_field "d['auth']['mode']")" == required ]] || fail "auth is not required"

echo "== one node stopped: writes still 201"
docker stop "$(compose ps -q bzzz-2)" >/dev/null
write_five one-down 201

echo "== every node stopped: writes 202 (fallback)"
docker stop "$(compose ps -q bzzz-1)" "$(compose ps -q bzzz-3)" >/dev/null
write_five all-down 202
[[ "$(status_field "d['fallback']['active']")" == True ]] || fail "fallback not active"
[[ "$(status_field "d['journal']['pending']")" -ge 5 ]] || fail "journal does not hold the writes"

echo "== nodes started again: journal replayed"
docker start "$(compose ps -q bzzz-1)" "$(compose ps -q bzzz-2)" "$(compose ps -q bzzz-3)" >/dev/null
replayed() { [[ "$(status_field "(d['journal']['pending'], d['fallback']['active'])")" == "(0, False)" ]]; }
wait_for 60 "journal replayed" replayed
for a in "${acked[@]}"; do
  out="$(curl -s -D - -o /dev/null "${auth[@]}" "$base/v1/envelopes" --url-query "address=$a")"
  grep -q '^HTTP/1.1 200' <<<"$out" || fail "acknowledged write $a not readable"
  grep -qi '^x-rustle-backend: real' <<<"$out" || fail "$a not served by the cluster"
done
echo "every acknowledged write (${#acked[@]}) readable from the cluster"
echo "image: $(docker image inspect -f '{{.Size}}' "${RUSTLE_IMAGE:-rustle:local}" | awk '{ printf "%.1f MB", $1 / 1e6 }')"
echo "e2e: ok in $((SECONDS - start)) s"
