#!/bin/sh
# Builds benchmarks/c_pingpong.c against the engine in csrc/ and runs it.
#
#   benchmarks/c_pingpong.sh -m single -c 0,1          # options: see c_pingpong.c
#   CSRC=/other/tree/csrc benchmarks/c_pingpong.sh ...  # another engine (a baseline)
#   EXTRA_CFLAGS=... benchmarks/c_pingpong.sh ...       # more compiler flags
#
# The binary goes to a temporary directory, removed at exit.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
csrc=${CSRC:-$here/../csrc}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
srcs=""
for f in mq.c lock.c live.c adapters.c; do
    [ -f "$csrc/$f" ] && srcs="$srcs $csrc/$f"
done
# shellcheck disable=SC2086
gcc -std=c11 -O2 -flto -Wall -Wextra -Werror ${EXTRA_CFLAGS:-} -I"$csrc" -o "$out/c_pingpong" \
    "$here/c_pingpong.c" $srcs -lpthread
"$out/c_pingpong" "$@"
