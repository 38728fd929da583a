#!/usr/bin/env bash
# FULL on the real sample with the LightGBM controls and Kronos off (issue 9 item 6), in a
# form that survives the end of a session: the warehouse and the Dagster instance live in
# $FULL_DIR (default ../full9, beside the checkout), every fold is one recorded Dagster run (its
# models, then its dates' scores), and a fold is marked done in $FULL_DIR/folds/ only after its
# run succeeded, so running the script again carries on with the next fold. When every fold is
# done it evaluates them all once (`kronos-pipeline report`). Per-fold wall times go to
# $FULL_DIR/folds.log, the runs' output to $FULL_DIR/progress.log.
#
#     setsid nohup bash bench/full_chunks.sh > /dev/null 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
FULL_DIR=${FULL_DIR:-$(cd .. && pwd)/full9}
mkdir -p "$FULL_DIR/home" "$FULL_DIR/folds"
[ -f "$FULL_DIR/home/dagster.yaml" ] || cp dagster_home/dagster.yaml "$FULL_DIR/home/"
export DAGSTER_HOME=$FULL_DIR/home KRONOS_MODE=full KRONOS_KRONOS__ENABLED=false \
  KRONOS_WAREHOUSE__DATA_DIR=$FULL_DIR/data KRONOS_REPORT__OUTPUT_ROOT=$FULL_DIR/runs \
  KRONOS_DATA__VENDOR_DIR=$(cd .. && pwd)/shared/data/sp500_daily
CLI=.venv/bin/kronos-pipeline
DG=.venv/bin/dagster
# Each fold's two steps in the run's own process: no step subprocess importing everything again.
printf 'execution:\n  config:\n    in_process: {}\n' > "$FULL_DIR/in_process.yaml"
log() { echo "$1 $(date -u +%FT%H:%M)" | tee -a "$FULL_DIR/folds.log"; }
if [ ! -f "$FULL_DIR/data.done" ]; then
  $CLI backfill --dates 1999-11-01:2019-12-31 >> "$FULL_DIR/progress.log" 2>&1 || exit 1
  $DG asset materialize -m kronos_pipeline.definitions --select folds \
    >> "$FULL_DIR/progress.log" 2>&1 || exit 1
  touch "$FULL_DIR/data.done"
fi
for y in $(seq 2011 2019); do for m in 01 02 03 04 05 06 07 08 09 10 11 12; do
  f="$y-$m"
  [ -f "$FULL_DIR/folds/$f" ] && continue
  start=$(date +%s)
  if $DG asset materialize -m kronos_pipeline.definitions -c "$FULL_DIR/in_process.yaml" \
      --select "lightgbm_models,baseline_scores" --partition "$f" >> "$FULL_DIR/progress.log" 2>&1; then
    log "$f $(( $(date +%s) - start ))s"
    touch "$FULL_DIR/folds/$f"
  else
    log "$f FAILED"
    exit 1
  fi
done; done
start=$(date +%s)
$CLI report >> "$FULL_DIR/progress.log" 2>&1 && log "report $(( $(date +%s) - start ))s"
