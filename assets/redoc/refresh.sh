#!/usr/bin/env bash
# Re-vendors Redoc's standalone bundle from the npm registry: `bash assets/redoc/refresh.sh 2.5.4`
# (default: the version in VERSION). Needs npm. Writes the bundle gzip-compressed (the binary
# embeds only that), its third-party licence notices, Redoc's LICENSE and VERSION, and prints the
# bundle's SHA-256 for README.md. Then: rebuild, `cargo test --test api docs_page`, and read
# /docs in a browser.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=${1:-$(cat "$here/VERSION")}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "redoc@$version" >/dev/null)
tar -xzf "$work/redoc-$version.tgz" -C "$work"
bundle="$work/package/bundles/redoc.standalone.js"
# -n: no file name or time stamp in the header, so the same bundle gives the same bytes.
gzip -9 -n -c "$bundle" > "$here/redoc.standalone.js.gz"
cp "$work/package/bundles/redoc.standalone.js.LICENSE.txt" "$here/THIRD-PARTY-NOTICES.txt"
cp "$work/package/LICENSE" "$here/LICENSE"
echo "$version" > "$here/VERSION"
echo "redoc $version: $(wc -c < "$bundle") bytes, $(wc -c < "$here/redoc.standalone.js.gz") gzipped"
echo "sha256 $(sha256sum "$bundle" | cut -d' ' -f1)"
