#!/usr/bin/env bash
# fetch_upstream.sh - prepares bench/upstream/ for bench/gpu.sh, on this machine, before the
# device call. bench/upstream/ is ignored by git (.gitignore) and must never be committed.
#
#   bash bench/fetch_upstream.sh [--mirror GITDIR] [--rev REV] [--no-prebuilt]
#
# 1. Exports FoundationVision/LlamaGen at REV (default HEAD) from a bare git mirror
#    (default $LLAMAGEN_MIRROR, else /work/.mirror/FoundationVision+LlamaGen/repo) into
#    bench/upstream/LlamaGen. Files whose blobs the mirror lacks (assets/teaser.jpg) are left
#    out and listed; none of them is code. The commit is written to
#    bench/upstream/LlamaGen/.tessera-export.
# 2. Unless --no-prebuilt: builds tessera, tests/test_cuda (when tests/test_cuda.c exists) and
#    gpu_generate here with CUDA=1 in build/gpu-pack/ (`bash bench/gpu.sh --build-only`; this
#    machine has nvcc but no GPU, which the build does not need) and packs them, with the
#    shared libraries they need apart from glibc, libstdc++, libgcc and CUDA's, into
#    bench/upstream/prebuilt.tar.gz. bench/gpu.sh builds on the device machine when that
#    machine has Tessera's C build dependencies (libjansson, libpng, libmicrohttpd, libuv,
#    OpenBLAS, check), and otherwise runs these binaries; it refuses them when the sources
#    changed after they were built (a hash of the C/CUDA sources is stored with them), so
#    run this script again after every change to the engine.
#
# Prints the `carry` list for the device tool's call at the end. Environment: CUDA=0 packs
# a build without the CUDA backend (only to try the packing; gpu.sh refuses such a pack).
set -euo pipefail

MIRROR=${LLAMAGEN_MIRROR:-/work/.mirror/FoundationVision+LlamaGen/repo}
REV=HEAD
PREBUILT=1
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --mirror) [ $# -ge 2 ] || { echo "fetch_upstream.sh: --mirror needs a value" >&2; exit 2; }; MIRROR=$2; shift 2 ;;
    --rev) [ $# -ge 2 ] || { echo "fetch_upstream.sh: --rev needs a value" >&2; exit 2; }; REV=$2; shift 2 ;;
    --no-prebuilt) PREBUILT=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "fetch_upstream.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
