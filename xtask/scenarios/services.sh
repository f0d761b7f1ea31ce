# Many services on one host (#21): three reloaders side by side in one
# network namespace, each with its own server and its own plugs:
#   s1: port 7000;  s2: ports 8000 and 8443, one server;
#   s3: port 9000, also holding remote clients on veth-s (--ingress).
# usage: services.sh REQUESTS [--control|--stop]   (per port, c=8; the issue asks 5000)
# --control: the middle phase does not kill s1 (three phases alike), to
# see how often a phase's longest request is the longest by chance.
# --stop: the middle phase freezes s1 (SIGSTOP, then SIGCONT) instead of
# killing it: its looks stop as with the kill, its processes stay.
set -u
N=${1:-5000} KILL=1
case "${2:-}" in --control) KILL=0 ;; --stop) KILL=2 ;; esac
fail() { echo "FAIL: $*"; for f in /tmp/s?.log; do echo "== $f"; tail -8 "$f"; done; exit 1; }
. "$(dirname "$0")/veth-pair.sh"

start() { # $1 = name, rest = reloader run arguments
    n=$1; shift
    # The last run's log goes first: the job below truncates it only once
    # it runs, and the wait would read the old one's "serving" meanwhile.
    rm -f /tmp/$n.log
    $S reloader run --control /tmp/$n.sock "$@" 2>/tmp/$n.log &
    eval "P_$n=\$!"
    for i in $(seq 1 300); do grep -qs 'reloader: serving' /tmp/$n.log && break; sleep 0.1; done
    grep -qs 'reloader: serving' /tmp/$n.log || { eval "stuck \$P_$n"; fail "$n did not start"; }
}
# stuck PID: where each thread of PID and of its children waits (a start
# that hangs says where).
stuck() {
    for p in $1 $(cat /proc/$1/task/*/children 2>/dev/null); do
        for t in /proc/$p/task/*; do
            echo "   $p/${t##*/} $(cat $t/comm 2>/dev/null): wchan $(cat $t/wchan 2>/dev/null), syscall $(cut -d' ' -f1-3 $t/syscall 2>/dev/null)"
            cat $t/stack 2>/dev/null | head -12
        done
    done
}
# plug_sent DEV PORT: the packets that went through that service's plug.
plug_sent() {
    $S qdisc --dev "$1" --ingress --port "$2" status --json | sed -n 's/.*"sent_packets":\([0-9]*\).*/\1/p'
}
# loads PORT...: one loadgen per port (9000 from the client host), N
# requests each, spanning at least 3 reloads of a reloading service.
loads() {
    for p in "$@"; do
        case $p in
          9000) $C loadgen run 192.0.2.1:9000 -c 8 -n "$N" --min-servers 4 -d 900 --tsv /tmp/l$p.tsv > /tmp/l$p.out & ;;
          *) $S loadgen run 127.0.0.1:$p -c 8 -n "$N" --min-servers 4 -d 900 --tsv /tmp/l$p.tsv > /tmp/l$p.out & ;;
        esac
        eval "L_$p=\$!"
    done
}
max_ms() { sed -n 's/.* max=\([0-9.]*\) .*/\1/p' "$1" | cut -d. -f1; }
p99_ms() { sed -n 's/.* p99=\([0-9.]*\) .*/\1/p' "$1"; }

start s1 --addr 127.0.0.1:7000 --every 100ms --drain-timeout 10s -- reuse-server --listen 127.0.0.1:7000
start s2 --addr 127.0.0.1:8000 --addr 127.0.0.1:8443 --every 100ms --drain-timeout 10s -- \
    reuse-server --listen 127.0.0.1:8000 --listen 127.0.0.1:8443
start s3 --addr 0.0.0.0:9000 --ingress veth-s --every 100ms --drain-timeout 10s -- reuse-server --listen 0.0.0.0:9000
$S qdisc --dev lo --ingress status | grep -E '^(ifb|owner)'

echo "-- all three reload every 100 ms under load on every port ($N requests each, c=8)"
b7=$(plug_sent lo 7000); b8=$(plug_sent lo 8000); b9=$(plug_sent veth-s 9000)
loads 7000 8000 8443 9000
for p in 7000 8000 8443 9000; do eval "wait \$L_$p"; done
for p in 7000 8000 8443 9000; do
    echo "   port $p: $(head -1 /tmp/l$p.out)"
    grep -q ' failed=0 ' /tmp/l$p.out || fail "port $p lost requests"
done
for n in s1 s2 s3; do
    echo "   $n: $(grep -c 'reload #[0-9]*: ok' /tmp/$n.log) reloads ok, $(grep -c 'rolled back' /tmp/$n.log) rolled back"
    grep -q 'rolled back' /tmp/$n.log && fail "$n rolled back a reload"
