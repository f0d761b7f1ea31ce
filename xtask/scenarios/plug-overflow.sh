# More SYNs than the plug's byte limit while it holds. What happens: the
# plug drops the excess (the kernel's drop counter, in `qdisc status` and
# `reloader status`), the reloader logs it after the release, and the
# clients whose SYN was dropped retransmit it about 1 s later and are
# served: nothing fails, those requests take a second longer.
# The hold is made long on purpose: the old server blocks SIGTERM, so each
# close is held to the 1 s hold limit.
set -u
fail() { echo "FAIL: $*"; tail -20 /tmp/ov.log; exit 1; }
# 600 bytes: about 8 SYNs on lo (74 bytes each with the link-layer header).
# The reloader's own hold path (lo's ingress, ifb-lo-7000), set up beforehand with
# the small limit; --no-setup keeps it as it is.
qdisc --ingress setup --port 7000 --limit 600 > /dev/null || fail "qdisc setup"
reloader run --strategy plug --no-setup --hold-limit 1s --drain-timeout 3s --control /tmp/ov.sock \
    -- reuse-server --ignore-sigterm 2>/tmp/ov.log &
R=$!
for i in $(seq 1 300); do grep -q 'reloader: serving' /tmp/ov.log && break; sleep 0.1; done
grep -q 'reloader: serving' /tmp/ov.log || fail "reloader did not start"
before=$(qdisc --ingress status --json | sed -n 's/.*"drops":\([0-9]*\).*/\1/p')
loadgen run 127.0.0.1:7000 -c 40 -n 2000 --tsv /tmp/ov.tsv > /tmp/ov.out &
L=$!
sleep 0.5
reloader reload --control /tmp/ov.sock || fail "the reload failed"
wait $L
after=$(qdisc --ingress status --json | sed -n 's/.*"drops":\([0-9]*\).*/\1/p')
reloader status --control /tmp/ov.sock
kill -TERM $R; wait $R
cat /tmp/ov.out
grep 'held\|dropped' /tmp/ov.log | grep -v '^reuse-server' | head -5
echo "plug drops (kernel): $before -> $after"
[ "$after" -gt "$before" ] || fail "no SYN was dropped: the burst did not exceed the limit"
grep -q 'dropped [0-9]* SYN(s) over its limit' /tmp/ov.log || fail "the reloader did not log the drops"
f=$(sed -n 's/.* failed=\([0-9]*\) .*/\1/p' /tmp/ov.out)
[ "$f" = 0 ] || fail "$f requests failed: clients did not recover by retrying their SYN"
slow=$(awk -F'\t' 'NR > 1 && $3 + 0 >= 1000 { n++ } END { print n + 0 }' /tmp/ov.tsv)
echo "requests that took 1 s or more (a retransmitted SYN): $slow"
echo "scenario: plug-overflow ok"
