#!/usr/bin/env bash
# Mutation testing of the core Python modules with mutmut (docs/TESTING.md, "Mutation testing").
#
#   tools/mutation.sh                 fresh run of every mutant, then the per-module scores
#   tools/mutation.sh --keep          reuse build/mutation/mutants: run only the mutants without a result
#                                     (mutmut re-tests the functions whose source changed; new or changed
#                                     tests do not re-test old results, so score with a fresh run)
#   tools/mutation.sh report          the scores of the last run again
#   tools/mutation.sh mutmut ARGS...  any mutmut command in the work directory, e.g.
#                                     `mutmut show mac.agent.x_euler_flow__mutmut_3`, `mutmut browse`
#
# Environment: PYTHON (default python3) with the test extra installed (mutmut, pytest, hypothesis);
# MUTATION_JOBS, the parallel mutants (default: nproc). The native cores (python/mac/_C*.so) should be
# built, as for the tests. Not run by CI: ~25 min on 2 cores.
#
# Where: mutmut names a module after its file's path and strips only a leading "src.", and puts
# mutants/, mutants/src or mutants/source on sys.path. The package lives in python/mac, so mutmut runs
# in build/mutation/, where src -> ../../python (and tests, pyproject.toml link to the tree's): there
# src/mac/agent.py is the module mac.agent and the tests import the mutated copy from mutants/src.
# The configuration (modules, tests) is [tool.mutmut] in pyproject.toml.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$root/build/mutation
PYTHON=${PYTHON:-python3}
jobs=${MUTATION_JOBS:-$(nproc)}

# One thread per test process: the mutants run $jobs at a time, and mutmut forks a process per mutant
# from one that has run the tests: an OpenMP thread pool (the native core's num_threads=2 tests) would
# not survive the fork, so OpenMP may start none (OMP_THREAD_LIMIT).
export OMP_NUM_THREADS=1 OMP_THREAD_LIMIT=1 MKL_NUM_THREADS=1

mutmut() {   # the mutmut of $PYTHON, run as its console script does
  (cd "$work" && "$PYTHON" -c 'import sys; from mutmut.__main__ import cli; sys.argv[0] = "mutmut"; cli()' "$@")
}

mkdir -p "$work"
ln -sfn ../../python "$work/src"
ln -sfn ../../tests "$work/tests"
ln -sfn ../../pyproject.toml "$work/pyproject.toml"

report() { (cd "$work" && "$PYTHON" "$root/tools/mutation_report.py" "$@"); }

case "${1:-run}" in
  report) shift; report "$@"; exit 0 ;;
  mutmut) shift; mutmut "$@"; exit $? ;;
  --keep) shift ;;
  run) shift 2>/dev/null || true; rm -rf "$work/mutants" ;;
  *) echo "usage: $0 [run | --keep | report | mutmut ARGS...]" >&2; exit 2 ;;
esac

"$PYTHON" -c 'import mutmut' 2>/dev/null || {
  echo "mutmut is not installed for $PYTHON: pip install -e '.[test]' (or set PYTHON)" >&2; exit 2; }
ls "$root"/python/mac/_C.*.so >/dev/null 2>&1 || echo "warning: python/mac/_C*.so not built: the native-core tests will skip" >&2

start=$(date +%s)
log=$work/mutmut.log
echo "mutmut: $jobs parallel mutants, log in $log (load before: $(cut -d' ' -f1-3 /proc/loadavg))"
set +e
mutmut run --max-children "$jobs" > "$log" 2>&1
rc=$?
set -e
end=$(date +%s)
# mutmut redraws one status line with \r; the last one is the final count.
tr '\r' '\n' < "$log" | grep -v '^\s*$' | grep -v '^⠋\|^⠙\|^⠹\|^⠸\|^⠼\|^⠴\|^⠦\|^⠧\|^⠇\|^⠏' | tail -n 4 || true
echo "wall time: $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s with $jobs parallel mutants," \
     "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ $rc -ne 0 ]; then
  echo "mutmut run failed (exit $rc); see $log" >&2
  exit $rc
fi
report