done
A8=$(max_ms /tmp/l8000.out) A4=$(max_ms /tmp/l8443.out) A9=$(max_ms /tmp/l9000.out)
Ap="$(p99_ms /tmp/l8000.out)/$(p99_ms /tmp/l8443.out)/$(p99_ms /tmp/l9000.out)"
# Each plug passed its own service's SYNs, and no other's: s2's carries
# both its ports, s1's one port, s3's veth plug the remote port only.
d7=$(( $(plug_sent lo 7000) - b7 )); d8=$(( $(plug_sent lo 8000) - b8 )); d9=$(( $(plug_sent veth-s 9000) - b9 ))
echo "   SYNs through each plug: ifb-lo-7000 $d7, ifb-lo-8000 $d8 (8000 and 8443), veth-s's 9000 plug $d9"
# The loads run past N until they have seen 4 servers: compare with the
# connections each really made (a held SYN may be sent again: up to +50%).
made() { sed -n 's/^requests=\([0-9]*\) .*/\1/p' /tmp/l$1.out; }
m7=$(made 7000) m8=$(( $(made 8000) + $(made 8443) )) m9=$(made 9000)
[ "$d7" -ge "$m7" ] && [ "$d7" -lt $((m7 + m7 / 2)) ] || fail "s1's plug passed $d7 SYNs for $m7 connections"
[ "$d8" -ge "$m8" ] && [ "$d8" -lt $((m8 + m8 / 2)) ] || fail "s2's plug passed $d8 SYNs for $m8 connections"
[ "$d9" -ge "$m9" ] && [ "$d9" -lt $((m9 + m9 / 2)) ] || fail "s3's remote plug passed $d9 SYNs for $m9 connections"
for n in s1 s2 s3; do grep -q 'held [1-9]' /tmp/$n.log || fail "$n never held"; done

echo "-- s1 holds under the others' load: to its hold limit, killed (-9) inside the hold, to its limit again"
kill -TERM $P_s1; wait $P_s1
# s1's server ignores WINCH: each of its holds lasts until the 3 s hold
# limit. Three phases of one shape, s2 and s3 reloading under load on their
# ports while s1 holds; the middle one kills s1 (reloader and watchdog)
# inside its hold, so its plug stays closed, and nothing else may change.
# The phases without the kill come before and after it: each phase leaves
# more TIME_WAIT sockets that the others' looks walk, so a kill phase that
# always ran second would pay for the order, not for the kill.
start_s1() {
    start s1 --addr 127.0.0.1:7000 --stop-signal WINCH --hold-limit 3s --drain-timeout 4s -- reuse-server --listen 127.0.0.1:7000
    S1=""
    for p in $(pidof reloader); do tr '\0' ' ' < /proc/$p/cmdline | grep -q '/tmp/s1.sock' && S1="$S1 $p"; done
    [ "$(echo $S1 | wc -w)" = 2 ] || fail "expected s1's reloader and its watchdog, got: $S1"
}
start_s1
reloads() { grep -c 'reload #[0-9]*: ok' /tmp/$1.log; }
# longest_hold NAME LINE: the longest hold that service logged past LINE.
longest_hold() {
    tail -n +"$(( $2 + 1 ))" /tmp/$1.log | sed -n 's/.*| held \([0-9.]*\)\(m\?s\).*/\1 \2/p' |
        awk '{ v = $2 == "s" ? $1 * 1000 : $1; if (v > m) m = v } END { printf "%d", m }'
}
buffering() { ls /run/reuse-plug/*ifb-lo-7000.buffering > /dev/null 2>&1; }
# Each generation s1 leaves listening at its hold limit is SIGKILLed at
# its drain timeout (4 s), under a brief hold of its own: a phase starts
# once none is left, so the hold it waits for is its reload's.
pending_kills() {
    echo $(( $(grep -c 'it will be SIGKILLed at the drain timeout' /tmp/s1.log) - $(grep -c 'SIGKILLed at the drain timeout (' /tmp/s1.log) ))
}
time_wait() { $S sed -n 's/^TCP:.* tw \([0-9]*\).*/\1/p' /proc/net/sockstat; }
# phase KILL: 1 kills s1 inside its hold, 0 lets the hold run to its limit.
phase() {
    for i in $(seq 1 300); do [ "$(pending_kills)" -le 0 ] && break; sleep 0.1; done
    [ "$(pending_kills)" -le 0 ] || fail "s1 still has $(pending_kills) generation(s) to SIGKILL after 30 s"
    rm -f /tmp/stop
    o2=$(wc -l < /tmp/s2.log) o3=$(wc -l < /tmp/s3.log) tw=$(time_wait)
    for p in 8000 8443 9000; do
        case $p in
          9000) $C loadgen run 192.0.2.1:9000 -c 8 --until-exists /tmp/stop -d 300 --tsv /tmp/l$p.tsv > /tmp/l$p.out & ;;
          *) $S loadgen run 127.0.0.1:$p -c 8 --until-exists /tmp/stop -d 300 --tsv /tmp/l$p.tsv > /tmp/l$p.out & ;;
        esac
        eval "L_$p=\$!"
    done
    $S reloader reload --control /tmp/s1.sock > /tmp/s1.reload 2>&1 &
    R=$!
    # The reload may first SIGKILL the generation the last phase left
    # listening (its drain timeout) and start a server on a loaded guest:
    # wait for the hold itself, or for the reload to end without one.
    for i in $(seq 1 1200); do buffering && break; kill -0 $R 2>/dev/null || break; sleep 0.05; done
    buffering || { wait $R; echo "reload exited $?: $(cat /tmp/s1.reload)"; cat /tmp/s1.log; fail "s1 never held"; }
    r2=$(( $(reloads s2) + 10 )) r3=$(( $(reloads s3) + 10 ))
    if [ "$1" = 2 ]; then kill -STOP $S1; elif [ "$1" = 1 ]; then kill -9 $S1; else
        while buffering; do sleep 0.05; done
    fi
    # The loads span the hold (or the kill) and 10 of s2's and s3's reloads.
    while [ "$(reloads s2)" -lt $r2 ] || [ "$(reloads s3)" -lt $r3 ]; do sleep 0.05; done
    touch /tmp/stop
    for p in 8000 8443 9000; do eval "wait \$L_$p"; done
    [ "$1" = 2 ] && kill -CONT $S1
    wait $R
    H2=$(longest_hold s2 $o2) H3=$(longest_hold s3 $o3)
    echo "   longest holds of s2, s3 meanwhile: $H2 ms, $H3 ms; TIME_WAIT sockets $tw -> $(time_wait)"
    for p in 8000 8443 9000; do
        echo "   port $p: $(head -1 /tmp/l$p.out)"
        grep -q ' failed=0 ' /tmp/l$p.out || fail "port $p lost requests (s1 killed: $1)"
    done
    [ "$1" != 0 ] || grep -q 'hold limit' /tmp/s1.log || fail "s1's hold did not reach its limit (the comparison needs it)"
}
phase 0
A8=$(max_ms /tmp/l8000.out) A4=$(max_ms /tmp/l8443.out) A9=$(max_ms /tmp/l9000.out)
Ap="$(p99_ms /tmp/l8000.out)/$(p99_ms /tmp/l8443.out)/$(p99_ms /tmp/l9000.out)"
phase $KILL
B8=$(max_ms /tmp/l8000.out) B4=$(max_ms /tmp/l8443.out) B9=$(max_ms /tmp/l9000.out)
Bp="$(p99_ms /tmp/l8000.out)/$(p99_ms /tmp/l8443.out)/$(p99_ms /tmp/l9000.out)"
if [ $KILL = 1 ]; then
    $S qdisc --dev lo --ingress --port 7000 status --json | grep -q '"buffering":true' || fail "s1's plug is not left buffering (the test needs it)"
    echo "-- s1 starts again: it releases its own plug, nobody else's"
    start_s1
    grep 'released a plug left buffering' /tmp/s1.log
    grep -q 'released a plug left buffering by an earlier reloader (ifb-lo-7000)' /tmp/s1.log || fail "s1 did not release its own plug"
    [ "$(grep -c 'released a plug left buffering' /tmp/s1.log)" = 1 ] || fail "s1 released more than its own plug"
    $S loadgen get 127.0.0.1:7000 > /dev/null || fail "s1 does not serve after its restart"
    grep -q 'released a plug' /tmp/s2.log /tmp/s3.log && fail "another service's plug was touched"
