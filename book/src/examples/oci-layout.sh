#!/bin/sh
# Writes an OCI image layout by hand: [CONFIG=JSON] oci-layout.sh DIR LAYER.tar...
# (layers bottom first; CONFIG, the "config" object of the image config).
# Every file that index.json and the manifest name is a blob, stored under
# its SHA-256 digest and listed with its size.
set -eu
dir=$1; shift
mkdir -p "$dir/blobs/sha256"

# Stores a file as a blob, and sets $hash and $descriptor (less the mediaType).
blob() {
    hash=$(sha256sum "$1" | cut -d' ' -f1)
    cp "$1" "$dir/blobs/sha256/$hash"
    descriptor=$(printf '"digest": "sha256:%s", "size": %s' "$hash" "$(stat -c %s "$1")")
}

layers="" diff_ids=""
for tar in "$@"; do
    blob "$tar"
    layers="$layers${layers:+, }{\"mediaType\": \"application/vnd.oci.image.layer.v1.tar\", $descriptor}"
    diff_ids="$diff_ids${diff_ids:+, }\"sha256:$hash\""  # of the tar uncompressed: the same here
done

# The config: the platform, the layers' own digests, and what `run` uses when
# it is given no command (Cmd, Env, ...: steps 07 to 09 read only the layers,
# step 10 reads these too). $CONFIG, if set, replaces the default.
[ -n "${CONFIG:-}" ] || CONFIG='{"Cmd": ["/bin/sh"]}'
printf '{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [%s]},
 "config": %s}\n' "$diff_ids" "$CONFIG" > "$dir/config.json"
blob "$dir/config.json"; rm "$dir/config.json"
config=$descriptor

printf '{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
 "config": {"mediaType": "application/vnd.oci.image.config.v1+json", %s},
 "layers": [%s]}\n' "$config" "$layers" > "$dir/manifest.json"
blob "$dir/manifest.json"; rm "$dir/manifest.json"

printf '{"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", %s}]}\n' \
    "$descriptor" > "$dir/index.json"
printf '{"imageLayoutVersion": "1.0.0"}\n' > "$dir/oci-layout"
