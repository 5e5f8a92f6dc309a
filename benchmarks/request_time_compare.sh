#!/bin/bash
# Request time of one NeuMF request (ml-100k, interaction task, request seed 101), two code
# trees alternately in one sitting, one thread each:
#   bash benchmarks/request_time_compare.sh BEFORE_TREE AFTER_TREE CHECKPOINT [methods...]
# Each line of output is one JSON record of benchmarks/request_time.py, prefixed by the tree.
set -u
BEFORE=$1; AFTER=$2; CK=$3; shift 3
METHODS=${*:-l2unrank l2unrank_twosided}
for round in 1 2; do
  for method in $METHODS; do
    for tree in "$BEFORE" "$AFTER"; do
      out=$(cd "$tree" && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH="$tree" python benchmarks/request_time.py \
        --checkpoint "$CK" --model NeuMF --method "$method" --task interaction --seed 101 --repeats 2 2>/dev/null)
      echo "$tree round=$round $out"
    done
  done
done
