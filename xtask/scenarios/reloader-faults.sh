# Faults, each under ab at c=1 (a new connection per request) across one
# reload, with zero failed and zero non-2xx requests and no request held
# longer than it must be:
#   - a new server that takes 2 s to start (reload succeeds);
#   - one that never listens; one that answers 503 (rollbacks: the old
#     generation keeps serving, asserted by the PID that answers);
#   - an old server that ignores SIGTERM (held at most --hold-limit, then
#     SIGKILLed at the drain timeout, held again for that instant);
#   - a server on another local port is never held (the plug's own kernel
#     counters do not move for its SYNs);
#   - the reloader (and its watchdog) killed with SIGKILL while it holds;
#     the next one releases.
set -u
fail() { echo "FAIL: $*"; tail -30 /tmp/reloader.log; tail -30 /tmp/reloader2.log 2>/dev/null; exit 1; }
AB=/usr/sbin/ab
CTL=/tmp/r.sock
# The server command picks its behaviour from a flag file, so each
# generation can be told to misbehave.
SERVER='if [ -e /tmp/mode-exit ]; then exit 7;
elif [ -e /tmp/mode-nolisten ]; then exec sleep 1000;
elif [ -e /tmp/mode-unhealthy ]; then exec reuse-server --status 503;
elif [ -e /tmp/mode-slow ]; then sleep 2; exec reuse-server;
elif [ -e /tmp/mode-ignoreterm ]; then exec reuse-server --ignore-sigterm;
else exec reuse-server; fi'

start_reloader() { # $1: log file
    LOG=$1
    reloader run --ready-timeout 3s --drain-timeout 5s --hold-limit 1s --control $CTL -- sh -c "$SERVER" 2>$LOG &
    R=$!
    for i in $(seq 1 300); do grep -q 'reloader: serving' $LOG && break; sleep 0.1; done
    grep -q 'reloader: serving' $LOG || fail "reloader did not start"
}

# plug counters of the kernel (TCA_STATS2 of 40:): packets through band 4,
# held now, dropped.
plug_packets() { qdisc --ingress status --json | sed -n 's/.*"sent_packets":\([0-9]*\).*/\1/p'; }

# ab across one reload; $1: name, $2: expected reload outcome (ok|rollback).
# Asserts 0 failed, 0 non-2xx, longest request under $3 ms.
ab_across_reload() {
    name=$1 want=$2 longest_max=$3
    $AB -q -t 8 -n 1000000 -c 1 http://127.0.0.1:7000/ > /tmp/ab-$name.out 2>&1 &
    AB_PID=$!
    sleep 1
    if reloader reload --control $CTL > /tmp/reload.out 2>&1; then got=ok; else got=rollback; fi
    echo "fault '$name': $(cat /tmp/reload.out)"
    [ "$got" = "$want" ] || fail "'$name': reload outcome $got, expected $want"
    wait $AB_PID
    failed=$(sed -n 's/^Failed requests: *\([0-9]*\).*/\1/p' /tmp/ab-$name.out)
    non2xx=$(sed -n 's/^Non-2xx responses: *\([0-9]*\).*/\1/p' /tmp/ab-$name.out)
    longest=$(sed -n 's/^ *100% *\([0-9]*\) (longest request).*/\1/p' /tmp/ab-$name.out)
    done_n=$(sed -n 's/^Complete requests: *\([0-9]*\).*/\1/p' /tmp/ab-$name.out)
    echo "fault '$name': ab complete=$done_n failed=$failed non-2xx=${non2xx:-0} longest=${longest}ms"
    [ -n "$done_n" ] && [ "$done_n" -gt 100 ] || fail "'$name': ab did too little: $(tail -5 /tmp/ab-$name.out)"
    [ "$failed" = 0 ] || fail "'$name': $failed failed requests"
    [ -z "$non2xx" ] || fail "'$name': $non2xx non-2xx responses"
    [ "$longest" -lt "$longest_max" ] || fail "'$name': longest request ${longest}ms (limit ${longest_max}ms)"
}

