#!/usr/bin/env bash
# The container engine corral's tests and benchmarks use: a private dockerd (no bridge, no NAT,
# no iptables; gVisor's runsc registered as a runtime) and the sandbox image, built from a
# debootstrap root file system because no image registry is reachable.
# runsc runs on the ptrace platform (no KVM here), with no network of its own (corral's relay is
# the only way out) and allowed to connect to the proxy's Unix socket that corral mounts in.
#
#   scripts/engine.sh start   start dockerd on its private socket unless it already answers
#   scripts/engine.sh image   build the image unless the engine has it
#   scripts/engine.sh stop    stop that dockerd (by its pid file)
#   scripts/engine.sh host    print the DOCKER_HOST of the engine
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

answers() { DOCKER_HOST=$HOST docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
	answers && return 0
	mkdir -p "$RUN_DIR" "$DATA_DIR"
	chmod 0700 "$RUN_DIR"
	cat >"$RUN_DIR/daemon.json" <<JSON
{"runtimes": {"runsc": {"path": "$(command -v runsc || echo /usr/bin/runsc)", "runtimeArgs": ["--platform=ptrace", "--network=none", "--fsgofer-host-uds"]}}}
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

image() {
	start
	DOCKER_HOST=$HOST docker image inspect "$IMAGE" >/dev/null 2>&1 && return 0
	if [ ! -s "$ROOTFS_TAR" ]; then
		local root
		root=$(mktemp -d "${TMPDIR:-/tmp}/corral-rootfs.XXXXXX")
		echo "building the $SUITE root file system with debootstrap (about a minute)"
		debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$(mirror)" >"$root.log" 2>&1 ||
			{ tail -20 "$root.log" >&2; rm -rf "$root" "$root.log"; return 1; }
		rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
		mkdir -p "$(dirname "$ROOTFS_TAR")"
		tar -C "$root" -cf "$ROOTFS_TAR.part" . && mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
		rm -rf "$root" "$root.log"
	fi
	DOCKER_HOST=$HOST docker import --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$IMAGE" >/dev/null
	echo "built the image $IMAGE"
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
stop) stop ;;
host) echo "$HOST" ;;
*) echo "usage: $0 start|image|stop|host" >&2; exit 2 ;;
esac
