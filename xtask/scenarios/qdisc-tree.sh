# `qdisc` on a kernel with sch_plug, cross-checked with iproute2 and nft:
# the tree and rule equal the seed's, the plug holds and releases real
# connections (IPv4 and IPv6), setup is idempotent, teardown restores.
set -u
TC=/usr/sbin/tc
NFT=/usr/sbin/nft
fail() { echo "FAIL: $*"; exit 1; }
step() { echo "--- $*"; }

step probe
qdisc probe || fail "probe reports something missing"

$TC qdisc show dev lo > /tmp/qdisc-before
$NFT list ruleset > /tmp/nft-before

step "setup (fw)"
qdisc setup || fail "setup"
$TC qdisc show dev lo > /tmp/q1b   # to compare with a second setup (no counters)
$TC -s qdisc show dev lo | tee /tmp/q1
$TC filter show dev lo | tee /tmp/f1
$NFT list ruleset | tee /tmp/n1
grep -q 'qdisc prio 1: root refcnt [0-9]* bands 4 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1' /tmp/q1 || fail "prio root"
for b in 1 2 3; do grep -q "qdisc pfifo ${b}0: parent 1:$b limit 1000p" /tmp/q1 || fail "pfifo ${b}0:"; done
grep -q 'qdisc plug 40: parent 1:4' /tmp/q1 || fail "plug 40:"
grep -q 'filter parent 1: protocol ip pref 1 fw chain 0 handle 0x1000000/0x1000000 classid 1:4' /tmp/f1 || fail "fw filter (ip)"
grep -q 'filter parent 1: protocol ipv6 pref 2 fw chain 0 handle 0x1000000/0x1000000 classid 1:4' /tmp/f1 || fail "fw filter (ipv6)"
grep -q 'type route hook output priority mangle; policy accept;' /tmp/n1 || fail "chain"
grep -q 'ip saddr 127.0.0.1 tcp flags syn / syn,ack meta mark set meta mark | 0x01000000' /tmp/n1 || fail "ip rule"
grep -q 'ip6 saddr ::1 tcp flags syn / syn,ack meta mark set meta mark | 0x01000000' /tmp/n1 || fail "ip6 rule"
qdisc status || fail "status says incomplete"

step "setup twice equals setup once"
qdisc setup || fail "second setup"
$TC qdisc show dev lo > /tmp/q2
$TC filter show dev lo > /tmp/f2
$NFT list ruleset > /tmp/n2
cmp /tmp/q1b /tmp/q2 && diff /tmp/f1 /tmp/f2 && diff /tmp/n1 /tmp/n2 || fail "second setup changed something"

# A held connection: plug, connect, see it wait and the SYN held, release, see it complete.
held_connection() { # $1 = URL host part, $2 = label
    qdisc plug || fail "plug"
    rm -f /tmp/body; touch /tmp/body
    ( loadgen get "$1:7000" > /tmp/body; echo "client exit $?" > /tmp/wget-done ) &
    sleep 1.5
    [ -s /tmp/body ] && fail "$2: the connection completed while plugged"
    [ -e /tmp/wget-done ] && fail "$2: the client gave up while plugged: $(cat /tmp/wget-done)"
    qdisc status --json | tee /tmp/st
    grep -q '"buffering":true' /tmp/st || fail "$2: status does not say buffering"
    grep -q '"held_packets":0,' /tmp/st && fail "$2: status shows no SYN held"
    qdisc release || fail "release"
    for i in $(seq 1 50); do [ -e /tmp/wget-done ] && break; sleep 0.2; done
    [ "$(cat /tmp/body)" = "$SERVER" ] || fail "$2: after release, body '$(cat /tmp/body)' is not the server's PID $SERVER"
    rm -f /tmp/wget-done
    qdisc status --json | grep -q '"buffering":false' || fail "$2: status does not say released"
    echo "$2: held while plugged, served after release"
}

reuse-server --listen 127.0.0.1:7000 --listen '[::1]:7000' 2>/tmp/server.log &
SERVER=$!
for i in $(seq 1 100); do grep -q 'listening on \[::1\]' /tmp/server.log && break; sleep 0.1; done

step "plug holds an IPv4 connection (fw)"
held_connection 127.0.0.1 "ipv4/fw"
step "plug holds an IPv6 connection (fw)"
held_connection '[::1]' "ipv6/fw"

step "teardown restores the device and the ruleset"
qdisc teardown || fail "teardown"
$TC qdisc show dev lo > /tmp/qdisc-after
$NFT list ruleset > /tmp/nft-after
diff /tmp/qdisc-before /tmp/qdisc-after || fail "tc qdisc show differs after teardown"
diff /tmp/nft-before /tmp/nft-after || fail "nft list ruleset differs after teardown"
qdisc teardown || fail "teardown of nothing must succeed"

step "setup (u32): same behaviour, no nf_tables rule"
qdisc setup --classifier u32 || fail "setup u32"
$TC filter show dev lo | tee /tmp/f3
grep -q 'u32' /tmp/f3 || fail "no u32 filter"
[ -z "$($NFT list ruleset)" ] || fail "u32 setup left an nf_tables rule"
held_connection 127.0.0.1 "ipv4/u32"
held_connection '[::1]' "ipv6/u32"
qdisc teardown || fail "teardown u32"

kill $SERVER
echo "scenario: qdisc-tree ok"
