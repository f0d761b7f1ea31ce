# --strategy steer under constant reloading: `reloader run --every 100ms`
# with a server that joins at once (no gate), while local and remote
# (veth) clients, IPv4 and IPv6, send REQUESTS requests each at c=1, then
# at c=32, each on a new connection. Every request must succeed, and no
# reload may hold anything.
# usage: steer.sh REQUESTS
set -u
N=${1:-10000}
fail() { echo "FAIL: $*"; tail -20 /tmp/reloader.log; exit 1; }
. "$(dirname "$0")/veth-pair.sh"

$S reloader run --strategy steer --addr 0.0.0.0:9000 --addr '[::]:9001' --every 100ms \
    --drain-timeout 10s --control /tmp/r.sock -- \
    env -u RELOADER_GATE reuse-server --listen 0.0.0.0:9000 --listen '[::]:9001' 2>/tmp/reloader.log &
R=$!
for i in $(seq 1 300); do grep -q 'reloader: serving' /tmp/reloader.log && break; sleep 0.1; done
grep -q 'reloader: serving' /tmp/reloader.log || fail "reloader did not start"
grep 'strategy steer' /tmp/reloader.log

for c in 1 32; do
    echo "-- c=$c, $N requests per client, local and remote, IPv4 and IPv6"
    # Each load spans at least 5 reloads however fast the machine.
    L=""
    $S loadgen run 127.0.0.1:9000 -c $c -n "$N" --min-servers 6 -d 900 > /tmp/l1.out & L="$L $!"
    $S loadgen run '[::1]:9001' -c $c -n "$N" --min-servers 6 -d 900 > /tmp/l2.out & L="$L $!"
    $C loadgen run 192.0.2.1:9000 -c $c -n "$N" --min-servers 6 -d 900 > /tmp/l3.out & L="$L $!"
    $C loadgen run '[2001:db8::1]:9001' -c $c -n "$N" --min-servers 6 -d 900 > /tmp/l4.out & L="$L $!"
    for p in $L; do wait $p; done
    for i in 1 2 3 4; do
        case $i in 1) w="local IPv4";; 2) w="local IPv6";; 3) w="remote IPv4";; 4) w="remote IPv6";; esac
        echo "   $w: $(head -1 /tmp/l$i.out)"
        grep -q ' failed=0 ' /tmp/l$i.out || fail "c=$c $w lost requests"
    done
done
kill -TERM $R; wait $R || fail "reloader exited $?"
ok=$(grep -c 'reload #[0-9]*: ok' /tmp/reloader.log)
echo "   $ok reloads ok, $(grep -c 'rolled back:' /tmp/reloader.log) rolled back"
grep 'steer:' /tmp/reloader.log
[ "$ok" -ge 10 ] || fail "only $ok reloads"
grep -q 'rolled back:' /tmp/reloader.log && fail "a reload rolled back"
grep 'reload #[0-9]*: ok' /tmp/reloader.log | grep -qv '| held - |' && fail "a steer reload held"
echo "scenario: steer ok"
