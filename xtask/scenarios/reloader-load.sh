# Constant reloading under load: `reloader run --every 100ms` while loadgen
# sends REQUESTS requests, CONC at a time, each on a new TCP connection.
# usage: reloader-load.sh STRATEGY CONC REQUESTS EXPECT [keepalive|migrate_req|egress|port2]
#   EXPECT: zero|few (at most 0.1% failed)|failures; keepalive: connections live across reloads (-k);
#   migrate_req: net.ipv4.tcp_migrate_req=1 first (the plug still holds);
#   egress: the local hold on lo's root tree (`--local-hold egress`), set up first with `qdisc setup`;
#   port2: the server listens on 7000 and 7001 (both --addr), the load goes to 7001
set -u
STRATEGY=$1 CONC=$2 REQUESTS=$3 EXPECT=$4 KEEP=${5:-}
K=""
[ "$KEEP" = keepalive ] && K="-k"
if [ "$KEEP" = migrate_req ]; then
    echo 1 > /proc/sys/net/ipv4/tcp_migrate_req || { echo "FAIL: cannot set tcp_migrate_req"; exit 1; }
fi
fail() { echo "FAIL: $*"; tail -20 /tmp/reloader.log; exit 1; }

HOLD="" ADDRS="" LISTEN="" PORT=7000
if [ "$KEEP" = port2 ]; then
    ADDRS="--addr 127.0.0.1:7000 --addr 127.0.0.1:7001"
    LISTEN="--listen 127.0.0.1:7000 --listen 127.0.0.1:7001"
    PORT=7001
fi
if [ "$KEEP" = egress ]; then
    qdisc setup > /dev/null || fail "qdisc setup"
    HOLD="--local-hold egress"
fi

reloader run --strategy "$STRATEGY" $HOLD $ADDRS --every 100ms --drain-timeout 10s --control /tmp/r.sock -- reuse-server $LISTEN 2>/tmp/reloader.log &
R=$!
for i in $(seq 1 300); do grep -q 'reloader: serving' /tmp/reloader.log && break; sleep 0.1; done
grep -q 'reloader: serving' /tmp/reloader.log || fail "reloader did not start"

# The load spans reloads however fast the machine: past REQUESTS it goes on
# until 6 generations answered (5 reloads), or, when failures are expected,
# until one request failed; at most 15 minutes either way.
case $EXPECT in
  failures) SPAN="--until-failure" ;;
  *) SPAN="--min-servers 6" ;;
esac
loadgen run 127.0.0.1:$PORT -c "$CONC" -n "$REQUESTS" $K $SPAN -d 900 | tee /tmp/load.out
# Failures expected: the load ended at its first, maybe before the reload
# whose close caused it was logged; that reload is waited for on the log.
if [ "$EXPECT" = failures ]; then
    for i in $(seq 1 600); do grep -q 'reload #[0-9]*: ok' /tmp/reloader.log && break; sleep 0.1; done
fi
kill -TERM $R
wait $R
rc=$?
grep 'reload #' /tmp/reloader.log | head -3
grep 'reload #' /tmp/reloader.log | tail -2
ok=$(grep -c 'reload #[0-9]*: ok' /tmp/reloader.log)
bad=$(grep -c 'reload #[0-9]*: rolled back' /tmp/reloader.log)
echo "strategy=$STRATEGY c=$CONC: $ok reloads ok, $bad rolled back; reloader exit $rc"
grep 'reloader: exit' /tmp/reloader.log
grep 'fallback:' /tmp/reloader.log
[ "$rc" = 0 ] || fail "reloader exited $rc"
# Six generations answered: the sixth can answer before its reload is
# logged (it joins before the old one's close ends the reload), so at
# least four reloads completed and a fifth had begun. With failures
# expected the load ends at the first, which one reload is enough to cause.
MIN=4
[ "$EXPECT" = failures ] && MIN=1
[ "$ok" -ge $MIN ] || fail "too few reloads during the load ($ok)"
failed=$(sed -n 's/.* failed=\([0-9]*\) .*/\1/p' /tmp/load.out)
case $EXPECT in
  zero)
    [ "$failed" = 0 ] || fail "$failed failed requests"
    [ "$bad" = 0 ] || fail "$bad reloads rolled back"
    ;;
  few)
    # migrate: the kernel's migration is not lossless under load (the soak);
    # it must still lose no more than 0.1%.
    [ "$failed" -le $((REQUESTS / 1000)) ] || fail "$failed failed requests (more than 0.1%)"
    [ "$bad" = 0 ] || fail "$bad reloads rolled back"
    ;;
  failures)
    [ "$failed" -gt 0 ] || fail "no failed requests without protection: the comparison has no teeth"
    ;;
esac
head -3 /tmp/reloader.log | grep 'strategy'
echo "scenario: reloader-load $STRATEGY c=$CONC $KEEP ok (failed requests: $failed)"
