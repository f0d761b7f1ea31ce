# Remote clients. Two network namespaces joined by a veth pair stand for the
# server host (srv: 192.0.2.1, 2001:db8::1 on veth-s) and a client host
# (cli: 192.0.2.2, 2001:db8::2 on veth-c); the VM itself has no network card.
#
# usage: reloader-remote.sh path
#          the ingress path alone: what tc and ip show, that a held plug holds
#          only SYNs to the port (another port and ping go through), teardown
# usage: reloader-remote.sh load STRATEGY CONC REQUESTS EXPECT   (EXPECT: zero|failures)
#          reloading every 100 ms while remote IPv4, remote IPv6 and local
#          clients each send REQUESTS requests, CONC at a time
set -u
IP=/usr/sbin/ip
TC=/usr/sbin/tc
fail() { echo "FAIL: $*"; tail -30 /tmp/remote.log 2>/dev/null; exit 1; }
. "$(dirname "$0")/veth-pair.sh"

served() { # $1: output of loadgen run
    sed -n 's/.* failed=\([0-9]*\) .*/\1/p' "$1"
}

case $1 in
path)
    # The local tree on lo (fw: its nf_tables mark rule is per namespace);
    # the ingress path must leave that rule alone.
    $S qdisc setup --port 7000 > /dev/null || fail "lo setup"
    $S $TC qdisc show dev veth-s > /tmp/q-before
    $S $IP -o link show | sed 's/^[0-9]*: //; s/ link\/.*//' > /tmp/l-before
    $S qdisc --dev veth-s --ingress setup --port 7000 || fail "ingress setup"
    $S /usr/sbin/nft list table ip reuse_plug > /dev/null || fail "the ingress setup removed lo's mark rule (ip)"
    $S /usr/sbin/nft list table ip6 reuse_plug > /dev/null || fail "the ingress setup removed lo's mark rule (ip6)"
    $S qdisc --dev veth-s --ingress setup --port 7000 > /dev/null || fail "second setup (idempotent)"
    echo "--- tc -s qdisc show (srv)"; $S $TC -s qdisc show
    echo "--- tc filter show dev veth-s ingress"; $S $TC filter show dev veth-s ingress | tee /tmp/f-ingress
    echo "--- tc filter show dev ifb-veth-s-7000"; $S $TC filter show dev ifb-veth-s-7000
    echo "--- ip link (srv)"; $S $IP link
    grep -q 'action order 1: mirred (Egress Redirect to device ifb-veth-s-7000)' /tmp/f-ingress || fail "no mirred redirect to ifb-veth-s-7000"
    [ "$(grep -c 'mirred (Egress Redirect to device ifb-veth-s-7000)' /tmp/f-ingress)" = 2 ] || fail "expected IPv4 and IPv6 redirects"
    $S qdisc --dev veth-s --ingress status || fail "status says incomplete"

    # A server on the port and one on another port, on the server host.
    $S reuse-server --listen 0.0.0.0:7000 --listen '[::]:7000' 2>/tmp/s7000.log &
    $S reuse-server --listen 0.0.0.0:7001 2>/tmp/s7001.log &
    sleep 1
    $C loadgen get 192.0.2.1:7000 > /dev/null || fail "no answer on 7000 before the plug"
    $S qdisc --dev veth-s --ingress plug || fail "plug"
    $C loadgen get 192.0.2.1:7000 > /tmp/held4.out &
    H4=$!
    $C loadgen get '[2001:db8::1]:7000' > /tmp/held6.out &
    H6=$!
    sleep 1
    kill -0 $H4 2>/dev/null || fail "an IPv4 SYN to 7000 got through the buffering plug"
    kill -0 $H6 2>/dev/null || fail "an IPv6 SYN to 7000 got through the buffering plug"
    $C loadgen get 192.0.2.1:7001 > /dev/null || fail "a connection to another port was held"
    $C ping -c 1 -W 2 192.0.2.1 > /dev/null || fail "ping was held"
    $C ping -c 1 -W 2 2001:db8::1 > /dev/null || fail "IPv6 ping was held"
    $S qdisc --dev veth-s --ingress status --json | tee /tmp/st.json
    grep -q '"held_packets":2' /tmp/st.json || fail "the kernel does not show the 2 SYNs held"
    $S qdisc --dev veth-s --ingress release || fail "release"
    wait $H4 || fail "the held IPv4 connection failed after release"
    wait $H6 || fail "the held IPv6 connection failed after release"
    echo "held, then served: $(cat /tmp/held4.out) (IPv4), $(cat /tmp/held6.out) (IPv6)"
    $S qdisc --dev veth-s --ingress status --json | grep -q '"held_packets":0' || fail "packets still held after release"
    $S qdisc --dev veth-s --ingress teardown || fail "teardown"
    $S /usr/sbin/nft list table ip reuse_plug > /dev/null || fail "the ingress teardown removed lo's mark rule"
    $S $TC qdisc show dev veth-s > /tmp/q-after
    $S $IP -o link show | sed 's/^[0-9]*: //; s/ link\/.*//' > /tmp/l-after
    diff /tmp/q-before /tmp/q-after || fail "teardown left veth-s's qdiscs changed"
    diff /tmp/l-before /tmp/l-after || fail "teardown left the links changed"
    $C loadgen get 192.0.2.1:7000 > /dev/null || fail "no answer on 7000 after teardown"
    # Someone else's ingress qdisc is refused, not replaced.
    $S $TC qdisc add dev veth-s ingress
    if $S qdisc --dev veth-s --ingress setup --port 7000 2>/tmp/notours; then
        fail "setup replaced an ingress qdisc that was not ours"
    fi
    cat /tmp/notours
    grep -q 'veth-s already has an ingress qdisc, which this tool did not create' /tmp/notours || fail "no clear refusal"
    $S $IP link show ifb-veth-s-7000 2>/dev/null && fail "the refused setup left ifb-veth-s-7000"
    kill $(pidof reuse-server)
    echo "scenario: reloader-remote path ok"
    ;;
