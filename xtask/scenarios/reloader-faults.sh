# Faults, under a steady load of new connections, with zero failed requests:
# the new server exits at once; never listens; listens but fails its check;
# and the reloader is killed with SIGKILL while the plug buffers, then
# started again.
set -u
fail() { echo "FAIL: $*"; tail -30 /tmp/reloader.log; tail -30 /tmp/reloader2.log 2>/dev/null; exit 1; }
CTL=/tmp/r.sock
# The server command picks its behaviour from a flag file, so each
# generation can be told to misbehave.
SERVER='if [ -e /tmp/mode-exit ]; then exit 7;
elif [ -e /tmp/mode-nolisten ]; then exec sleep 1000;
elif [ -e /tmp/mode-unhealthy ]; then exec reuse-server --status 503;
elif [ -e /tmp/mode-slow ]; then sleep 4; exec reuse-server;
else exec reuse-server; fi'

start_reloader() { # $1: log file
    LOG=$1
    reloader run --ready-timeout 2s --drain-timeout 5s --control $CTL -- sh -c "$SERVER" 2>$LOG &
    R=$!
    for i in $(seq 1 300); do grep -q 'reloader: serving' $LOG && break; sleep 0.1; done
    grep -q 'reloader: serving' $LOG || fail "reloader did not start"
}

qdisc setup || fail "qdisc setup"
start_reloader /tmp/reloader.log
loadgen run 127.0.0.1:7000 -c 4 -d 60 > /tmp/load.out &
LOAD=$!
sleep 1

for mode in exit nolisten unhealthy; do
    touch /tmp/mode-$mode
    before=$(loadgen get 127.0.0.1:7000)
    if reloader reload --control $CTL > /tmp/reload.out 2>&1; then
        fail "reload with a server that does '$mode' succeeded: $(cat /tmp/reload.out)"
    fi
    echo "fault '$mode': reload refused: $(cat /tmp/reload.out)"
    rm /tmp/mode-$mode
    grep -q 'rolled back' /tmp/reload.out || fail "'$mode': no rollback reported"
    [ "$(qdisc status --json | grep -c '"buffering":false')" = 1 ] || fail "'$mode': plug not released"
    after=$(loadgen get 127.0.0.1:7000)
    [ "$before" = "$after" ] || echo "note: answered by $before then $after (both old generations)"
done
reloader reload --control $CTL || fail "a good reload after the faults failed"

echo "--- SIGKILL while the plug buffers"
touch /tmp/mode-slow
reloader reload --control $CTL > /dev/null 2>&1 &
for i in $(seq 1 100); do qdisc status --json | grep -q '"buffering":true' && break; sleep 0.05; done
qdisc status --json | grep -q '"buffering":true' || fail "the plug never buffered"
kill -9 $R
rm /tmp/mode-slow
echo "reloader killed with the plug buffering:"
qdisc status
loadgen get 127.0.0.1:7000 > /tmp/held.out &
HELD=$!
sleep 1
kill -0 $HELD 2>/dev/null || fail "a new connection completed while the plug was left buffering"
start_reloader /tmp/reloader2.log
cat /tmp/reloader2.log
grep -q 'released a plug left buffering' /tmp/reloader2.log || fail "the new reloader did not say it released the plug"
wait $HELD || fail "the held connection failed after the restart"
echo "held connection completed after restart: $(cat /tmp/held.out)"

wait $LOAD
cat /tmp/load.out
grep -q ' failed=0 ' /tmp/load.out || fail "failed requests during the faults"
kill -TERM $R; wait $R
# Servers orphaned by the killed reloader are ours to end (the test started them).
for p in $(pidof reuse-server sleep); do kill $p 2>/dev/null; done
echo "scenario: reloader-faults ok"
