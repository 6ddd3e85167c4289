#!/usr/bin/env bash
# The container engines corral's tests and benchmarks use: a private dockerd (no bridge, no NAT,
# no iptables; gVisor's runsc registered as a runtime), podman where it is installed, and the
# sandbox image in both, built from a debootstrap root file system because no image registry is
# reachable.
# runsc runs on the ptrace platform (no KVM here), with no network of its own (corral's relay is
# the only way out), allowed to connect to the proxy's Unix socket that corral mounts in, and with
# --oci-seccomp, so corral's seccomp profile applies inside gVisor (corral refuses runsc without it).
# podman keeps its own storage (/var/lib/containers as root) and runs with the tests' containers.conf
# (CONTAINERS_CONF): runc, never crun (which refuses hybrid cgroups), and default ulimits within the
# hard limits of a root that lacks CAP_SYS_RESOURCE (podman's own defaults exceed them).
#
#   scripts/engine.sh start         start dockerd on its private socket unless it already answers
#   scripts/engine.sh image         build the image unless the engine has it (and import it into podman)
#   scripts/engine.sh podman-image  import the image into podman unless it has it
#   scripts/engine.sh stop          stop that dockerd (by its pid file)
#   scripts/engine.sh host          print the DOCKER_HOST of the engine
#   scripts/engine.sh podman-conf   write the tests' containers.conf if needed and print its path
#
# Every step is skipped when what it makes is already there.
set -euo pipefail

RUN_DIR=${CORRAL_ENGINE_RUN:-/run/corral-engine}
DATA_DIR=${CORRAL_ENGINE_DATA:-/var/lib/corral-engine}
IMAGE=${CORRAL_ENGINE_IMAGE:-corral-sandbox:bookworm}
ROOTFS_TAR=${CORRAL_ENGINE_ROOTFS:-tools/rootfs-bookworm.tar}
SUITE=bookworm
# what agents and the escape tests run inside: the Claude Code CLI needs node, the attacks python3
PACKAGES=python3,nodejs,git,socat,curl,ca-certificates,procps,openssh-client
HOST="unix://$RUN_DIR/docker.sock"
PODMAN_CONF=${CORRAL_ENGINE_PODMAN_CONF:-$RUN_DIR/containers.conf}
# podman's highest working limits here: the hard nofile of root, and conmon's hard nproc
PODMAN_NOFILE=$(ulimit -Hn)
if [ "$PODMAN_NOFILE" = unlimited ] || [ "$PODMAN_NOFILE" -gt 1048576 ]; then PODMAN_NOFILE=1048576; fi
PODMAN_NPROC=32768

answers() { DOCKER_HOST=$HOST docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
	answers && return 0
	mkdir -p "$RUN_DIR" "$DATA_DIR"
	chmod 0700 "$RUN_DIR"
	cat >"$RUN_DIR/daemon.json" <<JSON
{"runtimes": {"runsc": {"path": "$(command -v runsc || echo /usr/bin/runsc)", "runtimeArgs": ["--platform=ptrace", "--network=none", "--fsgofer-host-uds", "--oci-seccomp"]}}}
JSON
	dockerd --host "$HOST" --data-root "$DATA_DIR" --exec-root "$RUN_DIR/exec" \
		--pidfile "$RUN_DIR/dockerd.pid" --config-file "$RUN_DIR/daemon.json" \
		--iptables=false --ip-forward=false --ip-masq=false --bridge=none \
		>"$RUN_DIR/dockerd.log" 2>&1 </dev/null &
	for _ in $(seq 100); do
		answers && { echo "dockerd answers on $HOST"; return 0; }
		sleep 0.1
	done
	echo "dockerd did not start; its log:" >&2
	tail -20 "$RUN_DIR/dockerd.log" >&2
	return 1
}

mirror() {
	# the Debian mirror apt already uses (deb822 sources first, then sources.list)
	local uri
	uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
	[ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
	[ -n "$uri" ] || { echo "no Debian mirror is configured for apt; add one to /etc/apt/sources.list" >&2; return 1; }
	echo "$uri"
}

rootfs() {
	[ -s "$ROOTFS_TAR" ] && return 0
	local root
	root=$(mktemp -d "${TMPDIR:-/tmp}/corral-rootfs.XXXXXX")
	echo "building the $SUITE root file system with debootstrap (about a minute)"
	debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$(mirror)" >"$root.log" 2>&1 ||
		{ tail -20 "$root.log" >&2; rm -rf "$root" "$root.log"; return 1; }
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
	mkdir -p "$(dirname "$ROOTFS_TAR")"
	tar -C "$root" -cf "$ROOTFS_TAR.part" . && mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
	rm -rf "$root" "$root.log"
}

image() {
	start
	if ! DOCKER_HOST=$HOST docker image inspect "$IMAGE" >/dev/null 2>&1; then
		rootfs
		DOCKER_HOST=$HOST docker import --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$IMAGE" >/dev/null
		echo "built the image $IMAGE"
	fi
	if command -v podman >/dev/null; then podman_image; fi
}

podman_conf() {
	local text
	text=$(printf '%s\n' "[containers]" \
		"default_ulimits = [\"nofile=$PODMAN_NOFILE:$PODMAN_NOFILE\", \"nproc=$PODMAN_NPROC:$PODMAN_NPROC\"]" \
		"[engine]" "runtime = \"runc\"")
	[ "$(cat "$PODMAN_CONF" 2>/dev/null)" = "$text" ] && return 0
	mkdir -p "$(dirname "$PODMAN_CONF")"
	printf '%s\n' "$text" >"$PODMAN_CONF.part" && mv "$PODMAN_CONF.part" "$PODMAN_CONF"
}

podman_image() {
	command -v podman >/dev/null || { echo "podman is not installed; make system installs it" >&2; return 1; }
	podman_conf
	CONTAINERS_CONF=$PODMAN_CONF podman image exists "$IMAGE" && return 0
	rootfs
	CONTAINERS_CONF=$PODMAN_CONF podman import --quiet --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$IMAGE" >/dev/null
	echo "imported the image $IMAGE into podman"
}

stop() {
	[ -s "$RUN_DIR/dockerd.pid" ] || return 0
	local pid
	pid=$(cat "$RUN_DIR/dockerd.pid")
	kill "$pid" 2>/dev/null || return 0
	for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
	echo "dockerd ($pid) did not stop within 10 s" >&2
	return 1
}

case "${1:-}" in
start) start ;;
image) image ;;
podman-image) podman_image ;;
stop) stop ;;
host) echo "$HOST" ;;
podman-conf) podman_conf && echo "$PODMAN_CONF" ;;
*) echo "usage: $0 start|image|podman-image|stop|host|podman-conf" >&2; exit 2 ;;
esac
