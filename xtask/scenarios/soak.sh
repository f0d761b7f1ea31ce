# The soak: each strategy in turn reloads every 100 ms for its share of
# MINUTES under a mixed load that stops by itself (new connections c=8,
# keep-alive c=8, /delay/1000 requests c=4; IPv4 and IPv6 each). Every 10 s the
# reloader's RSS, open fds, threads and children, the zombies in the VM and
# the plug's kernel drop counter are sampled. It fails on a failed request,
# a zombie, a server left running after the reloader exits, or a reloader
# whose RSS or fd count still grows in the last third of its run.
# usage: soak.sh MINUTES "STRATEGIES"     (results in $RESULTS or /results)
set -u
MINUTES=$1 STRATEGIES=$2
OUT=${RESULTS:-/results}
mkdir -p $OUT
fail() { echo "SOAK-FAIL: $*"; tail -20 /tmp/soak-$s.log 2>/dev/null; exit 1; }

n=$(echo $STRATEGIES | wc -w)
SECS=$((MINUTES * 60 / n))
# Every 10 s, or more often in a short run: at least 12 samples.
STEP=$((SECS / 12)); [ $STEP -gt 10 ] && STEP=10; [ $STEP -lt 2 ] && STEP=2
echo "SOAK-INFO kernel $(uname -r) cpus $(nproc); $SECS s per strategy: $STRATEGIES"
field() { sed -n "s/^$1:[[:space:]]*\([0-9]*\).*/\1/p" /proc/$2/status; }
zombie_pids() { grep -l '^State:[[:space:]]*Z' /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3; }
# A child exits, then is reaped within 50 ms: only a zombie seen in two
# samples 10 s apart is one nobody reaps.
prev=""
count_zombies() { # sets ZS (not in a subshell: it keeps prev)
    now=$(zombie_pids); ZS=0
    for p in $now; do case " $prev " in *" $p "*) ZS=$((ZS + 1)) ;; esac; done
    prev=$now
}
for s in $STRATEGIES; do
    reloader run --strategy $s --addr 127.0.0.1:7000 --addr '[::1]:7000' --every 100ms \
        --drain-timeout 5s --control /tmp/soak.sock -- \
        reuse-server --listen 127.0.0.1:7000 --listen '[::1]:7000' 2>/tmp/soak-$s.log &
    R=$!
    for i in $(seq 1 300); do grep -q 'reloader: serving' /tmp/soak-$s.log && break; sleep 0.1; done
    grep -q 'reloader: serving' /tmp/soak-$s.log || fail "$s: reloader did not start"
    L=""
    loadgen run 127.0.0.1:7000 -c 8 -d $SECS > /tmp/l-new4 & L="$L $!"
    loadgen run '[::1]:7000' -c 8 -d $SECS -k > /tmp/l-ka6 & L="$L $!"
    loadgen run 127.0.0.1:7000 --path /delay/1000 -c 4 -d $SECS > /tmp/l-slow4 2>&1 & L="$L $!"
    loadgen run '[::1]:7000' -c 8 -d $SECS > /tmp/l-new6 & L="$L $!"
    echo "time_s	rss_kb	fds	threads	children	zombies	plug_drops	reloads" > $OUT/soak-$s.tsv
    t=0
    while [ $t -le $SECS ]; do
        drops=$(qdisc --ingress status --json | sed -n 's/.*"drops":\([0-9]*\).*/\1/p')
        kids=$(grep -l "^PPid:[[:space:]]*$R\$" /proc/[0-9]*/status 2>/dev/null | wc -l)
        reloads=$(grep -c 'reload #[0-9]*: ok' /tmp/soak-$s.log)
        count_zombies
        row="$t	$(field VmRSS $R)	$(ls /proc/$R/fd | wc -l)	$(field Threads $R)	$kids	$ZS	${drops:--}	$reloads"
        echo "$row" >> $OUT/soak-$s.tsv
        echo "SOAK $s $row"
        sleep $STEP; t=$((t + STEP))
    done
    for l in $L; do wait $l; done
    kill -TERM $R; wait $R; rc=$?
    sleep 0.5
    prev=$(zombie_pids)
    left=$(pidof reuse-server)
    cp /tmp/soak-$s.log $OUT/soak-$s.log
    for f in new4 ka6 slow4 new6; do echo "SOAK-LOAD $s $f: $(head -1 /tmp/l-$f)"; done
    failed=$(cat /tmp/l-new4 /tmp/l-ka6 /tmp/l-slow4 /tmp/l-new6 | sed -n 's/.* failed=\([0-9]*\) .*/\1/p' | awk '{s += $1} END {print s + 0}')
    total=$(cat /tmp/l-new4 /tmp/l-ka6 /tmp/l-slow4 /tmp/l-new6 | sed -n 's/^requests=\([0-9]*\) .*/\1/p' | awk '{s += $1} END {print s + 0}')
    ok=$(grep -c 'reload #[0-9]*: ok' /tmp/soak-$s.log)
    bad=$(grep -c 'reload #[0-9]*: rolled back' /tmp/soak-$s.log)
    echo "SOAK-RESULT $s: $total requests, $failed failed; $ok reloads ok, $bad rolled back; reloader exit $rc; left running: ${left:-none}"
    [ "$rc" = 0 ] || fail "$s: reloader exited $rc"
    [ "$failed" = 0 ] || fail "$s: $failed failed requests"
    [ -z "$left" ] || fail "$s: servers left running after the reloader exited: $left"
    sleep 1
    count_zombies
    [ "$ZS" = 0 ] || fail "$s: zombies left after the reloader exited: $now"
    # Levelled off: the last third's peak no higher than the middle third's,
    # within what a moment holds (fds: up to 4 more, the sockets and pidfds
    # of generations still draining; RSS: 5%, allocator noise). A leak of
    # one fd per reload would add hundreds.
    awk -F'\t' -v s=$s 'NR > 1 { n++; rss[n] = $2; fd[n] = $3; z += $6 }
        END {
            a = int(n / 3); b = int(2 * n / 3);
            for (i = a + 1; i <= b; i++) { if (rss[i] > mr) mr = rss[i]; if (fd[i] > mf) mf = fd[i] }
            for (i = b + 1; i <= n; i++) { if (rss[i] > lr) lr = rss[i]; if (fd[i] > lf) lf = fd[i] }
            printf "SOAK-GROWTH %s: RSS peak %d kB (middle third) -> %d kB (last third); fds %d -> %d; zombie samples %d\n", s, mr, lr, mf, lf, z
            exit !(n >= 6 && lr <= mr * 1.05 && lf <= mf + 4 && z == 0)
        }' $OUT/soak-$s.tsv || fail "$s: the reloader still grows, or zombies were seen (see soak-$s.tsv)"
done
sync
echo "SOAK-DONE"
