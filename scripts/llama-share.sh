# shellcheck shell=bash
# Sourced by scripts/setup.sh and .ci/run: what scripts/cc-launch needs to compile llama.cpp's shared
# sources once (see that script). Uses $PY when set (else python3).

# The llama.cpp tree llama-cpp-sys-2 compiles: the pinned crate where cargo unpacked it. `cargo
# metadata` downloads it (with the other crates the build needs) if it is not there yet. Prints
# nothing without cargo or when that fails (the caller then shares nothing).
crate_llama_src() {
  local root=$1 host
  command -v cargo >/dev/null 2>&1 || return 0
  host=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
  (cd "$root" && cargo metadata --format-version 1 --locked ${host:+--filter-platform "$host"} 2>/dev/null) \
    | "${PY:-python3}" -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "llama-cpp-sys-2":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "llama.cpp"))
' 2>/dev/null || true
}

# same_tree A B: every file under A is under B with the same bytes (B may hold more: tools/server).
same_tree() { [ -d "$1" ] && ! diff -rq "$1" "$2" 2>/dev/null | grep -v "^Only in $2" | grep -q .; }

# ccache_summary DIR: "H hits, M misses" of the ccache in DIR (nothing without ccache).
ccache_summary() {
  command -v ccache >/dev/null 2>&1 || return 0
  CCACHE_DIR=$1 ccache --print-stats 2>/dev/null | awk -F'\t' '$1=="direct_cache_hit"||$1=="preprocessed_cache_hit"{h+=$2} $1=="cache_miss"{m=$2} END{printf "%d hits, %d misses", h, m}'
}

# drop_define_spec NAME FILE TREE: "NAME:FILE" (TTFT_CC_DROP_DEFINE) when FILE is the only source or
# header under TREE that mentions NAME, so dropping -DNAME from every other compile changes no
# object; nothing otherwise.
drop_define_spec() {
  local name=$1 file=$2 tree=$3
  if [ "$(grep -rl --include='*.[ch]' --include='*.[ch]pp' --include='*.cu' --include='*.cuh' --include='*.m' \
    "$name" "$tree")" = "$tree/$file" ]; then
    printf '%s:%s\n' "$name" "$file"
  fi
}
