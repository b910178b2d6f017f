#!/usr/bin/env bash
# Measures netd's reliability figures (docs/reliability.md): time to restore the table after
# foreign changes, endpoints lost and leaks after SIGKILLs during parallel ADD/DEL bursts,
# parallel ADD/DEL times, and fuzzing (corpus replay always; cargo-fuzz when nightly and
# cargo-fuzz are installed). Needs root (private network namespaces only; the machine's root
# netns is never touched).
#
#   KILL_ROUNDS=10   SIGKILL rounds (each: a burst of ~50 parallel ADD/DEL, one kill)
#   FUZZ_SECS=60     seconds of cargo-fuzz per target (0: skip cargo-fuzz)
#   OUT=target/reliability.txt   where the raw RELIABILITY lines go
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/reliability.sh: needs root (network namespaces)" >&2
  exit 1
fi
KILL_ROUNDS="${KILL_ROUNDS:-10}"
FUZZ_SECS="${FUZZ_SECS:-60}"
OUT="${OUT:-target/reliability.txt}"
mkdir -p "$(dirname "$OUT")"
: >"$OUT"

cargo build --workspace --bins
echo "== integration tests (tests/netns/tests/reliability.rs), $KILL_ROUNDS kill rounds"
NETD_KILL_ROUNDS="$KILL_ROUNDS" NETD_LOG=info \
  cargo test -p netd-netns-tests --test reliability -- --nocapture --test-threads=1 2>&1 |
  tee target/reliability-tests.log | grep -E '^RELIABILITY|^test |test result' | tee -a "$OUT"

echo "== corpus replay and mutations (cargo test)"
cargo test -p netd --test fuzz_corpus -- --nocapture 2>&1 | grep -E '^RELIABILITY|test result' | tee -a "$OUT"
cargo test -p netd-cni --lib corpus -- --nocapture 2>&1 | grep -E '^RELIABILITY|test result' | tee -a "$OUT"

if [ "$FUZZ_SECS" -gt 0 ] && cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== cargo-fuzz, $FUZZ_SECS s per target"
  for t in cni_input api_request nft_events; do
    work="$(mktemp -d)"
    log="target/fuzz-$t.log"
    (cd fuzz && cargo +nightly fuzz run "$t" "$work" "corpus/$t" -- \
      -max_total_time="$FUZZ_SECS" -rss_limit_mb=2048 >"../$log" 2>&1) && rc=0 || rc=$?
    runs="$(grep -Eo 'Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' | tail -1 || true)"
    crashes="$(ls fuzz/artifacts/"$t" 2>/dev/null | grep -c . || true)"
    echo "RELIABILITY fuzz target=$t secs=$FUZZ_SECS executions=${runs:-?} exit=$rc crash_artifacts=$crashes new_corpus_entries=$(ls "$work" | wc -l)" | tee -a "$OUT"
    rm -rf "$work"
  done
else
  echo "RELIABILITY fuzz skipped (needs: rustup toolchain nightly, cargo install cargo-fuzz)" | tee -a "$OUT"
fi

echo "== summary"
awk '
  /RELIABILITY restore/ { n++; ms=$NF; sub("ms=","",ms); if (ms+0 > max) max = ms+0; sum += ms }
  /RELIABILITY kill summary/ { print }
  /RELIABILITY parallel_/ { print }
  /RELIABILITY fuzz|RELIABILITY replay/ { print }
  END { if (n) printf "restore: %d cases, mean %.1f ms, max %.1f ms\n", n, sum/n, max }
' "$OUT"
