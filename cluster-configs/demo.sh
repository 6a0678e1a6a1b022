#!/usr/bin/env bash
# Bring up the local three-server cluster (cluster-configs/three-node) with one agent and run
# the example Deployment on it. `demo.sh down` stops the servers. Run from anywhere; data and logs go to
# data/local-three/ under the repository root.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin="$root/target/debug/flotilla"
logs="$root/data/local-three"
export FLOTILLA_SERVER=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103

down() {
    export FLOTILLA_CONFIG="$logs/server-1/admin.conf"
    # The agent stops the demo's containers itself (the Deployment's pods go with it, by
    # garbage collection); containers outlive their agent.
    if [ -f "$logs/agent-1.pid" ] && "$bin" delete deployment nginx-deployment >/dev/null 2>&1; then
        for _ in $(seq 1 150); do
            [ -z "$(runc --root "$logs/agent-1/runtime/runc" list -q 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    bash "$root/cluster-configs/local-registry.sh" stop --dir "$root/data/registry" >/dev/null 2>&1 || true
    for p in agent-1 server-1 server-2 server-3; do
        pidf="$logs/$p.pid"
        if [ -f "$pidf" ]; then
            kill "$(cat "$pidf")" 2>/dev/null || true
            rm -f "$pidf"
        fi
    done
    echo "registry, agent and servers stopped (data kept in $logs; delete it for a fresh cluster)"
}

if [ "${1:-up}" = "down" ]; then
    down
    exit 0
fi

if ! command -v cargo >/dev/null; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi
cargo build -p flotilla
mkdir -p "$logs"
for i in 1 2 3; do
    pidf="$logs/server-$i.pid"
    if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
        echo "server $i already running (pid $(cat "$pidf"))"
        continue
    fi
    "$bin" server --config "cluster-configs/three-node/server-$i.toml" >"$logs/server-$i.log" 2>&1 &
    echo $! >"$pidf"
done

# The API speaks mutual TLS only: server 1 wrote an admin CLI config when it bootstrapped.
export FLOTILLA_CONFIG="$logs/server-1/admin.conf"
for _ in $(seq 1 100); do
    [ -f "$FLOTILLA_CONFIG" ] && break
    sleep 0.1
done
if [ ! -f "$FLOTILLA_CONFIG" ]; then
    echo "server 1 did not start; its log ($logs/server-1.log) ends with:" >&2
    tail -n 5 "$logs/server-1.log" >&2
    exit 1
fi
echo "admin CLI config: $FLOTILLA_CONFIG (flotilla --config $FLOTILLA_CONFIG get nodes)"

# Wait (bounded) for an elected leader.
for _ in $(seq 1 100); do
    if "$bin" cluster status -o json 2>/dev/null | grep -q '"leader_id": [1-9]'; then
        break
    fi
    sleep 0.2
done
"$bin" cluster status
echo

# Containers need root, runc and the local registry of test images (Debian packages).
run_pods=no
if [ "$(id -u)" = 0 ]; then
    need=()
    for t in runc:runc docker-registry:docker-registry skopeo:skopeo busybox:busybox-static zstd:zstd; do
        command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
    done
    if [ "${#need[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
    fi
    bash cluster-configs/local-registry.sh start --port 5000 --dir "$root/data/registry"
    run_pods=yes
else
    echo "not root: the agent joins and heartbeats, but running a pod needs root (runc); skipping the pod"
fi

# One node agent, joined with a token (it registers its Node and heartbeats over QUIC).
pidf="$logs/agent-1.pid"
if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
    echo "agent already running (pid $(cat "$pidf"))"
else
    token="$("$bin" token create --ttl 1h --description demo)"
    "$bin" agent --join "$FLOTILLA_SERVER" --token "$token" --data-dir "$logs/agent-1" \
        --name node-1 --insecure-registry 127.0.0.1:5000 >"$logs/agent-1.log" 2>&1 &
    echo $! >"$pidf"
    for _ in $(seq 1 50); do
        "$bin" get node node-1 >/dev/null 2>&1 && break
        sleep 0.2
    done
fi
"$bin" get nodes -o wide
echo
"$bin" apply -f cluster-configs/examples/configmaps.yaml
"$bin" get configmaps -l app=game
echo
if [ "$run_pods" = yes ]; then
    # The classic nginx-deployment, its image swapped for the local test image (busybox's
    # httpd on port 80): the scheduler places its pods, the controllers keep 2 replicas.
    sed -e "s|image: nginx:1.7.9|image: 127.0.0.1:5000/busybox:test\n        command: [\"httpd\", \"-f\", \"-p\", \"80\"]|" \
        cluster-configs/examples/nginx-deployment.yaml | "$bin" apply -f -
    "$bin" rollout status deployment/nginx-deployment --timeout-secs 180
    "$bin" get deployments
    "$bin" get pods -o wide
    pod="$("$bin" get pods -l app=nginx -o name | head -n 1)"
    "$bin" exec "${pod#pod/}" -- hostname
    "$bin" scale deployment/nginx-deployment --replicas 3
    "$bin" rollout status deployment/nginx-deployment --timeout-secs 180
    "$bin" get deployment nginx-deployment
    echo
    "$bin" cluster status
    echo
fi
echo "The cluster keeps running. Try: $bin get cm -w   (and apply from another shell)"
echo "Stop it with: cluster-configs/demo.sh down"
