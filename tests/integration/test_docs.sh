#!/usr/bin/env bash
# The README and the benchmark notes against the repository they describe: the two commands open the
# README; every repository path they name exists and none points outside the repository; every
# command of the CLI reference answers --help; every environment variable the code reads is in the
# README, and every one the README lists is read somewhere.
# usage: test_docs.sh MOELAB_BINARY SOURCE_DIR
set -uo pipefail
moelab=$1 src=$2
cd "$src" || exit 1
docs=(README.md bench/README.md experiments/README.md)
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# The first code block of the README is the two commands, and both scripts are there.
first_block=$(awk '/^```/ {if (open) exit; open = 1; next} open' README.md | sed 's/ *#.*//')
[[ $first_block == $'bash scripts/setup.sh\nbash scripts/test.sh' ]] ||
  fail "README's first code block is not the two commands: $first_block"
for script in scripts/setup.sh scripts/test.sh; do [[ -f $script ]] || fail "$script is missing"; done

# Paths into the repository's own folders, wherever the text names one (not inside another path).
for doc in "${docs[@]}"; do
  [[ -f $doc ]] || { fail "$doc is missing"; continue; }
  grep -n '\.\./' "$doc" && fail "$doc points outside the repository"
  while read -r path; do
    path=${path%%[.,:;]}
    [[ -e $path ]] || fail "$doc names $path, which is not in the repository"
  done < <(grep -oP '(?<![A-Za-z0-9_./<>-])(bench|db|engine|eval|experiments|reports|runner|scripts|sweeps|tests)/[A-Za-z0-9_./-]*' "$doc" | sort -u)
  # Markdown links: to files that exist, and to headings of this file (GitHub's anchors).
  anchors=$(grep '^#' "$doc" | sed 's/^#* *//' | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9 _-]//g; s/ /-/g')
  while read -r target; do
    if [[ $target == \#* ]]; then
      grep -qx "${target#\#}" <<<"$anchors" || fail "$doc links to $target, which is no heading of it"
    elif [[ $target != http* ]]; then
      [[ -e $(dirname "$doc")/$target ]] || fail "$doc links to $target, which is not there"
    fi
  done < <(grep -oP '\]\(\K[^)]+' "$doc")
done

# Each command of the CLI reference table answers --help.
while read -r command; do
  out=$("$moelab" $command --help 2>&1) || fail "moelab $command --help exited with $?: $out"
  [[ $out == *"usage: moelab $command"* ]] || fail "moelab $command --help does not show its usage: $out"
done < <(awk '/^## CLI reference/ {on = 1; next} /^## / {on = 0} on' README.md |
         grep -oP '^\| `\K[a-z]+( [a-z]+)?(?=[ `])' | awk '$2 == "" || $2 ~ /^(prepare|verify|plan|run|status|cancel|query)$/' | sort -u)

# Environment variables: what the code reads is documented, and what is documented is read.
for name in $(grep -rhoP 'getenv\("\K[A-Z_]+' engine runner db reports eval | sort -u); do
  grep -q "\`$name" README.md || fail "the code reads $name, which the README does not mention"
done
for name in $(awk '/^### Environment variables/ {on = 1; next} /^##/ {on = 0} on' README.md | grep -oP '`\K[A-Z][A-Z_]+(?=[`=])' | sort -u); do
  grep -rq "$name" engine runner db reports eval scripts || fail "the README lists $name, which nothing reads"
done

((failures == 0)) || { echo "$failures failure(s)"; exit 1; }
echo "docs: README, bench/README.md and experiments/README.md match the repository"
