#!/bin/sh
# Build Cove.app and Cove-<version>-<arch>.dmg on macOS (not run on the Linux build machine;
# see .github/workflows/package.yml).
#
#   installers/macos/build.sh IMAGE_DIR [OUT_DIR]
#
# IMAGE_DIR is a built guest image for this Mac's architecture (arm64 on Apple silicon),
# made on Linux by `cove image build --arch arm64` and passed in (the workflow carries it
# as an artifact): the image builder needs Linux (mmdebstrap, chroot).
#
# Environment:
#   VERSION                   the version (default: desktop/__init__.py's __version__)
#   CODESIGN_IDENTITY         a "Developer ID Application: ..." identity in the keychain;
#                             unset: the app is ad-hoc signed (runs on the building Mac;
#                             elsewhere Gatekeeper asks the user to allow it)
#   NOTARY_PROFILE            a `xcrun notarytool store-credentials` profile: notarize
#                             and staple the .dmg (needs CODESIGN_IDENTITY)
#   PYTHON                    the Python with Cove's dependencies (default: python3)
#
# QEMU is not carried in Cove.app: it comes from Homebrew (`brew install qemu`, whose
# qemu-system-aarch64 is signed with the hypervisor entitlement HVF needs) or MacPorts.
# The app adds /opt/homebrew/bin, /usr/local/bin and /opt/local/bin to its PATH and the
# QEMU driver checks for qemu-system-* at each start, naming the fix when it is missing.
set -eu
image=${1:?usage: installers/macos/build.sh IMAGE_DIR [OUT_DIR]}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${2:-$repo/build/macos}
python=${PYTHON:-python3}
case $(uname -m) in arm64) arch=arm64 ;; x86_64) arch=amd64 ;; *) echo "unsupported Mac: $(uname -m)" >&2; exit 1 ;; esac
version=${VERSION:-$("$python" -c 'import re,sys; print(re.search(r"__version__ = \"([^\"]+)\"", open(sys.argv[1]).read()).group(1))' "$repo/desktop/__init__.py")}

[ "$(uname -s)" = Darwin ] || { echo "build.sh builds Cove.app on macOS only" >&2; exit 1; }
"$python" -m PyInstaller --version >/dev/null 2>&1 || {
    echo "PyInstaller is missing: $python -m pip install -e '$repo[package]'" >&2; exit 1; }

export COVE_CODESIGN_IDENTITY="${CODESIGN_IDENTITY:-}"
export COVE_ENTITLEMENTS="$here/entitlements.plist"
app=$("$python" "$repo/installers/bundle/build.py" --out "$out" --version "$version" \
      --arch "$arch" --image "$image")
[ -d "$app" ] && [ "$(basename "$app")" = Cove.app ] || {
    echo "PyInstaller made no Cove.app (got $app)" >&2; exit 1; }

# The image was added to Contents/Resources after PyInstaller signed the app: sign again,
# inside out (nested code first), with the hardened runtime when signing for real.
if [ -n "${CODESIGN_IDENTITY:-}" ]; then
    set -- --force --timestamp --options runtime --entitlements "$here/entitlements.plist" \
        --sign "$CODESIGN_IDENTITY"
else
    set -- --force --sign -
fi
find "$app/Contents" -type f \( -name '*.dylib' -o -name '*.so' \) -exec codesign "$@" {} +
codesign "$@" "$app/Contents/MacOS/cove"
codesign "$@" "$app"
codesign --verify --strict --deep "$app"

# The .dmg: the app and a link to /Applications, compressed.
stage="$out/dmg"
rm -rf "$stage" && mkdir -p "$stage"
ditto "$app" "$stage/Cove.app"
ln -s /Applications "$stage/Applications"
dmg="$out/Cove-$version-$arch.dmg"
rm -f "$dmg"
hdiutil create -volname "Cove $version" -srcfolder "$stage" -fs HFS+ -format UDZO -ov "$dmg" >/dev/null
if [ -n "${CODESIGN_IDENTITY:-}" ]; then
    codesign --force --timestamp --sign "$CODESIGN_IDENTITY" "$dmg"
    if [ -n "${NOTARY_PROFILE:-}" ]; then
        xcrun notarytool submit "$dmg" --keychain-profile "$NOTARY_PROFILE" --wait
        xcrun stapler staple "$dmg"
    fi
fi

# Figures: sizes and the start time of `cove version` from the built app.
t0=$("$python" -c 'import time; print(time.monotonic())')
"$app/Contents/MacOS/cove" version
t1=$("$python" -c 'import time; print(time.monotonic())')
echo "Cove.app: $(du -sh "$app" | cut -f1), $(basename "$dmg"): $(du -h "$dmg" | cut -f1), cove version: $("$python" -c "print(round($t1 - $t0, 2))") s"
echo "$dmg"
