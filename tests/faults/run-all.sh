#!/usr/bin/env bash
# The fault-injection suite: every scenario in network namespaces made here (see docs/FAULTS.md).
# Exit 0 when every scenario selected passed, 1 when any failed or none was selected.
# Skips: when network namespaces cannot be made (not root, no netns support) every scenario is
# skipped. Under CI (CI set to anything but empty, 0 or false) a skip is a failure (exit 1), and so
# is a known failure (FAULTS_STRICT defaults to 1); elsewhere a skip exits 0 with a SKIPPED line.
# Env: FAULTS_STRICT=1 (known failures fail the run too), FAULTS_SOAK_SECS (jitter/loss soak, default 60; 300 for the 5-minute run), FAULTS_ONLY="a b"
# (run only these scenario names), FAULTS_OUT (where logs and results.jsonl go, default
# $CARGO_TARGET_DIR/faults or target/faults).
set -uo pipefail
cd "$(dirname "$0")/../.."
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
OUT=${FAULTS_OUT:-$TARGET_DIR/faults}
export FAULTS_OUT=$OUT
mkdir -p "$OUT"
rm -f "$OUT/results.jsonl"
start=$(date +%s)

SCENARIOS=(
    "blackhole-default|env MODE=default bash tests/faults/blackhole.sh"
    "blackhole-client-driven|env MODE=client-driven bash tests/faults/blackhole.sh"
    "halfopen|bash tests/faults/halfopen.sh"
    "jitter-loss|bash tests/faults/jitter_loss.sh"
    "stall|bash tests/faults/stall.sh"
    "json-stall|bash tests/faults/json_stall.sh"
    "crash-restart|bash tests/faults/crash.sh"
    "seq-max-age|env MODE=max-age bash tests/faults/seq.sh"
    "seq-kill|env MODE=kill bash tests/faults/seq.sh"
)

ci=""
case "${CI:-}" in "" | 0 | false) ;; *) ci=1 ;; esac
[ -n "$ci" ] && FAULTS_STRICT=${FAULTS_STRICT:-1}

if [ "$(id -u)" != 0 ] || ! ip netns add vfprobe-$$ 2>/dev/null; then
    why="network namespaces cannot be created here (need root and netns support; uid $(id -u))"
    if [ -n "$ci" ]; then
        echo "faults: FAIL — $why; under CI=$CI the suite must run, a skip is a failure"
        echo "faults: 0 passed, 1 failed, 0 skipped"
        exit 1
    fi
    echo "SKIPPED: the fault-injection suite: $why (under CI=true this fails)"
    echo "faults: 0 passed, 0 failed, ${#SCENARIOS[@]} skipped"
    exit 0
fi
ip netns del vfprobe-$$

echo "== faults: building the driver (release)"
cargo build --release -q -p vitals --example fault_driver || exit 1
export FAULTS_NO_BUILD=1

# Scenarios that fail today because of open library bugs (docs/FAULTS.md, "Bugs found"): reported
# loudly, but they do not fail the run unless FAULTS_STRICT=1. Remove a name once its bug is fixed.
KNOWN_FAIL=${FAULTS_KNOWN_FAIL-""}
passed=0 failed=0 skipped=0 known=0 failed_names=()
for entry in "${SCENARIOS[@]}"; do
    name=${entry%%|*}
    cmd=${entry#*|}
    if [ -n "${FAULTS_ONLY:-}" ] && ! [[ " $FAULTS_ONLY " == *" $name "* ]]; then
        continue
    fi
    echo "== faults: $name"
    t=$(date +%s)
    bash -c "$cmd"
    rc=$?
    echo "   ($name: exit $rc, $(( $(date +%s) - t )) s)"
    case $rc in
        0)
            passed=$((passed + 1))
            [[ " $KNOWN_FAIL " == *" $name "* ]] && echo "   ($name passed, although listed as a known failure (its bug is intermittent); remove it from KNOWN_FAIL once fixed)"
            ;;
        77)
            if [ -n "$ci" ]; then
                failed=$((failed + 1))
                failed_names+=("$name")
                echo "   ($name: skipped, and under CI=$CI a skip is a failure)"
            else
                skipped=$((skipped + 1))
                echo "SKIPPED: fault scenario $name (under CI=true this fails)"
            fi
            ;;
        *)
            if [ -z "${FAULTS_STRICT:-}" ] && [[ " $KNOWN_FAIL " == *" $name "* ]]; then
                known=$((known + 1))
                echo "   ($name: KNOWN FAILURE — an open library bug, see docs/FAULTS.md; FAULTS_STRICT=1 makes it fail the run)"
            else
                failed=$((failed + 1))
                failed_names+=("$name")
            fi
            ;;
    esac
done
if [ $((passed + failed + skipped + known)) -eq 0 ]; then
    echo "faults: no scenario matches FAULTS_ONLY=\"${FAULTS_ONLY:-}\" (names: $(printf '%s ' "${SCENARIOS[@]%%|*}"))"
    failed=1
    failed_names+=("(none selected)")
fi
echo "== faults: $(( $(date +%s) - start )) s in all; results in $OUT/results.jsonl"
[ $failed -gt 0 ] && echo "failed scenarios: ${failed_names[*]}"
[ $known -gt 0 ] && echo "known failures (open library bugs): $known"
echo "faults: $passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
