#!/usr/bin/env bash
# Download, verify and unpack COCO 2017 detection data into the layout configs/coco/*.yaml expect:
#   DIR/train2017/*.jpg  DIR/val2017/*.jpg  DIR/annotations/instances_{train,val}2017.json
#
#   scripts/prepare_coco.sh [--skip-download] [DIR]        (DIR defaults to datasets/coco)
#
# About 19 GB to download and 20 GB unpacked. Safe to re-run: downloads resume (curl -C - / wget -c),
# and each finished step leaves a marker in DIR/.prepare/ (NAME.verified, NAME.unpacked), so a re-run
# skips it. A checksum mismatch stops before anything is unpacked; delete the archive and re-run.
#
# Environment (all optional):
#   COCO_URL_BASE      where zips/ and annotations/ live (default http://images.cocodataset.org; any URL
#                      curl understands, file:// included, e.g. a local mirror)
#   COCO_DOWNLOAD_DIR  where the archives go (default DIR/downloads); pre-placed archives are used as they are
#   COCO_ARCHIVES      which archives (default "train2017.zip val2017.zip annotations_trainval2017.zip")
#   COCO_MD5_<name>    expected MD5 of <name>.zip instead of the built-in one (e.g. COCO_MD5_val2017)
#   COCO_KEEP_ARCHIVES=0  delete each archive once it is unpacked (default: keep)
#   COCO_SKIP_DOWNLOAD=1  same as --skip-download: never download, use the archives in COCO_DOWNLOAD_DIR
#
# MD5 sums: cocodataset.org does not print checksums next to the files. The sums below are the ones
# in wide use for these exact URLs, found identically in several independent projects' download code
# (e.g. PaddleDetection's dataset download table, LVIS's archive list, MLCommons scripts). A mismatch
# means a truncated or corrupted download.
set -euo pipefail

SKIP_DOWNLOAD=${COCO_SKIP_DOWNLOAD:-0}
if [ "${1:-}" = "--skip-download" ]; then SKIP_DOWNLOAD=1; shift; fi
case "${1:-}" in -h|--help) sed -n '2,18p' "$0"; exit 0;; -*) echo "$0: unknown option $1" >&2; exit 2;; esac
DIR=${1:-datasets/coco}
URL_BASE=${COCO_URL_BASE:-http://images.cocodataset.org}
DL=${COCO_DOWNLOAD_DIR:-$DIR/downloads}
ARCHIVES=${COCO_ARCHIVES:-train2017.zip val2017.zip annotations_trainval2017.zip}
MARKERS=$DIR/.prepare
PY=${PYTHON:-python3}

die() { echo "prepare_coco: error: $*" >&2; exit 1; }
say() { echo "prepare_coco: $*"; }

default_md5() {
    case "$1" in
        train2017.zip) echo cced6f7f71b7629ddf16f17bbcfab6b2 ;;
        val2017.zip) echo 442b8da7639aecaf257c1dceb8ba8c80 ;;
        annotations_trainval2017.zip) echo f4bbac642086de4f52a3fdda2de5fa2c ;;
        *) die "unknown archive '$1' (expected train2017.zip, val2017.zip or annotations_trainval2017.zip)" ;;
    esac
}

url_of() {  # images live under zips/, annotation archives under annotations/
    case "$1" in annotations_*) echo "$URL_BASE/annotations/$1" ;; *) echo "$URL_BASE/zips/$1" ;; esac
}

md5_of() {
    if command -v md5sum > /dev/null; then md5sum "$1" | cut -d' ' -f1
    else "$PY" -c 'import hashlib, sys
h = hashlib.md5()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
    fi
}

download() {  # $1 archive name -> $DL/$1; resumes a previous partial download ($DL/$1.part)
    local url part
    url=$(url_of "$1"); part="$DL/$1.part"
    say "downloading $url"
    if command -v curl > /dev/null; then
        curl -fL --retry 5 --retry-delay 10 -C - -o "$part" "$url" || die "download of $url failed (re-run to resume)"
    elif command -v wget > /dev/null; then
        wget -c -O "$part" "$url" || die "download of $url failed (re-run to resume)"
    else
        die "neither curl nor wget found; download $url into $DL/ yourself and re-run with --skip-download"
    fi
    mv "$part" "$DL/$1"
}

unpack() {  # $1 zip -> $DIR (overwriting: a re-run after an interrupted unpack starts it again)
    if command -v unzip > /dev/null; then unzip -q -o "$1" -d "$DIR" || die "cannot unpack $1"
    else "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$1" "$DIR" \
        || die "cannot unpack $1"
    fi
}

mkdir -p "$DL" "$MARKERS"
for name in $ARCHIVES; do
    stem=${name%.zip}
    var="COCO_MD5_$stem"
    expected=${!var:-$(default_md5 "$name")}
    if [ -e "$MARKERS/$name.unpacked" ]; then say "$name: already unpacked, skipping"; continue; fi
    if [ ! -e "$MARKERS/$name.verified" ]; then
        if [ ! -f "$DL/$name" ]; then
            [ "$SKIP_DOWNLOAD" = 1 ] && die "$DL/$name not found (--skip-download: place the archive there first)"
            download "$name"
        fi
        say "$name: checking MD5"
        actual=$(md5_of "$DL/$name")
        if [ "$actual" != "$expected" ]; then
            die "$DL/$name: MD5 mismatch: expected $expected, got $actual (truncated or corrupted download?). \
Nothing was unpacked. Delete the file and re-run to download it again."
        fi
        touch "$MARKERS/$name.verified"
    fi
    say "$name: unpacking into $DIR"
    unpack "$DL/$name"
    touch "$MARKERS/$name.unpacked"
    if [ "${COCO_KEEP_ARCHIVES:-1}" = 0 ]; then rm -f "$DL/$name"; fi
done

# What the configs read (data.train / data.val in configs/coco/*.yaml), for the archives asked for.
missing=()
for name in $ARCHIVES; do
    case "$name" in
        annotations_trainval2017.zip) want=(annotations/instances_train2017.json annotations/instances_val2017.json) ;;
        *) want=("${name%.zip}") ;;
    esac
    for p in "${want[@]}"; do [ -e "$DIR/$p" ] || missing+=("$DIR/$p"); done
done
[ ${#missing[@]} -eq 0 ] || die "unpacked, but missing: ${missing[*]} (unexpected archive contents?)"
say "done: $DIR is ready (configs/coco/*.yaml read datasets/coco/{train2017,val2017,annotations})"
