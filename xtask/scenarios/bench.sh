# The seed's experiment and more, writing results to /results (a host
# folder): for each concurrency, a baseline run against one reuse-server,
# then a run under `reloader run --every 100ms` for each strategy; one `ab`
# cross-check of the baseline. Driven by `cargo xtask bench` / `demo`.
# usage: bench.sh REQUESTS "CONCURRENCIES" "STRATEGIES" AB_REQUESTS
set -u
N=$1 CONCS=$2 STRATEGIES=$3 AB_N=$4
OUT=${RESULTS:-/results}
AB=${AB:-/usr/sbin/ab}
fail() { echo "BENCH-FAIL: $*"; exit 1; }
[ -d $OUT ] || fail "no results folder"
qdisc setup > /dev/null || fail "qdisc setup"
echo "BENCH-INFO kernel $(uname -r) cpus $(nproc)"

wait_serving() { # $1: log
    for i in $(seq 1 300); do grep -q "$2" "$1" && return 0; sleep 0.1; done
    fail "no '$2' in $1"
}

for c in $CONCS; do
    reuse-server 2>/tmp/server.log &
    S=$!
    wait_serving /tmp/server.log "listening on"
    echo "BENCH-RUN baseline c=$c"
    loadgen run 127.0.0.1:7000 -c $c -n $N --tsv $OUT/baseline-c$c.tsv --progress | tee $OUT/baseline-c$c.txt
    if [ "$c" = 1 ] && [ "$AB_N" -gt 0 ]; then
        echo "BENCH-RUN ab baseline c=1"
        $AB -q -n $AB_N -g $OUT/ab-baseline-c1.tsv http://127.0.0.1:7000/ > $OUT/ab-baseline-c1.txt 2>&1
        grep -E "^(Complete|Failed) requests|^Time per request.*\(mean\)" $OUT/ab-baseline-c1.txt
    fi
    kill $S; wait $S

    for s in $STRATEGIES; do
        reloader run --strategy $s --every 100ms --drain-timeout 10s --control /tmp/r.sock -- reuse-server 2>$OUT/reloading-$s-c$c.log &
        R=$!
        wait_serving $OUT/reloading-$s-c$c.log "reloader: serving"
        echo "BENCH-RUN reloading strategy=$s c=$c"
        loadgen run 127.0.0.1:7000 -c $c -n $N --tsv $OUT/reloading-$s-c$c.tsv --progress | tee $OUT/reloading-$s-c$c.txt
        kill -TERM $R; wait $R
        grep -c 'reload #[0-9]*: ok' $OUT/reloading-$s-c$c.log > $OUT/reloading-$s-c$c.reloads
        grep -c 'reload #[0-9]*: rolled back' $OUT/reloading-$s-c$c.log >> $OUT/reloading-$s-c$c.reloads
    done
done
sync
echo "BENCH-DONE"