fi

phase 0
C8=$(max_ms /tmp/l8000.out) C4=$(max_ms /tmp/l8443.out) C9=$(max_ms /tmp/l9000.out)
Cp="$(p99_ms /tmp/l8000.out)/$(p99_ms /tmp/l8443.out)/$(p99_ms /tmp/l9000.out)"
case $KILL in 0) middle="to its limit (control: no kill)" ;; 1) middle="killed in its hold" ;; 2) middle="stopped (SIGSTOP) in its hold" ;; esac
echo "   longest request, s1 holding to its limit / $middle / to its limit: 8000 ${A8}/${B8}/${C8} ms, 8443 ${A4}/${B4}/${C4} ms, 9000 ${A9}/${B9}/${C9} ms (s1's hold limit 3000 ms)"
# A SYN caught by s1's plug would wait until s1 starts again, after these
# loads: its request fails (loadgen gives up at 10 s), which `phase`
# asserts never happens. The longest requests are printed, not compared:
# each is a sample maximum that follows the service's own longest hold,
# and under load a SYN retransmission (1 s) lands in any phase by chance
# (seen: 2,265 ms on 8000 with the kill, its own longest hold 534 ms).
longer() { [ "$2" -gt "$1" ] && [ "$2" -gt "$3" ] && echo longer || echo "not longer"; }
echo "   p99 on 8000/8443/9000, in the same order: $Ap ms, $Bp ms, $Cp ms"
echo "   the middle phase against the two around it: 8000 $(longer $A8 $B8 $C8), 8443 $(longer $A4 $B4 $C4), 9000 $(longer $A9 $B9 $C9)"

for n in s1 s2 s3; do eval "kill -TERM \$P_$n"; eval "wait \$P_$n" || fail "$n exited $?"; done
for p in 7000 8000 9000; do $S qdisc --dev lo --ingress --port $p teardown > /dev/null; done
$S qdisc --dev veth-s --ingress --port 9000 teardown > /dev/null
$S /usr/sbin/tc qdisc show dev lo | grep -q ingress && fail "the last teardown left lo's ingress qdisc"
echo "scenario: services ok"
