#!/usr/bin/env bash
# The short fixed-seed fault-injection suite CI runs (called by .ci/test-all): each workload under
# combined nemeses must come out valid, and each planted bug must be caught (invalid). Any
# invalid verdict where valid is expected, or a harness failure, fails the suite; an unknown
# verdict (a checker that gave up) is reported but does not fail it. Needs root (network
# namespaces, nftables). Results: target/jepsen/ci/<run>/ (history, node logs, verdict, timeline).
set -uo pipefail
cd "$(dirname "$0")/.."

for t in nft:nftables iptables-legacy:iptables faketime:faketime fiu-ctrl:fiu-utils runc:runc \
    docker-registry:docker-registry skopeo:skopeo busybox:busybox-static; do
    if ! command -v "${t%%:*}" >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y "${t#*:}" >/dev/null
        else
            echo "jepsen suite: ${t%%:*} is missing: apt-get install -y ${t#*:} (as root)" >&2
            exit 1
        fi
    fi
done
if [ "$(id -u)" != 0 ]; then
    echo "jepsen suite: must run as root (it creates network namespaces)" >&2
    exit 1
fi

set -e
# A test build of flotilla (planted bugs, off unless switched on, and failpoints), then the
# product build again (cargo keeps both, so the second step only relinks).
cargo build -q -p flotilla --features planted-bugs,failpoints
cp target/debug/flotilla target/debug/flotilla-test
cargo build -q --workspace --bins
set +e

J=target/debug/flotilla-jepsen
out=target/jepsen/ci
rm -rf "$out"
mkdir -p "$out"
failed=0

# run EXPECTED_EXIT NAME ARGS...
run() {
    local expect=$1 name=$2
    shift 2
    local start=$SECONDS
    "$J" test --out "$out/$name" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    local verdict
    verdict=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['valid'])" "$out/$name/verdict.json" 2>/dev/null || echo "no verdict")
    if [ "$rc" = "$expect" ]; then
        printf 'jepsen: %-28s %-8s (exit %s, %ss) ok\n' "$name" "$verdict" "$rc" "$took"
    elif [ "$rc" = 2 ] && [ "$expect" = 0 ]; then
        printf 'jepsen: %-28s %-8s (exit %s, %ss) UNKNOWN: the checker gave up; see %s\n' "$name" "$verdict" "$rc" "$took" "$out/$name"
    else
        printf 'jepsen: %-28s %-8s (exit %s, expected %s, %ss) FAILED; see %s\n' "$name" "$verdict" "$rc" "$expect" "$took" "$out/$name"
        tail -n 30 "$out/$name.log"
        failed=1
    fi
}

run 0 register-3-nodes --workload register --nemesis kill,pause,partition,clock,netem --time-limit 90 --seed 11
# The test build, for the failpoint nemesis (no planted bug switched on).
run 0 set-3-nodes --workload set --nemesis kill,partition,loss,member,clock,failpoint,fsync --time-limit 90 --seed 12 \
    --flotilla target/debug/flotilla-test
run 0 watch-3-nodes --workload watch --nemesis kill,pause,partition,loss,member,clock,failpoint --time-limit 90 \
    --seed 13 --flotilla target/debug/flotilla-test
run 0 fence-3-nodes --workload fence --nemesis pause,partition,kill,member,fsync --time-limit 60 --seed 15
# Agents running pods with runc, a Deployment scaled and rolled out while leases move.
run 0 schedule-3-nodes --workload schedule --nemesis agent-kill,kill,pause,partition,slow --time-limit 90 \
    --seed 16 --flotilla target/debug/flotilla-test
run 0 register-5-nodes --nodes 5 --workload register --nemesis partition,kill,pause,member --time-limit 60 --seed 14
# Planted bugs: a harness that cannot catch these proves nothing.
run 1 planted-stale-read --workload register --nemesis partition --time-limit 30 --seed 21 \
    --flotilla target/debug/flotilla-test --planted-bug stale-read
run 1 planted-drop-watch-event --workload watch --time-limit 20 --seed 22 \
    --flotilla target/debug/flotilla-test --planted-bug drop-watch-event
# Log appends acknowledged without fsync: lost when every server is killed at once (seed 23's
# kills include `all`); no snapshots, so no purge makes the log durable by the way.
run 1 planted-ack-before-fsync --workload set --nemesis kill --time-limit 40 --seed 23 \
    --snapshot-threshold 1000000 --flotilla target/debug/flotilla-test --planted-bug ack-before-fsync
# Fences dropped before proposing: a lease holder that stalled past its lease writes anyway.
run 1 planted-skip-fencing --workload fence --time-limit 30 --seed 24 \
    --flotilla target/debug/flotilla-test --planted-bug skip-fencing

rm -f target/debug/flotilla-test
if [ "$failed" != 0 ]; then
    echo "jepsen suite: FAILED" >&2
    exit 1
fi
echo "jepsen suite: passed"
