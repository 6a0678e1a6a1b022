#!/usr/bin/env bash
# Local OCI registry with reproducible test images, for exercising image pulls without network.
#
#   local-registry.sh start [--port PORT] [--dir DIR] [--host ADDR]
#                                  (defaults: 5000, ./data/registry, 127.0.0.1)
#   local-registry.sh stop  [--dir DIR]
#
# `start` runs Debian's docker-registry (distribution 2.8) on HOST:PORT (default 127.0.0.1) and
# pushes:
#   busybox:test, busybox:<busybox version>, busybox:latest
#                                 one gzip layer: static busybox + applet symlinks + minimal /etc
#                                 (`test` is the fixed tag tests and examples use)
#   layered:latest                busybox layer (gzip) + zstd layer + gzip layer with whiteouts,
#                                 to test layer media types, a `.wh.` whiteout and an opaque dir
# Every layer is built with fixed tar/gzip/zstd settings so digests are identical on every run
# (and on every machine with the same busybox and tool versions).
set -euo pipefail
umask 022 # file modes inside the layers come from the staging tree; keep them predictable

die() { echo "local-registry: $*" >&2; exit 1; }

usage() {
    cat >&2 <<'EOF'
usage: local-registry.sh start [--port PORT] [--dir DIR] [--host ADDR]
       local-registry.sh stop [--dir DIR]
EOF
    exit 2
}

cmd="${1:-}"
if [ $# -gt 0 ]; then shift; fi
port=5000
host=127.0.0.1
dir=./data/registry
while [ $# -gt 0 ]; do
    case "$1" in
        --port) [ $# -ge 2 ] || usage; port="$2"; shift 2 ;;
        --port=*) port="${1#*=}"; shift ;;
        --dir) [ $# -ge 2 ] || usage; dir="$2"; shift 2 ;;
        --dir=*) dir="${1#*=}"; shift ;;
        --host) [ $# -ge 2 ] || usage; host="$2"; shift 2 ;;
        --host=*) host="${1#*=}"; shift ;;
        *) usage ;;
    esac
done
case "$cmd" in start | stop) ;; *) usage ;; esac
[[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "invalid port: $port"

pidfile="$dir/registry.pid"

# A process counts as alive only if it exists and is not a zombie: inside containers the
# registry may be re-parented to a PID 1 that never reaps, and `kill -0` succeeds on zombies.
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)"
    [ "$state" != Z ]
}

# The pid in the pid file, if that process is alive and is a docker-registry (guards against
# killing or trusting an unrelated process that reused the pid).
registry_pid() {
    local pid cmdline
    [ -f "$pidfile" ] || return 1
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmdline" == *docker-registry* ]] || return 1
    echo "$pid"
}

stop_registry() {
    local pid i
    if pid="$(registry_pid)"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 50); do # 5 s in 0.1 s steps
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            echo "registry (pid $pid) ignored SIGTERM for 5 s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "registry (pid $pid) stopped"
    else
        echo "registry not running"
    fi
    rm -f "$pidfile"
}

if [ "$cmd" = stop ]; then
    stop_registry
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# start: tools
# ---------------------------------------------------------------------------------------------

bb=/bin/busybox
busybox_static() {
    [ -x "$bb" ] || return 1
    # ldd is in libc-bin (essential on Debian); for a static binary it prints "not a dynamic
    # executable" and exits 1 (hence captured, not piped, under pipefail).
    local out
    out="$(LC_ALL=C ldd "$bb" 2>&1 || true)"
    case "$out" in *"not a dynamic executable"* | *"statically linked"*) return 0 ;; esac
    [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null || true)" = "install ok installed" ]
}

