#!/bin/sh
# run.sh MODE BUILD_FUZZ_DIR SECONDS NAME...: replays or fuzzes each target.
# MODE fuzz-replay: every corpus file once (deterministic); fuzz / fuzz-ci: fuzz
# SECONDS per target, new inputs to a scratch dir, crashes to artifacts/.
# One line per target, then "MODE: N passed, N failed"; non-zero on failure.
mode=$1 dir=$2 secs=$3
shift 3
corpora=tests/fuzz/corpus
passed=0 failed=0
mkdir -p "$dir/logs"

replay_one() {
	files=$(find "$corpora/$1" -type f 2>/dev/null | sort)
	# No seeds yet: one run of the empty input still exercises the target.
	[ -n "$files" ] || files=/dev/null
	# shellcheck disable=SC2086  # the file list is meant to split
	"$dir/$1" -runs=1 $files >"$dir/logs/$1.replay.log" 2>&1
}

fuzz_one() {
	work="$dir/corpus-work/$1"
	mkdir -p "$work" "$dir/artifacts" "$corpora/$1"
	"$dir/$1" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$dir/artifacts/$1-" \
		"$work" "$corpora/$1" >"$dir/logs/$1.fuzz.log" 2>&1
}

# "exec/s 12345, cov 678, corpus 90" from a libFuzzer log.
fuzz_figures() {
	log="$dir/logs/$1.fuzz.log"
	eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
	units=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
	echo "exec/s ${eps:-?}, cov ${cov:-?}, corpus ${units:-?}"
}

for name in "$@"; do
	if [ "$mode" = fuzz-replay ]; then
		if replay_one "$name"; then
			n=$(find "$corpora/$name" -type f 2>/dev/null | wc -l)
			echo "fuzz-replay $name: ok ($n inputs)"
			passed=$((passed + 1))
		else
			echo "fuzz-replay $name: FAILED (see $dir/logs/$name.replay.log)"
			failed=$((failed + 1))
		fi
	elif fuzz_one "$name"; then
		echo "$mode $name: ok, $(fuzz_figures "$name")"
		passed=$((passed + 1))
	else
		echo "$mode $name: FAILED, $(fuzz_figures "$name") (see $dir/logs/$name.fuzz.log, $dir/artifacts/)"
		failed=$((failed + 1))
	fi
done
echo "$mode: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