# Another service on this machine, not under the reloader.
reuse-server --listen 127.0.0.1:7001 2>/tmp/other.log &
OTHER=$!
start_reloader /tmp/reloader.log
grep -q 'holds SYNs to port 7000 only' /tmp/reloader.log || fail "the tree was not scoped to port 7000"
# A second reloader for the same service (port) would release this one's
# holds: refused. (One for other ports is a service beside it: services.sh.)
if timeout 30 reloader run --addr 127.0.0.1:7000 --control /tmp/r2.sock -- reuse-server 2>/tmp/second.log; then
    fail "a second reloader for port 7000 started"
fi
cat /tmp/second.log
grep -q 'another reloader already uses the plug tree on ifb-lo-7000' /tmp/second.log || fail "no clear refusal for a second reloader"

for mode in slow nolisten unhealthy exit; do
    touch /tmp/mode-$mode
    before=$(loadgen get 127.0.0.1:7000)
    case $mode in slow) want=ok;; *) want=rollback;; esac
    ab_across_reload $mode $want 500
    rm /tmp/mode-$mode
    after=$(loadgen get 127.0.0.1:7000)
    if [ $want = rollback ]; then
        grep -q 'rolled back' /tmp/reload.out || fail "'$mode': no rollback reported"
        [ "$before" = "$after" ] || fail "'$mode': answered by PID $before before and $after after a rollback"
    else
        [ "$before" != "$after" ] || fail "'$mode': still PID $before after a successful reload"
    fi
    # The kernel's answer: the plug holds nothing, and a new connection completes.
    qdisc --ingress status --json | grep -q '"held_packets":0' || fail "'$mode': the plug still holds packets"
    loadgen get 127.0.0.1:7000 > /dev/null || fail "'$mode': a new connection did not complete after the reload"
done

echo "--- another local port is never held"
p0=$(plug_packets)
loadgen run 127.0.0.1:7001 -c 2 -d 6 > /tmp/other-load.out &
OL=$!
for i in 1 2 3 4 5 6 7 8 9 10; do reloader reload --control $CTL > /dev/null || fail "reload $i during the other port's load"; done
wait $OL || fail "load on the other port failed: $(cat /tmp/other-load.out)"
cat /tmp/other-load.out
p1=$(plug_packets)
echo "plug band packets: $p0 before, $p1 after 10 reloads with load on port 7001 only"
[ "$p0" = "$p1" ] || fail "SYNs to port 7001 went through the plug's band ($p0 -> $p1)"
# Teeth: SYNs to the served port do go through it.
loadgen run 127.0.0.1:7000 -c 1 -n 20 > /dev/null || fail "load on 7000"
p2=$(plug_packets)
[ "$p2" -gt "$p1" ] || fail "SYNs to port 7000 did not pass the plug's band ($p1 -> $p2): the counter proves nothing"

echo "--- an old server that ignores SIGTERM"
touch /tmp/mode-ignoreterm
reloader reload --control $CTL > /dev/null || fail "reload to the SIGTERM-ignoring server"
rm /tmp/mode-ignoreterm
deaf=$(loadgen get 127.0.0.1:7000)
ab_across_reload ignoreterm ok 1300
grep -q "PID $deaf: still listening after the hold limit" /tmp/reloader.log || fail "no log of the hold limit for PID $deaf"
for i in $(seq 1 100); do grep -q "PID $deaf: SIGKILLed at the drain timeout" /tmp/reloader.log && break; sleep 0.1; done
grep "PID $deaf" /tmp/reloader.log
grep -q "PID $deaf: SIGKILLed at the drain timeout" /tmp/reloader.log || fail "PID $deaf was not SIGKILLed at the drain timeout"
kill -0 $deaf 2>/dev/null && fail "PID $deaf still runs"

