#!/usr/bin/env bash
# Build both images of the Dockerfile: agentbus:$TAG (the runtime, the default target) and
# agentbus:$TAG-loadtest (the `loadtest` target); print their sizes. `make image` runs this,
# and so do the image tests (tests/image), with IMAGE_ENGINE=buildah.
#
# Engine (IMAGE_ENGINE overrides): docker if `docker info` answers, else podman if `podman info`
# answers, else buildah (chroot isolation: no daemon, no cgroups, no user namespace needed).
#
# Base (PYTHON_IMAGE overrides): python:3.11-slim when the engine has it or can pull it; else a
# Debian bookworm root made here by mmdebstrap from Debian's packages (python3, python3-venv,
# ca-certificates, passwd for useradd, libstdc++6 for the greenlet wheel Locust needs), cached
# as a tarball in $IMAGE_CACHE for a week and imported into the engine once per tarball.
#
# Where pip goes through a TLS-intercepting proxy whose CA is in PIP_CERT (or SSL_CERT_FILE),
# buildah and podman mount that file into the build steps (never into an image).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${TAG:-dev}
NAME=${IMAGE_NAME:-agentbus}
CACHE=${IMAGE_CACHE:-.cache/image}
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates,passwd,libstdc++6
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
OFFICIAL_BASE=docker.io/library/python:3.11-slim

say() { printf 'image: %s\n' "$*" >&2; }

pick_engine() {
	if [ -n "${IMAGE_ENGINE:-}" ]; then
		echo "$IMAGE_ENGINE"
	elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
		echo docker
	elif command -v podman >/dev/null && podman info >/dev/null 2>&1; then
		echo podman
	elif command -v buildah >/dev/null; then
		echo buildah
	else
		say "no engine: docker and podman do not answer and buildah is missing (make system-deps)"
		exit 1
	fi
}

has_image() {
	case $ENGINE in
	buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
	*) "$ENGINE" image inspect "$1" >/dev/null 2>&1 ;;
	esac
}

# The Debian root as a tarball named by what went into it, rebuilt when missing or older than a
# week (security updates).
debian_tarball() {
	local key tarball
	key=$(printf '%s %s %s %s' "$SUITE" "$PACKAGES" "$MIRROR" "$SECURITY_MIRROR" | sha256sum | cut -c1-12)
	tarball=$CACHE/$SUITE-python3-$key.tar
	mkdir -p "$CACHE"
	if [ -z "$(find "$tarball" -mtime -7 2>/dev/null)" ]; then
		command -v mmdebstrap >/dev/null || { say "mmdebstrap is missing (make system-deps)"; exit 1; }
		say "making the base from Debian packages ($SUITE: $PACKAGES) with mmdebstrap"
		# No documentation, manuals or translations: nothing at run time reads them.
		if mmdebstrap --quiet --variant=essential --format=tar --include="$PACKAGES" \
			--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
			--dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
			"$SUITE" "$tarball.part" \
			"deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
			"deb $SECURITY_MIRROR $SUITE-security main" >&2; then
			mv "$tarball.part" "$tarball"
			# Roots made from another package list or mirror are not used any more.
			find "$CACHE" -maxdepth 1 -name "$SUITE-python3-*.tar" ! -name "${tarball##*/}" -delete
		elif [ -f "$tarball" ]; then
			rm -f "$tarball.part"
			say "mmdebstrap failed: keeping the base made $(date -r "$tarball" +%F)"
		else
			exit 1
		fi
	fi
	echo "$tarball"
}