# tool -> Debian package that provides it
missing_tools=()
missing_pkgs=()
need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        missing_tools+=("$1")
        missing_pkgs+=("$2")
    fi
}
check_tools() {
    missing_tools=()
    missing_pkgs=()
    need docker-registry docker-registry
    need skopeo skopeo
    need zstd zstd
    need curl curl
    need gzip gzip
    need tar tar
    need sha256sum coreutils
    need setsid util-linux
    if ! busybox_static; then
        missing_tools+=("static busybox at $bb")
        missing_pkgs+=(busybox-static)
    fi
}
check_tools
if [ ${#missing_tools[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing missing tools: ${missing_tools[*]} (packages: ${missing_pkgs[*]})" >&2
        # A stale or empty package index is common in fresh containers: refresh once and retry.
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing_pkgs[@]}" ||
            { DEBIAN_FRONTEND=noninteractive apt-get update &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing_pkgs[@]}"; } ||
            die "apt-get could not install: ${missing_pkgs[*]}"
        check_tools
    fi
    [ ${#missing_tools[@]} -eq 0 ] ||
        die "missing required tool(s): ${missing_tools[*]} (Debian packages: ${missing_pkgs[*]}); install them or run as root with apt-get available"
fi

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)" # absolute: the registry config and skopeo references need it
pidfile="$dir/registry.pid"
log="$dir/registry.log"
cfg="$dir/config.yml"
base="http://$host:$port"

answering() { curl -fsS -o /dev/null --max-time 1 "$base/v2/" 2>/dev/null; }

# Poll until the registry answers, for at most 10 s of wall time (a listener that accepts but
# never replies costs a whole curl timeout per poll, so count time, not attempts); fail early
# if the registry process exits.
wait_ready() {
    local pid="$1" deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        answering && return 0
        alive "$pid" || break
        sleep 0.2
    done
    echo "local-registry: registry (pid $pid) is not answering on $base/v2/; last lines of $log:" >&2
    tail -n 30 "$log" >&2 || true
    return 1
}

# ---------------------------------------------------------------------------------------------
# start: registry (reused if one from this DIR is already up)
# ---------------------------------------------------------------------------------------------

if pid="$(registry_pid)"; then
    running_addr="$(sed -n 's/^[[:space:]]*addr:[[:space:]]*//p' "$cfg" 2>/dev/null | head -n 1)"
    if [ "$running_addr" != "$host:$port" ]; then
        die "the registry from $dir (pid $pid) listens on ${running_addr:-unknown address}, not $host:$port; run '$0 stop --dir $dir' first"
    fi
    wait_ready "$pid" || die "the registry from $dir (pid $pid) is running but not answering"
    echo "reusing registry pid $pid at $host:$port (dir $dir)"
else
    rm -f "$pidfile"
    # Refuse to start if something else owns the port: our readiness probe would succeed
    # against it and we would push to the wrong registry.
    if answering; then
        die "something else is already answering on $base/v2/ (not the registry from $dir)"
    fi
    mkdir -p "$dir/storage"
    cat >"$cfg" <<EOF
# Written by cluster-configs/local-registry.sh; rewritten on every fresh start.
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: "$dir/storage"
  delete:
    enabled: true
http:
  addr: $host:$port
EOF
    # setsid + nohup: the registry must outlive this script and its terminal. Without job
    # control the background child is not a process-group leader, so setsid execs in place
    # and $! is the registry's own pid.
    setsid nohup docker-registry serve "$cfg" >>"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pidfile"
    if ! wait_ready "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        rm -f "$pidfile"
        die "registry failed to start"
    fi
    echo "started registry pid $pid at $host:$port (dir $dir, log $log)"
fi

# ---------------------------------------------------------------------------------------------
# start: images, written as an OCI image layout under DIR/build
# ---------------------------------------------------------------------------------------------

build="$dir/build"
rm -rf "$build"
layout="$build/oci"
mkdir -p "$layout/blobs/sha256" "$build/stage"
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

case "$(dpkg --print-architecture 2>/dev/null || uname -m)" in
    amd64 | x86_64) arch=amd64 ;;
    arm64 | aarch64) arch=arm64 ;;
    *) die "unsupported architecture: $(dpkg --print-architecture 2>/dev/null || uname -m) (expected amd64 or arm64)" ;;
esac

sha() { sha256sum "$1" | cut -d' ' -f1; }

# add_blob FILE -> moves FILE into the layout; sets blob_digest and blob_size.
add_blob() {
    blob_size="$(stat -c %s "$1")"
    blob_digest="sha256:$(sha "$1")"
    mv -f "$1" "$layout/blobs/sha256/${blob_digest#sha256:}"
}

# make_layer NAME STAGEDIR gzip|zstd -> sets layer_desc (JSON descriptor) and layer_diffid.
# tar options pin order, times, owners and format so the bytes depend only on the content;
# gzip -n omits name/time; zstd in single-thread mode from stdin is deterministic.
make_layer() {
    local stage="$2" comp="$3" tarfile="$build/$1.tar" entries mt
    mapfile -t entries < <(cd "$stage" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | LC_ALL=C sort)
    tar -C "$stage" --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -cf "$tarfile" -- "${entries[@]}"
    layer_diffid="sha256:$(sha "$tarfile")"
    case "$comp" in
        gzip)
            gzip -n -9 -c <"$tarfile" >"$tarfile.gz"
            add_blob "$tarfile.gz"
            mt=application/vnd.oci.image.layer.v1.tar+gzip
            ;;
        zstd)
            zstd -q --no-progress -19 -T1 -c <"$tarfile" >"$tarfile.zst"
            add_blob "$tarfile.zst"
            mt=application/vnd.oci.image.layer.v1.tar+zstd
            ;;
    esac
    rm -f "$tarfile"
    layer_desc="{\"mediaType\":\"$mt\",\"digest\":\"$blob_digest\",\"size\":$blob_size}"
}