echo "--- SIGKILL mid-reload under load; the next reloader takes over"
touch /tmp/mode-ignoreterm
reloader reload --control $CTL > /dev/null || fail "reload to the SIGTERM-ignoring server"
rm /tmp/mode-ignoreterm
deaf=$(loadgen get 127.0.0.1:7000)
loadgen run 127.0.0.1:7000 -c 4 -d 25 > /tmp/kill-load.out &
LK=$!
sleep 1
# The next close is held up to the hold limit (1 s): kill the reloader then.
reloader reload --control $CTL > /dev/null 2>&1 &
for i in $(seq 1 200); do qdisc --ingress status --json | grep -q '"buffering":true' && break; sleep 0.01; done
qdisc --ingress status --json | grep -q '"buffering":true' || fail "the plug never buffered"
# Its watchdog would release the plug at once (security.sh shows that):
# killed with it, the plug stays buffering, the case the next start handles.
W=$(for p in $(pidof reloader); do [ "$(cat /proc/$p/comm)" = reloader-watch ] && echo $p; done)
[ -n "$W" ] || fail "no watchdog beside the reloader"
kill -9 $R $W
echo "reloader and watchdog killed with the plug buffering:"
qdisc --ingress status
loadgen get 127.0.0.1:7000 > /tmp/held.out &
HELD=$!
sleep 1
kill -0 $HELD 2>/dev/null || fail "a new connection completed while the plug was left buffering"
loadgen get 127.0.0.1:7001 > /dev/null || fail "a connection to port 7001 was held by the left-over plug"
start_reloader /tmp/reloader2.log
cat /tmp/reloader2.log
grep -q 'released a plug left buffering' /tmp/reloader2.log || fail "the new reloader did not say it released the plug"
wait $HELD || fail "the held connection failed after the restart"
echo "held connection completed after restart: $(cat /tmp/held.out)"
adopted=$(grep -c 'left by an earlier reloader: adopting it' /tmp/reloader2.log)
[ "$adopted" -ge 1 ] || fail "the new reloader adopted no orphan"
grep -q "found PID $deaf listening" /tmp/reloader2.log || fail "the SIGTERM-ignoring orphan PID $deaf was not found"
# The deaf orphan is SIGKILLed at the drain timeout (5 s).
for i in $(seq 1 150); do grep -q "PID $deaf: SIGKILLed at the drain timeout" /tmp/reloader2.log && break; sleep 0.1; done
grep -q "PID $deaf: SIGKILLed at the drain timeout" /tmp/reloader2.log || fail "orphan PID $deaf not SIGKILLed at the drain timeout"
wait $LK
cat /tmp/kill-load.out
grep -q ' failed=0 ' /tmp/kill-load.out || fail "failed requests across the SIGKILL and the takeover"
# Exactly one generation serves: the new reloader's.
gen1=$(sed -n 's/.*generation 1: PID \([0-9]*\) healthy.*/\1/p' /tmp/reloader2.log)
loadgen run 127.0.0.1:7000 -c 2 -n 200 > /tmp/after.out
cat /tmp/after.out
grep -q "servers=1 top_pid=$gen1(200)" /tmp/after.out || fail "not only PID $gen1 answers after the takeover"

echo "--- SIGTERM to the reloader in the middle of a reload"
touch /tmp/mode-slow
reloader reload --control $CTL > /dev/null 2>&1 &
sleep 0.5
t0=$(awk '{print int($1*1000)}' /proc/uptime)
kill -TERM $R; wait $R
t1=$(awk '{print int($1*1000)}' /proc/uptime)
rm /tmp/mode-slow
echo "reloader exited $(( t1 - t0 )) ms after SIGTERM, mid-reload"
tail -4 /tmp/reloader2.log
[ $(( t1 - t0 )) -lt 3000 ] || fail "the reloader took more than 3 s to end mid-reload"
qdisc --ingress status --json | grep -q '"buffering":false' || fail "the plug was left buffering"
sleep 2.5 # a `sleep 2` the killed shell started ends by itself
kill -TERM $OTHER; wait $OTHER
left=$(pidof reuse-server sleep)
[ -z "$left" ] || fail "processes left running: $left ($(for p in $left; do cat /proc/$p/cmdline | tr '\0' ' '; echo; done))"
echo "scenario: reloader-faults ok"