die() { echo "fetch_upstream.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

DEST=bench/upstream
git check-ignore -q "$DEST/LlamaGen/x" 2>/dev/null ||
    die "$DEST/ is not ignored by git; add 'bench/upstream/' to .gitignore first (it must never be committed)"

# --- 1. the upstream code -----------------------------------------------------------------
[ -d "$MIRROR" ] || die "no LlamaGen mirror at $MIRROR (give --mirror GITDIR or LLAMAGEN_MIRROR)"
G=(git --git-dir="$MIRROR")
COMMIT=$("${G[@]}" rev-parse --verify "$REV^{commit}" 2>/dev/null) || die "$MIRROR has no commit '$REV'"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

KEEP=() MISSING=()
while IFS= read -r -d '' entry; do
    meta=${entry%%$'\t'*} path=${entry#*$'\t'}
    read -r _mode type obj <<<"$meta"
    [ "$type" = blob ] || continue
    if "${G[@]}" cat-file -e "$obj" 2>/dev/null; then KEEP+=("$path"); else MISSING+=("$path"); fi
done < <("${G[@]}" ls-tree -r --full-tree -z "$COMMIT")
[ ${#KEEP[@]} -gt 0 ] || die "the mirror's tree at $COMMIT holds no readable file"

rm -rf "$DEST/LlamaGen"
mkdir -p "$DEST/LlamaGen"
# (git archive still names the absent blobs on stderr; its exit status is what counts.)
"${G[@]}" --literal-pathspecs archive --format=tar "$COMMIT" -- "${KEEP[@]}" 2>"$TMP/archive.err" |
    tar -x -C "$DEST/LlamaGen" || die "git archive failed: $(cat "$TMP/archive.err")"
for f in autoregressive/models/generate.py autoregressive/models/gpt.py \
    tokenizer/tokenizer_image/vq_model.py utils/drop_path.py; do
    [ -f "$DEST/LlamaGen/$f" ] || die "the export lacks $f"
done
{
    echo "commit=$COMMIT"
    echo "mirror=$MIRROR"
    echo "exported=$(date -u '+%Y-%m-%dT%H:%M:%SZ')"
    echo "left_out=${MISSING[*]:-}"
} >"$DEST/LlamaGen/.tessera-export"
log "exported LlamaGen $COMMIT: ${#KEEP[@]} files into $DEST/LlamaGen"
[ ${#MISSING[@]} -eq 0 ] || log "left out (blob absent from the mirror): ${MISSING[*]}"

# --- 2. binaries for a device machine without the C build dependencies -----------------------
STATUS=0
rm -f "$DEST/prebuilt.tar.gz"
if [ "$PREBUILT" = 1 ]; then
    CUDA_FLAG=${CUDA:-1}
    # Its own build folder (inside the ignored build/), so that the CUDA setting of build/
    # itself is left alone.
    BD=build/gpu-pack
    log "building with CUDA=$CUDA_FLAG into $BD for the device machine (bash bench/gpu.sh --build-only)"
    if CUDA=$CUDA_FLAG BUILD_DIR=$BD MAKE_JOBS=${MAKE_JOBS:-$(nproc)} bash bench/gpu.sh --build-only >&2; then
        P=$TMP/prebuilt
        mkdir -p "$P/bin" "$P/lib"
        cp "$BD/tessera" "$BD/gpu_generate" "$P/bin/"
        [ ! -x "$BD/tests/test_cuda" ] || cp "$BD/tests/test_cuda" "$P/bin/"
        # The libraries the binaries load, except the C runtime (the device machine's own,
        # newer or equal) and CUDA's (the device machine has CUDA 13: the toolkit or torch's).
        for b in "$P"/bin/*; do
            ldd "$b" | awk '/=> \// { print $1, $3 }'
        done | sort -u | while read -r name path; do
            case "$name" in
            linux-vdso* | ld-linux* | libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | \
                libgcc_s.so* | libstdc++.so* | libcuda.so* | libcudart.so* | libcublas*.so* | libnvidia*) ;;
            *) cp -L "$path" "$P/lib/$name" ;;
            esac
        done
        {
            echo "source_hash=$(bash bench/gpu.sh --print-source-hash)"
            echo "git_rev=$(git describe --always --dirty 2>/dev/null || echo unknown)"
            echo "built=$(date -u '+%Y-%m-%dT%H:%M:%SZ')"
            echo "cuda=$CUDA_FLAG"
            echo "host=$(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -1)"
            echo "nvcc=$(nvcc --version 2>/dev/null | tail -1 || echo none)"
            echo "binaries=$(cd "$P/bin" && echo *)"
            echo "libs=$(cd "$P/lib" && echo *)"
        } >"$P/MANIFEST"
        tar -czf "$DEST/prebuilt.tar.gz" -C "$TMP" prebuilt
        log "packed $DEST/prebuilt.tar.gz ($(du -h "$DEST/prebuilt.tar.gz" | cut -f1)): $(cd "$P/bin" && echo *) + $(find "$P/lib" -type f | wc -l) libraries"
        [ "$CUDA_FLAG" = 1 ] || log "WARNING: CUDA=$CUDA_FLAG: this pack has no CUDA backend; bench/gpu.sh will refuse it"
    else
        STATUS=1
        log "WARNING: the CUDA=$CUDA_FLAG build failed, so there is no $DEST/prebuilt.tar.gz:"
        log "bench/gpu.sh can then run only on a device machine that has the C build dependencies"
    fi
fi

SIZE=$(($(du -sb "$DEST" | cut -f1) / 1048576 + 1))
TREE=$(($(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1) / 1048576 + 1))
log "$DEST is ${SIZE} MiB, the rest of the working tree about ${TREE} MiB (the device tool takes 64 MiB in all)"
[ $((SIZE + TREE)) -lt 62 ] || log "WARNING: that is near or over the device tool's 64 MiB limit"
echo "device call: command \"bash bench/gpu.sh\", carry [\"bench/upstream\"]"
exit $STATUS