# make_image REF DIFFIDS_JSON LAYER_DESCS_JSON -> config + manifest blobs; sets manifest_digest,
# and records an index.json entry named REF (skopeo's oci:PATH:REF looks up this annotation).
index_entries=()
declare -A manifest_digests
make_image() {
    local ref="$1" diffids="$2" layers="$3" f="$build/$1"
    printf '%s' "{\"architecture\":\"$arch\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\"config\":{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"sh\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$diffids]}}" >"$f.config.json"
    add_blob "$f.config.json"
    printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$blob_digest\",\"size\":$blob_size},\"layers\":[$layers]}" >"$f.manifest.json"
    add_blob "$f.manifest.json"
    manifest_digests[$ref]="$blob_digest"
    index_entries+=("{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"$blob_digest\",\"size\":$blob_size,\"annotations\":{\"org.opencontainers.image.ref.name\":\"$ref\"}}")
}

# Layer: busybox root filesystem.
s="$build/stage/busybox"
mkdir -p "$s"/{bin,etc,tmp,proc,sys,dev,root,var,home}
chmod 1777 "$s/tmp"
chmod 0700 "$s/root"
cp "$bb" "$s/bin/busybox"
chmod 0755 "$s/bin/busybox"
while IFS= read -r applet; do
    case "$applet" in "" | busybox | */*) continue ;; esac
    ln -s busybox "$s/bin/$applet"
done < <("$bb" --list)
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/home:/bin/false' >"$s/etc/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$s/etc/group"
chmod 0644 "$s/etc/passwd" "$s/etc/group"
make_layer busybox "$s" gzip
bb_desc="$layer_desc" bb_diffid="$layer_diffid"
make_image busybox "\"$bb_diffid\"" "$bb_desc"

# Layer: plain files (zstd) that the next layer deletes or hides.
s="$build/stage/files"
mkdir -p "$s/data" "$s/opaque"
printf 'keep\n' >"$s/data/keep.txt"
printf 'remove\n' >"$s/data/remove.txt"
printf 'old\n' >"$s/opaque/old.txt"
make_layer files "$s" zstd
files_desc="$layer_desc" files_diffid="$layer_diffid"

# Layer: whiteout of data/remove.txt, opaque marker on opaque/ (hides old.txt), new file.
s="$build/stage/whiteouts"
mkdir -p "$s/data" "$s/opaque"
: >"$s/data/.wh.remove.txt"
: >"$s/opaque/.wh..wh..opq"
printf 'new\n' >"$s/opaque/new.txt"
make_layer whiteouts "$s" gzip
wh_desc="$layer_desc" wh_diffid="$layer_diffid"
make_image layered "\"$bb_diffid\",\"$files_diffid\",\"$wh_diffid\"" "$bb_desc,$files_desc,$wh_desc"

entries_json="$(IFS=,; echo "${index_entries[*]}")"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[$entries_json]}" >"$layout/index.json"
rm -rf "$build/stage"

# ---------------------------------------------------------------------------------------------
# start: push and verify
# ---------------------------------------------------------------------------------------------

# --preserve-digests makes skopeo fail instead of silently re-encoding a manifest or layer.
preserve=()
if skopeo copy --help 2>/dev/null | grep -q -- '--preserve-digests'; then
    preserve=(--preserve-digests)
else
    echo "warning: this skopeo has no --preserve-digests; checking the pushed digests instead" >&2
fi

pushed=()
push() {
    local ref="$1" repo="$2" tag="$3" want="${manifest_digests[$1]}" got
    skopeo copy -q "${preserve[@]}" --dest-tls-verify=false \
        --digestfile "$build/digest" \
        "oci:$layout:$ref" "docker://$host:$port/$repo:$tag" ||
        die "skopeo failed to push $repo:$tag"
    # Compare the bytes the registry serves with what we built: proves no re-encoding.
    got="sha256:$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "$base/v2/$repo/manifests/$tag" | sha256sum | cut -d' ' -f1)"
    [ "$got" = "$want" ] ||
        die "registry serves $repo:$tag as $got, expected $want (skopeo digest file: $(cat "$build/digest"))"
    pushed+=("pushed $host:$port/$repo:$tag $got")
}

# sed reads all of busybox's help: closing the pipe early (head) would SIGPIPE busybox and,
# under pipefail, fail the script at random.
bb_version="$(/bin/busybox 2>&1 | sed -n '1s/^BusyBox v\([0-9][0-9.]*\).*/\1/p')" || bb_version=""
push busybox busybox test
[ -n "$bb_version" ] && push busybox busybox "$bb_version"
push busybox busybox latest
push layered layered latest
if ! curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$base/v2/layered/manifests/latest" | grep -q 'application/vnd.oci.image.layer.v1.tar+zstd'; then
    die "layered:latest manifest in the registry has no zstd layer (skopeo or the registry rewrote it)"
fi
rm -f "$build/digest"

printf '%s\n' "${pushed[@]}"
