#!/usr/bin/env bash
# `make lock`: regenerate the two locks with uv (a maintained resolver, installed on first use into
# build/lock-tools, never into .venv) and print what changed, package by package.
#   requirements.lock             dynrcnn + extras test, fast   (from pyproject.toml)
#   peer_mmdet/requirements.lock  the MMDetection peer layer    (from peer_mmdet/requirements.txt,
#                                 runtime.txt, overrides.txt; shared packages held to requirements.lock)
# Both are for Linux x86-64 (manylinux_2_28) and CPython 3.11.7, with hashes.
#   make lock                        re-resolve, keeping every locked version that still fits
#                                    (after an edit of pyproject.toml or peer_mmdet/*.txt)
#   make lock UPGRADE="numpy pillow" move those packages to their newest fitting release
#   make lock UPGRADE=all            move everything but torch/torchvision, which stay a locked
#                                    pair until named: UPGRADE="torch torchvision"
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TOOLS=${LOCK_TOOLS:-build/lock-tools}
PYTHON=${PYTHON:-python3}
UPGRADE=${UPGRADE:-}
if ! "$TOOLS/bin/uv" --version 2>/dev/null | grep -q "^uv $UV_VERSION "; then
    "$PYTHON" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
UV="$TOOLS/bin/uv"
PLATFORM=(--python-version 3.11.7 --python-platform x86_64-manylinux_2_28)
COMMON=(--no-config --generate-hashes --custom-compile-command "make lock" "${PLATFORM[@]}")
SHOWN="uv $UV_VERSION: uv pip compile --generate-hashes ${PLATFORM[*]}"

upgrade=()
case "$UPGRADE" in
    "") ;;
    all)
        # hold the torch/torchvision pair (pip on the project's machines is capped at 2.14.1/0.29.1)
        mkdir -p build
        grep -E '^(torch|torchvision)==' requirements.lock | sed 's/ .*//' > build/lock-hold.txt
        upgrade=(--upgrade -c build/lock-hold.txt) ;;
    *) for p in $UPGRADE; do upgrade+=(--upgrade-package "$p"); done ;;
esac

header() {  # header FILE TEXT...: put the platform note above uv's own header
    local file=$1; shift
    { printf '# %s\n' "$@"; cat "$file"; } > "$file.tmp" && mv "$file.tmp" "$file"
}

old=$(mktemp -d)
trap 'rm -rf "$old"' EXIT
cp requirements.lock "$old/main" 2>/dev/null || : > "$old/main"
cp peer_mmdet/requirements.lock "$old/peer" 2>/dev/null || : > "$old/peer"

"$UV" pip compile -q "${COMMON[@]}" "${upgrade[@]}" pyproject.toml --extra test --extra fast \
    -o requirements.lock
header requirements.lock \
    "The locked environment of the report of record: dynrcnn with its extras test and fast." \
    "Covers Linux x86-64 (manylinux_2_28: glibc >= 2.28) with CPython 3.11 (resolved for 3.11.7;" \
    "soupsieve needs >= 3.11.5). Not macOS, Windows, aarch64 or another Python: there, install" \
    "the package's ranges instead (pip install -e '.[test,fast]'). make installs this file, then" \
    "dynrcnn itself with --no-deps; make lock rewrites it (docs/environment.md)." \
    "$SHOWN pyproject.toml --extra test --extra fast -o requirements.lock"

# the peer layer: the same versions as requirements.lock wherever the two share a package
"$UV" pip compile -q "${COMMON[@]}" "${upgrade[@]}" peer_mmdet/requirements.txt peer_mmdet/runtime.txt \
    -c requirements.lock --overrides peer_mmdet/overrides.txt -o peer_mmdet/requirements.lock
header peer_mmdet/requirements.lock \
    "The locked MMDetection peer layer (.venv-mmdet, on top of .venv): mmdet, mmengine, mmcv-lite and" \
    "what they import, closed, so peer_mmdet/build_env.sh installs it with --no-deps. Same platform" \
    "as requirements.lock (Linux x86-64, CPython 3.11.7); shared packages pinned to its versions." \
    "$SHOWN" \
    "  peer_mmdet/requirements.txt peer_mmdet/runtime.txt -c requirements.lock" \
    "  --overrides peer_mmdet/overrides.txt -o peer_mmdet/requirements.lock"

"$PYTHON" - "$old/main" requirements.lock "$old/peer" peer_mmdet/requirements.lock <<'PY'
import re, sys

def pins(path):
    text = open(path).read()
    return {re.sub(r"[-_.]+", "-", m[0]).lower(): m[1] for m in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", text, re.M)}

for before, after in ((sys.argv[1], sys.argv[2]), (sys.argv[3], sys.argv[4])):
    a, b = pins(before), pins(after)
    changes = [f"  {n} {a.get(n, '(new)')} -> {b.get(n, '(removed)')}" for n in sorted(a.keys() | b.keys())
               if a.get(n) != b.get(n)]
    print(f"{after}: {len(b)} packages, " + (f"{len(changes)} changed:" if changes else "no version changed"))
    print("\n".join(changes)) if changes else None
PY