# Import the tarball as an image named after its mtime, so a rebuilt tarball is a new image.
debian_base() {
	local tarball image ctr
	tarball=$(debian_tarball)
	image=localhost/$NAME-python:$SUITE-$(stat -c %Y "$tarball")
	if ! has_image "$image"; then
		say "importing $tarball as $image"
		local path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
		case $ENGINE in
		buildah)
			ctr=$(buildah from scratch)
			buildah add --quiet "$ctr" "$tarball" / >/dev/null
			buildah config --env PATH=$path --env LANG=C.UTF-8 --cmd '["python3"]' "$ctr"
			buildah commit --quiet --rm "$ctr" "$image" >/dev/null
			# The bases of older tarballs: removed unless an image still stands on them.
			buildah images --format '{{.Name}}:{{.Tag}}' "localhost/$NAME-python" | grep -vxF "$image" |
				xargs -r buildah rmi >/dev/null 2>&1 || true
			;;
		*)
			"$ENGINE" import --change "ENV PATH=$path" --change "ENV LANG=C.UTF-8" \
				--change 'CMD ["python3"]' "$tarball" "$image" >/dev/null
			;;
		esac
	fi
	echo "$image"
}

pick_base() {
	if [ -n "${PYTHON_IMAGE:-}" ]; then
		echo "$PYTHON_IMAGE"
	elif has_image "$OFFICIAL_BASE" || "$ENGINE" pull --quiet "$OFFICIAL_BASE" >/dev/null 2>&1; then
		echo "$OFFICIAL_BASE"
	else
		say "$OFFICIAL_BASE cannot be pulled"
		debian_base
	fi
}

ENGINE=$(pick_engine)
BASE=$(pick_base)
say "engine $ENGINE, base $BASE"

args=(--build-arg "PYTHON_IMAGE=$BASE")
case $ENGINE in
buildah) build=(buildah bud --isolation chroot --layers) ;;
*) build=("$ENGINE" build) ;;
esac
ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
if [ -n "$ca" ] && [ -f "$ca" ] && [ "$ENGINE" != docker ]; then
	args+=(--volume "$(realpath "$ca"):/run/build-ca.crt:ro")
fi

log=$CACHE/build.log
mkdir -p "$CACHE"
: >"$log"
all_images() { [ "$ENGINE" != buildah ] || buildah images -a -q --no-trunc | sort; }
before=$(all_images)
start=$(date +%s)
for target in loadtest runtime; do
	tag=$NAME:$TAG$([ $target = runtime ] || echo "-$target")
	"${build[@]}" "${args[@]}" --target $target -t "$tag" . 2>&1 | tee -a "$log" >&2
done
say "built $NAME:$TAG and $NAME:$TAG-loadtest in $(($(date +%s) - start)) s"

# buildah --layers keeps every step as an image, the cache of the next build. Remember the
# ones these builds made, and drop those that neither build used nor any tag names, so that
# rebuilds do not fill the disk; other projects' images are never touched.
if [ "$ENGINE" = buildah ]; then
	ours=$CACHE/buildah-images
	comm -13 <(printf '%s\n' "$before") <(all_images) | sed 's/^sha256://' >>"$ours"
	used=$( (grep -oE '^--> (Using cache )?[0-9a-f]{11,}' "$log" | awk '{print $NF}'
		buildah images --no-trunc --format '{{.ID}} {{.Name}}' | awk '$2 != "<none>" {print $1}' |
			sed 's/^sha256://') | sort -u)
	stale=$(sort -u "$ours" | grep -v -F -f <(printf '%s\n' "$used") || true)
	while [ -n "$stale" ]; do # a child first, then its parent
		# shellcheck disable=SC2086
		buildah rmi $stale >/dev/null 2>&1 || true
		left=$(comm -12 <(printf '%s\n' "$stale") <(all_images | sed 's/^sha256://'))
		[ "$left" != "$stale" ] || break
		stale=$left
	done
	comm -12 <(sort -u "$ours") <(all_images | sed 's/^sha256://') >"$ours.new" && mv "$ours.new" "$ours"
fi

for image in "$NAME:$TAG" "$NAME:$TAG-loadtest"; do
	case $ENGINE in
	buildah) size=$(buildah images --format '{{.Size}}' "$image") ;;
	*) size=$("$ENGINE" image inspect --format '{{.Size}}' "$image" | numfmt --to=si --suffix=B) ;;
	esac
	printf '%-28s %s\n' "$image" "$size"
done
