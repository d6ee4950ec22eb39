#!/usr/bin/env bash
# Make sure a Docker engine answers and the test image exists; safe to run any number of times.
#
#   bash scripts/docker-engine.sh
#
# - DOCKER_HOST set: that engine is only checked (never started here); the image is built on it
#   if it lacks it.
# - Otherwise, if `docker info` fails: installs docker.io and busybox-static with apt-get when
#   dockerd is missing (needs root), starts dockerd in the background (vfs storage, no iptables,
#   no bridge: works inside containers and VMs without extra kernel setup) and waits for it.
# - Builds the image (default local/busybox:latest, or $CONTAINER_MANAGER_TEST_IMAGE) from the
#   static busybox binary with `docker import`; nothing is pulled (there may be no registry).
#
# Prints one line saying what it did; exits non-zero with a reason when it cannot.

set -euo pipefail

IMAGE="${CONTAINER_MANAGER_TEST_IMAGE:-local/busybox:latest}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
DOCKERD_PIDFILE="${DOCKERD_PIDFILE:-/var/run/docker.pid}"
# An engine that ran many containers cleans their network sandboxes up when it starts again,
# about 0.1 s each: after a day of tests that can take minutes.
WAIT_SECONDS="${DOCKER_ENGINE_WAIT_SECONDS:-600}"
# Applets the tests rely on; every other applet busybox has is linked too.
REQUIRED_APPLETS="sh echo cat sleep env head tail dd yes printf ls true false kill tr wc seq"

did=()

die() {
    echo "docker-engine.sh: error: $*" >&2
    exit 1
}

engine_up() {
    command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
}

is_root() {
    [ "$(id -u)" -eq 0 ]
}

apt_install() {
    is_root || die "cannot install $* (apt-get needs root); install them or run this script as root"
    command -v apt-get >/dev/null 2>&1 || die "cannot install $*: apt-get not found (not Debian?)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
    did+=("installed $*")
}

# A statically linked busybox: the image has no libc, so a dynamic one would not start.
static_busybox() {
    local candidate
    for candidate in /bin/busybox /usr/bin/busybox; do
        [ -x "$candidate" ] || continue
        if ! command -v ldd >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
        # ldd exits 1 for a static binary: capture its answer instead of piping it (pipefail).
        case "$(ldd "$candidate" 2>&1 || true)" in
            *"not a dynamic executable"* | *"statically linked"*)
                echo "$candidate"
                return 0
                ;;
        esac
    done
    return 1
}

# A dockerd that owns the default pidfile is alive (perhaps still starting): never start another.
dockerd_running() {
    local pid
    pid="$(cat "$DOCKERD_PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = dockerd ]
}

wait_for_engine() {
    local deadline=$((SECONDS + WAIT_SECONDS)) said=""
    until engine_up; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        if [ -z "$said" ] && [ "$SECONDS" -ge $((deadline - WAIT_SECONDS + 10)) ]; then
            echo "docker-engine.sh: waiting for dockerd to start (log: $DOCKERD_LOG)" >&2
            said=1
        fi
        sleep 0.2
    done
}

ensure_engine() {
    if [ -n "${DOCKER_HOST:-}" ]; then
        command -v docker >/dev/null 2>&1 || apt_install docker.io
        engine_up || die "no Docker engine answers at DOCKER_HOST=$DOCKER_HOST (not starting one" \
            "for a DOCKER_HOST; unset it to use a local engine): $(docker info 2>&1 | tail -n 1)"
        did+=("engine at $DOCKER_HOST is up")
        return
    fi
    if engine_up; then
        did+=("engine already running")
        return
    fi
    if command -v docker >/dev/null 2>&1; then
        local why
        why="$(docker info 2>&1 >/dev/null | tail -n 1 || true)"
        case "$why" in
            *"permission denied"*)
                die "an engine runs but this user may not use it ($why);" \
                    "add the user to the docker group or run as root"
                ;;
        esac
    fi
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
        apt_install docker.io busybox-static
    fi
    if dockerd_running; then
        # Started by someone else (or a previous run) and still coming up: just wait for it.
        did+=("waited for the running dockerd")
    else
        is_root || die "no Docker engine answers and starting dockerd needs root;" \
            "run this script as root or start the engine yourself"
        mkdir -p "$(dirname "$DOCKERD_LOG")"
        # setsid + nohup: the daemon outlives this script and the shell that ran it.
        setsid nohup dockerd --storage-driver=vfs --iptables=false --bridge=none \
            >>"$DOCKERD_LOG" 2>&1 </dev/null &
        did+=("started dockerd (log: $DOCKERD_LOG)")
    fi
    wait_for_engine || die "the Docker engine did not answer within ${WAIT_SECONDS}s" \
        "($(docker info 2>&1 >/dev/null | tail -n 1 || true)); dockerd's log, $DOCKERD_LOG," \
        "ends with: $(tail -n 3 "$DOCKERD_LOG" 2>/dev/null | tr '\n' ' ')"
}

ensure_image() {
    if docker image inspect "$IMAGE" >/dev/null 2>&1; then
        did+=("image $IMAGE present")
        return
    fi
    local busybox
    if ! busybox="$(static_busybox)"; then
        apt_install busybox-static
        busybox="$(static_busybox)" || die "no statically linked busybox found after installing" \
            "busybox-static"
    fi
    local root
    root="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: $root is local
    trap "rm -rf '$root'" EXIT
    # mktemp -d makes the directory 0700; as the image's / that would lock out every user but
    # root (a job with run_as_user could not even find /bin/sh).
    chmod 755 "$root"
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root"
    chmod 1777 "$root/tmp"
    cp "$busybox" "$root/bin/busybox"
    local applet
    for applet in $REQUIRED_APPLETS $("$busybox" --list 2>/dev/null || true); do
        [ "$applet" = busybox ] || [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' \
        >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/bin' \
        --change 'CMD ["sh"]' \
        - "$IMAGE" >/dev/null || die "docker import of $IMAGE failed"
    did+=("built image $IMAGE from $busybox")
}

# The tests' private registry (basic auth on 127.0.0.1): Debian's docker-registry and htpasswd.
ensure_registry_tools() {
    if command -v docker-registry >/dev/null 2>&1 && command -v htpasswd >/dev/null 2>&1; then
        return
    fi
    if is_root && command -v apt-get >/dev/null 2>&1; then
        apt_install docker-registry apache2-utils
    else
        did+=("no docker-registry/htpasswd: the private-registry tests will not run")
    fi
}

ensure_engine
ensure_image
ensure_registry_tools
summary="$(printf '%s; ' "${did[@]}")"
echo "docker-engine.sh: ${summary%; }"