load)
    STRATEGY=$2 CONC=$3 N=$4 EXPECT=$5
    INGRESS=""
    [ "$STRATEGY" = plug ] && INGRESS="--ingress veth-s"
    $S reloader run --strategy "$STRATEGY" $INGRESS --addr 0.0.0.0:7000 --every 100ms \
        --drain-timeout 10s --control /tmp/rr.sock -- \
        reuse-server --listen 0.0.0.0:7000 --listen '[::]:7000' 2>/tmp/remote.log &
    R=$!
    for i in $(seq 1 300); do grep -q 'reloader: serving' /tmp/remote.log && break; sleep 0.1; done
    grep -q 'reloader: serving' /tmp/remote.log || fail "reloader did not start"
    # Each load spans at least 5 reloads however fast the machine; the
    # comparison without protection goes on until a remote request failed.
    SPAN4="--min-servers 6"
    [ "$EXPECT" = failures ] && SPAN4="--until-failure"
    $C loadgen run 192.0.2.1:7000 -c "$CONC" -n "$N" $SPAN4 -d 900 > /tmp/v4.out &
    L4=$!
    $C loadgen run '[2001:db8::1]:7000' -c "$CONC" -n "$N" --min-servers 6 -d 900 > /tmp/v6.out &
    L6=$!
    $S loadgen run 127.0.0.1:7000 -c "$CONC" -n "$N" --min-servers 6 -d 900 > /tmp/lo.out &
    LL=$!
    wait $L4; wait $L6; wait $LL
    kill -TERM $R
    wait $R
    rc=$?
    ok=$(grep -c 'reload #[0-9]*: ok' /tmp/remote.log)
    bad=$(grep -c 'reload #[0-9]*: rolled back' /tmp/remote.log)
    grep 'reload #' /tmp/remote.log | tail -2
    echo "remote IPv4: $(cat /tmp/v4.out | head -1)"
    echo "remote IPv6: $(cat /tmp/v6.out | head -1)"
    echo "local:       $(cat /tmp/lo.out | head -1)"
    grep -h 'example failure' /tmp/v4.out /tmp/v6.out /tmp/lo.out | head -5
    grep -c 'not settled' /tmp/remote.log
    f4=$(served /tmp/v4.out) f6=$(served /tmp/v6.out) fl=$(served /tmp/lo.out)
    echo "strategy=$STRATEGY c=$CONC: $ok reloads ok, $bad rolled back; failed: remote v4 $f4, remote v6 $f6, local $fl; reloader exit $rc"
    [ "$rc" = 0 ] || fail "reloader exited $rc"
    # Six generations answered: the sixth can answer before its reload is
    # logged (it joins before the old one's close ends the reload), so at
    # least four reloads completed and a fifth had begun.
    [ "$ok" -ge 4 ] || fail "too few reloads ($ok)"
    case $EXPECT in
      zero)
        [ "$f4" = 0 ] && [ "$f6" = 0 ] && [ "$fl" = 0 ] || fail "failed requests (v4 $f4, v6 $f6, local $fl)"
        [ "$bad" = 0 ] || fail "$bad reloads rolled back"
        ;;
      failures)
        [ $((f4 + f6)) -gt 0 ] || fail "no remote request failed without protection: the comparison has no teeth"
        ;;
    esac
    echo "scenario: reloader-remote load $STRATEGY c=$CONC ok"
    ;;
*)
    fail "usage: reloader-remote.sh path | load STRATEGY CONC REQUESTS EXPECT"
    ;;
esac
