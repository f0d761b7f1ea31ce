# ab (a client nobody here wrote: HTTP/1.0, a new connection per request,
# its request sent the moment connect completes) against reuse-server under
# `reloader run` with its defaults.
# usage: reloader-ab.sh reload|idle REQUESTS [RELOADER-FLAGS...]
#   reload: reload every 100 ms, ab at c=1 then c=32;
#   idle: no reloads (the hold path installed), ab at c=32 three times.
# Each ab run must complete every request (ab stops with "The timeout
# specified has expired" when one is never answered) with 0 failed, and no
# old server may cut a connection at its drain timeout.
set -u
MODE=$1 REQUESTS=$2
shift 2
fail() { echo "FAIL: $*"; tail -20 /tmp/reloader.log; exit 1; }

every=""
[ "$MODE" = reload ] && every="--every 100ms"
reloader run $every --drain-timeout 10s --control /tmp/r.sock "$@" -- reuse-server 2>/tmp/reloader.log &
R=$!
for i in $(seq 1 300); do grep -q 'reloader: serving' /tmp/reloader.log && break; sleep 0.1; done
grep -q 'reloader: serving' /tmp/reloader.log || fail "reloader did not start"

# The guest has room for ab's churn (`tcp_max_tw_buckets`, its init); a socket
# that skipped TIME_WAIT resets its client's late segments (ab's "exception").
tw_overflows() { sh "$(dirname "$0")/tw-overflows.sh"; }

ab_run() { # CONC
    /usr/sbin/ab -q -s 10 -n "$REQUESTS" -c "$1" http://127.0.0.1:7000/ > /tmp/ab.out 2>&1
    rc=$?
    done_=$(sed -n 's/^Complete requests: *//p' /tmp/ab.out)
    failed=$(sed -n 's/^Failed requests: *//p' /tmp/ab.out)
    non2xx=$(sed -n 's/^Non-2xx responses: *//p' /tmp/ab.out)
    echo "ab c=$1: exit $rc, complete ${done_:-?}, failed ${failed:-?}, non-2xx ${non2xx:-0}, TIME_WAIT overflows so far $(tw_overflows)"
    [ "$(tw_overflows)" = 0 ] || fail "the guest's TIME_WAIT table overflowed: raise net.ipv4.tcp_max_tw_buckets (the init sets it)"
    [ "$rc" = 0 ] || { cat /tmp/ab.out; fail "ab c=$1 did not finish: a request was never answered"; }
    [ "$done_" = "$REQUESTS" ] && [ "$failed" = 0 ] && [ -z "$non2xx" ] || { cat /tmp/ab.out; fail "ab c=$1 lost requests"; }
}

if [ "$MODE" = reload ]; then
    ab_run 1
    ab_run 32
else
    ab_run 32; ab_run 32; ab_run 32
fi
kill -TERM $R
wait $R
rc=$?
ok=$(grep -c 'reload #[0-9]*: ok' /tmp/reloader.log)
bad=$(grep -c 'reload #[0-9]*: rolled back' /tmp/reloader.log)
echo "mode=$MODE: $ok reloads ok, $bad rolled back; reloader exit $rc"
[ "$rc" = 0 ] || fail "reloader exited $rc"
[ "$bad" = 0 ] || fail "$bad reloads rolled back"
if [ "$MODE" = reload ]; then
    [ "$ok" -ge 5 ] || fail "too few reloads during the load ($ok)"
fi
if grep 'cut at the drain timeout' /tmp/reloader.log; then fail "an old server cut connections at its drain timeout"; fi
if grep 'drain cut\|drain timeout cut' /tmp/reloader.log; then fail "the reloader saw a drain cut"; fi
echo "scenario: reloader-ab $MODE ok"
