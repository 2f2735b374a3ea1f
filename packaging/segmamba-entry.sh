#!/bin/sh
# Entry point of the segmamba-node MAP image (put there by packaging/build_map.py).
#
#   show | env | extract | help   the packager's MAP tools (/var/holoscan/tools)
#   anything else                 python3 $HOLOSCAN_APPLICATION "$@" (batch; "serve" = DICOM node)
#
# The application is started with exec: its exit status reaches the caller (Argo, mercure,
# docker run) and SIGTERM reaches the application. The packager's own entry point runs it
# under eval and always exits 0, so a failed study would look like a success.
#
# Batch mode only:
# - under mercure (MERCURE_IN_DIR and MERCURE_OUT_DIR set by mercure's processor), input and
#   output are mercure's folders and the scratch folder is $TMPDIR (mercure runs the container
#   with its own user id, which cannot write to /var/holoscan);
# - a user id that cannot write to $HOLOSCAN_WORKDIR (docker run --user) works in $TMPDIR;
# - files that processing engines put beside the DICOM instances (mercure's task.json and
#   *.tags, MONAI Deploy Informatics Gateway's *.dcm.json) are left out of the study through a
#   folder of links, because the application refuses every file that is not DICOM.
#   SEGMAMBA_INPUT_IGNORE holds those name patterns; set it empty to pass the input unchanged.
set -eu
set -f  # patterns below are matched with case, never expanded against the file system

case "${1:-}" in
    show | env | extract | help) exec /var/holoscan/tools "$@" ;;
esac

ignore=${SEGMAMBA_INPUT_IGNORE-task.json *.tags *.dcm.json}
scratch=${TMPDIR:-/tmp}

ignored() {  # $1: a file name; true when it matches one of the ignore patterns
    for pattern in $ignore; do
        case "$1" in $pattern) return 0 ;; esac
    done
    return 1
}

has_ignored() {  # $1: a folder; true when some file below it is to be left out
    find "$1" -type f -print | while IFS= read -r path; do
        if ignored "${path##*/}"; then
            echo yes
            break
        fi
    done | grep -q yes
}

link_view() {  # $1: source folder, $2: empty target folder; links every file not ignored
    find "$1" \( -type f -o -type l \) -print | while IFS= read -r path; do
        ignored "${path##*/}" && continue
        relative=${path#"$1"/}
        case "$relative" in */*) mkdir -p "$2/${relative%/*}" ;; esac
        ln -s "$path" "$2/$relative"
    done
}

mode=${SEGMAMBA_MODE:-batch}
if [ "${1:-}" = serve ]; then
    mode=serve
fi

if [ "$mode" != serve ]; then
    if [ -n "${MERCURE_IN_DIR:-}" ]; then
        export HOLOSCAN_INPUT_PATH="$MERCURE_IN_DIR"
        export HOLOSCAN_OUTPUT_PATH="${MERCURE_OUT_DIR:?MERCURE_IN_DIR is set but MERCURE_OUT_DIR is not}"
        export HOLOSCAN_WORKDIR="$scratch"
        cd "$scratch"
    fi
    # Another user id than the image's (docker run --user) cannot write to /var/holoscan.
    if [ ! -w "${HOLOSCAN_WORKDIR:-$PWD}" ]; then
        export HOLOSCAN_WORKDIR="$scratch"
        cd "$scratch"
    fi
    input=${HOLOSCAN_INPUT_PATH:-}
    if [ -n "$ignore" ] && [ -n "$input" ] && [ -d "$input" ] && has_ignored "$input"; then
        source_dir=$(cd "$input" && pwd -P)
        view=$(mktemp -d "$scratch/segmamba-input.XXXXXX")
        link_view "$source_dir" "$view"
        echo "segmamba-entry: study read from $view (links to $source_dir without: $ignore)" >&2
        export HOLOSCAN_INPUT_PATH="$view"
    fi
fi

# A user id without a home (mercure, OpenShift) gets HOME=/; caches (torch, triton) need one.
if [ ! -w "${HOME:-/}" ]; then
    export HOME="$scratch"
fi

# Holoscan asks for a 32 MiB stack (it warns below that); raise the soft limit where allowed.
stack=$(ulimit -s)
if [ "$stack" != unlimited ] && [ "$stack" -lt 32768 ]; then
    ulimit -s 32768 2>/dev/null || true
fi

exec python3 "${HOLOSCAN_APPLICATION:-/opt/holoscan/app}" "$@"
