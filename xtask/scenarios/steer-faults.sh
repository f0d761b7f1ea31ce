# --strategy steer's promises beyond plain reloads, in the guest kernel:
#   - a new server without the gate that answers 503 gets no client
#     request (ab across the reload: 0 failed, 0 non-2xx), the old serves on;
#   - --probation 4s --canary 10: the new one gets 10 +- 3 % of the new
#     connections over the window, then takes over;
#   - the reloader killed with SIGKILL during a probation: no request
#     fails, and the next `reloader run` ends with one generation serving.
set -u
fail() { echo "FAIL: $*"; tail -30 /tmp/steer.log; tail -30 /tmp/steer2.log 2>/dev/null; exit 1; }
AB=/usr/sbin/ab
CTL=/tmp/s.sock
SERVER='if [ -e /tmp/mode-unhealthy ]; then exec env -u RELOADER_GATE reuse-server --status 503; fi
exec env -u RELOADER_GATE reuse-server'
start() { # $1: log, rest: reloader flags
    log=$1; shift
    reloader run --strategy steer --drain-timeout 5s --ready-timeout 3s --control $CTL "$@" -- sh -c "$SERVER" 2>$log &
    R=$!
    for i in $(seq 1 300); do grep -q 'reloader: serving' $log && break; sleep 0.1; done
    grep -q 'reloader: serving' $log || fail "reloader did not start"
}
# waits until $1 has a line matching $2 (the ${3:-1}th such line)
wait_for() {
    for i in $(seq 1 600); do [ "$(grep -c "$2" "$1")" -ge "${3:-1}" ] && return 0; sleep 0.05; done
    fail "no '$2' (#${3:-1}) in $1"
}
listeners() { awk '$2 ~ /:1B58$/ && $4 == "0A"' /proc/net/tcp | wc -l; }

ip link set lo up
start /tmp/steer.log
echo "-- a new server that answers 503, under ab -c 1 across its reload"
touch /tmp/mode-unhealthy
$AB -q -t 10 -n 1000000 -c 1 http://127.0.0.1:7000/ > /tmp/ab.out 2>&1 &
A=$!
wait_for /tmp/steer.log 'reloader: serving'
if reloader reload --control $CTL > /tmp/reload.out 2>&1; then fail "the 503 server was taken: $(cat /tmp/reload.out)"; fi
echo "   $(cat /tmp/reload.out)"
rm /tmp/mode-unhealthy
wait $A
done_n=$(sed -n 's/^Complete requests: *\([0-9]*\).*/\1/p' /tmp/ab.out)
failed=$(sed -n 's/^Failed requests: *\([0-9]*\).*/\1/p' /tmp/ab.out)
non2xx=$(sed -n 's/^Non-2xx responses: *\([0-9]*\).*/\1/p' /tmp/ab.out)
echo "   ab: complete=$done_n failed=$failed non-2xx=${non2xx:-0}"
[ -n "$done_n" ] && [ "$done_n" -gt 100 ] || fail "ab did too little: $(tail -5 /tmp/ab.out)"
[ "$failed" = 0 ] || fail "$failed failed requests"
[ -z "$non2xx" ] || fail "$non2xx requests reached the 503 server"
kill -TERM $R; wait $R || fail "reloader exited $?"

echo "-- --probation 4s --canary 10 under load (c=8)"
start /tmp/steer.log --probation 4s --canary 10
OLD=$(loadgen get 127.0.0.1:7000)
reloader reload --control $CTL > /tmp/reload.out 2>&1 &
RL=$!
wait_for /tmp/steer.log 'probation for'
rm -f /tmp/stop
loadgen run 127.0.0.1:7000 -c 8 --until-exists /tmp/stop -d 120 --tsv /tmp/l.tsv > /tmp/l.out &
L=$!
wait_for /tmp/steer.log 'probation passed'
touch /tmp/stop
wait $L; wait $RL || fail "the probation reload failed: $(cat /tmp/reload.out)"
echo "   $(head -1 /tmp/l.out)"
grep 'probation passed' /tmp/steer.log
grep -q ' failed=0 ' /tmp/l.out || fail "requests failed during the probation"
# Each request's serving PID is the TSV's fourth column.
total=$(awk -F'\t' 'NR > 1' /tmp/l.tsv | wc -l)
old_n=$(awk -F'\t' -v p="$OLD" 'NR > 1 && $4 == p' /tmp/l.tsv | wc -l)
[ "$total" -gt 500 ] || fail "only $total requests during the probation"
share=$(( (total - old_n) * 1000 / total ))
echo "   the canary got $((share / 10)).$((share % 10))% of $total requests of the load"
# The probation's own share, counted by the program over exactly its
# window: 10% +- 3. The load's share is higher by the requests between the
# cut-over and this script's seeing the line (the canary gets all of
# those): between 7% and 20%, i.e. the canary served a share, not all.
own=$(sed -n 's/.*probation passed: it got [0-9]* of [0-9]* new connections (\([0-9]*\)\.\([0-9]\)%).*/\1\2/p' /tmp/steer.log | tail -1)
[ -n "$own" ] || fail "no share in the probation line"
[ "$own" -ge 70 ] && [ "$own" -le 130 ] || fail "the program's canary share $own per mille, want 100 +- 30"
[ "$share" -ge 70 ] && [ "$share" -le 200 ] || fail "canary share of the load $share per mille, want 70 to 200"
NEW=$(loadgen get 127.0.0.1:7000)
[ "$NEW" != "$OLD" ] || fail "the new one did not take over"

echo "-- the reloader killed with SIGKILL during a probation, under load"
rm -f /tmp/stop
loadgen run 127.0.0.1:7000 -c 8 --until-exists /tmp/stop -d 120 > /tmp/l.out &
L=$!
reloader reload --control $CTL > /dev/null 2>&1 &
wait_for /tmp/steer.log 'probation for' 2
kill -9 $R
start /tmp/steer2.log
wait_for /tmp/steer2.log 'reloader: serving'
n=$(listeners)
touch /tmp/stop
wait $L
echo "   $(head -1 /tmp/l.out)"
grep -E 'adopting|retired orphaned' /tmp/steer2.log
[ "$(grep -c 'adopting it' /tmp/steer2.log)" = 2 ] || fail "expected the old and the canary adopted"
grep -q ' failed=0 ' /tmp/l.out || fail "requests failed across the kill"
[ "$n" = 1 ] || fail "$n listeners on 7000 after the takeover"
kill -TERM $R; wait $R || fail "reloader exited $?"
[ "$(listeners)" = 0 ] || fail "a server was left running"
echo "scenario: steer-faults ok"
