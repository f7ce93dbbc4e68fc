#!/usr/bin/env bash
# Runs every fuzz target one after the other (single job), each for $SECS seconds (default 600).
# New inputs go to corpus-full/<target> (ignored by git); the committed seeds are in corpus/<target>.
set -euo pipefail
cd "$(dirname "$0")"
SECS="${SECS:-600}"
for t in frame_decoder json_decoder connection; do
  mkdir -p "corpus-full/$t"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus-full/$t" "corpus/$t" -- -max_total_time="$SECS" 2>&1 | tee "/tmp/fuzz-$t.log" | tail -n 30
done
