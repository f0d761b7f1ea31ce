# What an operator watches, under reloading every 100 ms with the plug:
# `reloader status --json`, the metrics endpoint and the log must agree
# (reload counts, rollbacks, held time), and scraping every 100 ms must not
# change what clients see beyond the noise between two unscraped runs.
# usage: reloader-observe.sh [REQUESTS]
set -u
N=${1:-3000}
fail() { echo "FAIL: $*"; tail -20 /tmp/o.log; exit 1; }
reloader run --strategy plug --every 100ms --drain-timeout 10s --metrics 127.0.0.1:9464 \
    --control /tmp/o.sock -- reuse-server 2>/tmp/o.log &
R=$!
for i in $(seq 1 300); do grep -q 'reloader: serving' /tmp/o.log && break; sleep 0.1; done
grep -q 'reloader: serving' /tmp/o.log || fail "reloader did not start"

# quiet, scraped, quiet, scraped: the two quiet runs show the noise.
for phase in quiet1 scraped1 quiet2 scraped2; do
    # A scraper is one process, as Prometheus is: `loadgen scrape` GETs
    # /metrics every 100 ms (spawning a process per scrape would measure
    # the emulated fork and exec, not the endpoint).
    S=""
    case $phase in scraped*)
        loadgen scrape 127.0.0.1:9464 /metrics --every 100 -d 3600 > /tmp/$phase.scrapes &
        S=$!
        ;;
    esac
    loadgen run 127.0.0.1:7000 -c 1 -n "$N" --tsv /tmp/$phase.tsv > /tmp/$phase.out
    if [ -n "$S" ]; then
        kill $S; wait $S
    fi
    reloader status --json --control /tmp/o.sock > /dev/null || echo "status failed" >> /tmp/scrapes
    echo "$phase: $(tr '\n' ' ' < /tmp/$phase.out)"
    if [ -n "$S" ]; then
        echo "  scrapes during it: $(grep -c '^ok' /tmp/$phase.scrapes) ok, $(grep -c '^failed' /tmp/$phase.scrapes) failed"
        grep -q '^failed' /tmp/$phase.scrapes && fail "a scrape failed: $(grep -m1 '^failed' /tmp/$phase.scrapes)"
    fi
    f=$(sed -n 's/.* failed=\([0-9]*\) .*/\1/p' /tmp/$phase.out)
    [ "$f" = 0 ] || fail "$phase: $f failed requests"
done
touch /tmp/scrapes
echo "status queries between phases: $(grep -c failed /tmp/scrapes) failed"
grep -q failed /tmp/scrapes && fail "a status query failed"

# The three views, each against the log up to the reload it has seen.
reloader status --json --control /tmp/o.sock > /tmp/st.json || fail "status"
loadgen get 127.0.0.1:9464 /metrics > /tmp/m.txt || fail "metrics"
reloader status --control /tmp/o.sock
kill -TERM $R
wait $R || fail "reloader exit"
# "NUMBER HELD_MS" per successful reload ("-": nothing held, 0).
sed -n 's/.*reload #\([0-9]*\): ok.*| held \([-0-9.]*\).*/\1 \2/p' /tmp/o.log | sed 's/ -$/ 0/' > /tmp/held
rolled=$(grep -c 'reload #[0-9]*: rolled back' /tmp/o.log)
last=$(sed -n 's/.*"last_reload":{"number":\([0-9]*\).*/\1/p' /tmp/st.json)
st_ok=$(sed -n 's/.*"reloads":{"ok":\([0-9]*\),"rolled_back":\([0-9]*\).*/\1/p' /tmp/st.json)
st_rb=$(sed -n 's/.*"reloads":{"ok":\([0-9]*\),"rolled_back":\([0-9]*\).*/\2/p' /tmp/st.json)
log_ok=$(awk -v last="$last" '$1 <= last' /tmp/held | wc -l)
echo "status: last reload #$last, ok $st_ok, rolled back $st_rb; log up to #$last: ok $log_ok, rolled back $rolled"
[ -n "$last" ] && [ "$st_ok" = "$log_ok" ] && [ "$st_rb" = "$rolled" ] || fail "status and log disagree"

gen=$(sed -n 's/^reloader_serving_generation \([0-9]*\)$/\1/p' /tmp/m.txt)
m_ok=$(sed -n 's/^reloader_reloads_total{outcome="ok"} \([0-9]*\)$/\1/p' /tmp/m.txt)
m_rb=$(sed -n 's/^reloader_reloads_total{outcome="rolled_back"} \([0-9]*\)$/\1/p' /tmp/m.txt)
m_held=$(sed -n 's/^reloader_held_seconds_sum \([0-9.e-]*\)$/\1/p' /tmp/m.txt)
log_ok=$(awk -v g="$gen" '$1 <= g' /tmp/held | wc -l)
log_held=$(awk -v g="$gen" '$1 <= g { s += $2 } END { printf "%.1f", s }' /tmp/held)
echo "metrics: generation $gen, ok $m_ok, rolled back $m_rb, held sum $m_held s; log up to #$gen: ok $log_ok, held sum $log_held ms"
[ -n "$gen" ] && [ "$m_ok" = "$log_ok" ] && [ "$m_rb" = "$rolled" ] || fail "metrics and log disagree on counts"
# The log rounds each held time to 0.1 ms.
awk -v m="$m_held" -v l="$log_held" -v n="$log_ok" 'BEGIN { d = m * 1000 - l; if (d < 0) d = -d; exit !(d <= 0.05 * n + 0.1) }' \
    || fail "metrics and log disagree on the held time ($m_held s vs $log_held ms)"
grep '^reloader_plug' /tmp/m.txt
echo "scenario: reloader-observe ok"
