# Issue #20's findings, re-run as local users with the binaries installed
# as the README says (root:reloader 0750, cap_net_admin+ep): alice may hold
# port 7000 on lo (the policy), bob port 9000; nobody else anything.
# usage: security.sh
set -u
# KEEP_GOING=1 (to show what an older build lets through): every failure
# is said and counted, and the scenario goes on.
FAILS=0
fail() {
    echo "FAIL: $*"
    if [ -n "${KEEP_GOING:-}" ]; then FAILS=$((FAILS + 1)); return 0; fi
    for f in /tmp/sec-*.log; do echo "== $f"; tail -15 "$f"; done
    exit 1
}
step() { echo "-- $*"; }

B=/opt/reloader/bin
install -d -m 755 /opt/reloader "$B"
cp /usr/local/bin/reloader /usr/local/bin/qdisc "$B"/
echo "reloader:x:990:alice,bob" >> /etc/group
echo "alice:x:1000:1000:alice:/tmp:/bin/sh" >> /etc/passwd
echo "bob:x:1001:1001:bob:/tmp:/bin/sh" >> /etc/passwd
echo "alice:x:1000:" >> /etc/group
echo "bob:x:1001:" >> /etc/group
chown root:reloader "$B/reloader" "$B/qdisc"
chmod 0750 "$B/reloader" "$B/qdisc"
setcap cap_net_admin+ep "$B/reloader" || fail "setcap"
setcap cap_net_admin+ep "$B/qdisc" || fail "setcap"
for u in 1000 1001; do install -d -m 700 -o $u -g $u /run/user/$u; done
# as USER CMD...: CMD as USER, in a login-like environment (XDG_RUNTIME_DIR).
# A script, so `timeout` can run it too.
cat > /usr/local/bin/as <<EOF2
#!/bin/sh
u=\$1; shift
exec su -s /bin/sh "\$u" -c "XDG_RUNTIME_DIR=/run/user/\$(id -u "\$u") PATH=$B:/usr/local/bin:/usr/bin:/bin \$*"
EOF2
chmod 755 /usr/local/bin/as
# refused WHAT EXPECT CMD...: CMD must fail at once and print EXPECT (one
# still running after 30 s was let in, and is stopped).
refused() {
    what=$1 expect=$2; shift 2
    if timeout 30 "$@" > /tmp/sec-out.log 2>&1; then fail "$what: was allowed: $(cat /tmp/sec-out.log)"; fi
    grep -q -- "$expect" /tmp/sec-out.log || fail "$what: no clear refusal (want \"$expect\"): $(cat /tmp/sec-out.log)"
    echo "   refused: $(head -1 /tmp/sec-out.log)"
}
# owned NAME UID: the PIDs of process NAME run by UID (busybox has no pgrep).
# The reloader's watchdog (a fork, named reloader-watch) is left out.
owned() {
    for p in $(pidof "$1"); do
        [ "$(cat /proc/$p/comm 2>/dev/null)" = reloader-watch ] && continue
        [ "$(stat -c %u /proc/$p)" = "$2" ] && echo $p
    done
}
# start_alice ARGS...: alice's `reloader run ARGS`, serving; sets S (to
# wait on) and RA (the reloader's PID).
start_alice() {
    rm -f /tmp/sec-alice.log # else the wait below may read the last run's
    as alice reloader run "$@" 2>/tmp/sec-alice.log &
    S=$!
    for i in $(seq 1 300); do grep -qs 'reloader: serving' /tmp/sec-alice.log && break; sleep 0.1; done
    grep -q 'reloader: serving' /tmp/sec-alice.log || fail "alice's reloader did not start: $*"
    RA=$(owned reloader 1000)
}
# hold_begins: alice's reloader is asked to reload; returns once it holds.
hold_begins() {
    as alice reloader reload > /dev/null &
    for i in $(seq 1 200); do ls /run/user/1000/reuse-plug/*ifb-lo-7000.buffering > /dev/null 2>&1 && break; sleep 0.05; done
    ls /run/user/1000/reuse-plug/*ifb-lo-7000.buffering > /dev/null 2>&1 || fail "alice's reloader never held"
}
# alice's servers left by a killed reloader: stopped, then gone.
stop_servers() {
    for p in $(owned reuse-server 1000); do kill -TERM $p; done
    for i in $(seq 1 100); do [ -z "$(owned reuse-server 1000)" ] && break; sleep 0.1; done
    [ -z "$(owned reuse-server 1000)" ] || fail "alice's servers did not stop"
}
no_ifb() { ! /usr/sbin/ip link show "$1" > /dev/null 2>&1 || fail "$1 exists: $2"; }

step "finding 1, without a policy: nothing is allowed"
refused "qdisc ingress setup, no policy" "no policy allows anything" as alice qdisc --dev lo --ingress setup --port 22
no_ifb ifb-lo-22 "a refused setup created it"

# The initramfs's / is mode 1777; a real root file system is not.
chmod 755 / /etc
mkdir -p /etc/reloader
cat > /etc/reloader/policy.toml <<'EOF'
[limits]
max_hold = "5s"

[[allow]]
users = ["alice"]
ports = [7000]
devices = ["lo"]
max_hold = "4s"

[[allow]]
users = ["bob"]
ports = [9000]
devices = ["lo"]
EOF
chmod 644 /etc/reloader/policy.toml

step "finding 1, with the policy: only the user's own ports, only the ingress path"
refused "port 22" "does not allow alice to hold port(s) \[22\] on lo" as alice qdisc --dev lo --ingress setup --port 22
refused "every port" "every port is root's" as alice qdisc --dev lo --ingress setup
refused "the egress tree" "only the ingress path (--ingress) may be used" as alice qdisc --dev lo setup --classifier u32 --source any
refused "another device" "does not allow alice" as alice qdisc --dev eth9 --ingress setup --port 7000
for n in ifb-lo-22 ifb-lo ifb-lo-7000; do no_ifb $n "refused setups created it"; done
as alice qdisc --dev lo --ingress status > /dev/null; [ $? = 3 ] || fail "status (allowed to all) did not report an absent path"

step "the policy itself: a file others could write is ignored, with an error"
chmod 666 /etc/reloader/policy.toml
refused "writable policy" "is ignored: it is writable by others" as alice qdisc --dev lo --ingress setup --port 7000
chmod 644 /etc/reloader/policy.toml

step "finding 2 and 5: bounds for everyone (root too)"
refused "hold limit" "above the most allowed for alice: 4s" as alice reloader run --hold-limit 1000h -- reuse-server
refused "root's hold limit" "above the most allowed: 5s" reloader run --hold-limit 1000h --control /tmp/x.sock -- reuse-server
refused "plug limit" "above the most allowed: 1048576 bytes" qdisc --dev lo --ingress setup --port 7000 --limit 4294967295

step "an allowed user reloads under load: 0 failed"
start_alice --addr 127.0.0.1:7000 --every 100ms -- reuse-server
grep -q "warning: .* has a file capability and every user may run it" /tmp/sec-alice.log && fail "warned though the binary is 0750"
loadgen run 127.0.0.1:7000 -c 8 -n 2000 --min-servers 6 -d 300 | tee /tmp/sec-load.out
grep -q ' failed=0 ' /tmp/sec-load.out || fail "alice's reloads lost requests"
qdisc --dev lo --ingress status | grep -q "owner      uid 1000" || fail "status does not show alice as the owner"
kill -TERM "$RA"; wait $S || fail "alice's reloader exited $?"

step "finding 3: another user's objects are not yours"
start_alice --addr 127.0.0.1:7000 -- reuse-server
refused "bob plugs alice's path" "belongs to uid 1000" as bob qdisc --dev lo --ingress plug
refused "bob tears it down" "belongs to uid 1000" as bob qdisc --dev lo --ingress teardown
refused "bob sets up alice's port" "does not allow bob to hold port(s) \[7000\]" as bob reloader run --addr 127.0.0.1:7000 -- reuse-server
# bob's own service on lo (port 9000) runs beside alice's, on a plug of its own.
rm -f /tmp/sec-bob.log
as bob reloader run --addr 127.0.0.1:9000 -- reuse-server --listen 127.0.0.1:9000 2>/tmp/sec-bob.log &
SB=$!
for i in $(seq 1 300); do grep -qs 'reloader: serving' /tmp/sec-bob.log && break; sleep 0.1; done
grep -q 'reloader: serving' /tmp/sec-bob.log || fail "bob's reloader did not start beside alice's"
as bob reloader reload > /dev/null || fail "bob's own reload failed"
refused "bob plugs alice's path by port" "belongs to uid 1000" as bob qdisc --dev lo --ingress --port 7000 plug
refused "plug with two services and no --port" "say which with --port" qdisc --dev lo --ingress plug
kill -TERM "$(owned reloader 1001)"; wait $SB || fail "bob's reloader exited $?"
as bob qdisc --dev lo --ingress --port 9000 teardown > /dev/null || fail "bob could not tear down his own path"
refused "root without --force" "belongs to uid 1000" qdisc --dev lo --ingress plug
as alice reloader reload > /dev/null || fail "alice's reload failed after bob's attempts"
loadgen get 127.0.0.1:7000 > /dev/null || fail "alice's server does not answer"

step "finding 6: a socket bound by another user is not trusted"
# bob's own reloader binds a path and opens it to all: alice's client must
# not take its answer for her reloader's.
rm -f /tmp/sec-bob.log # the wait below must not read the last run's
as bob reloader run --strategy none --addr 127.0.0.1:9000 --control /tmp/forged.sock -- reuse-server --listen 127.0.0.1:9000 2>/tmp/sec-bob.log &
S=$!
for i in $(seq 1 300); do grep -qs 'reloader: serving' /tmp/sec-bob.log && break; sleep 0.1; done
grep -q 'reloader: serving' /tmp/sec-bob.log || fail "bob's reloader did not start"
chmod 777 /tmp/forged.sock
refused "a reply from bob's socket" "is served by uid 1001, not by you" as alice reloader reload --control /tmp/forged.sock
grep -q 'reload #2' /tmp/sec-bob.log && fail "alice's request reached bob's reloader"
RB=$(owned reloader 1001); kill -TERM "$RB"; wait $S
refused "no XDG_RUNTIME_DIR" "XDG_RUNTIME_DIR is not set" su -s /bin/sh alice -c "env -u XDG_RUNTIME_DIR $B/reloader reload"
# Root trusts only a root-owned record directory: one planted by bob, with
# a link to a root-only file, is not written through.
echo secret > /root/secret; chmod 600 /root/secret
install -d -m 777 -o 1001 /run/reuse-plug.bob
NETNS=$(stat -L -c %i /proc/self/ns/net)
ln -s /root/secret /run/reuse-plug.bob/$NETNS-lo.buffering
mv /run/reuse-plug /run/reuse-plug.root 2>/dev/null
mv /run/reuse-plug.bob /run/reuse-plug
qdisc --dev lo --ingress --force release > /dev/null 2>&1
[ "$(cat /root/secret)" = secret ] || fail "root's qdisc wrote through bob's link"
rm -rf /run/reuse-plug; mv /run/reuse-plug.root /run/reuse-plug 2>/dev/null

step "finding 2: kill -9 mid-hold: the watchdog releases at once"
# The server ignores WINCH, so the hold lasts until its bound (4 s) unless
# something ends it; a client connects into it, then the reloader dies.
# Without a watchdog the plug stays (the client times out after 30 s).
kill -TERM "$RA"; wait $S
start_alice --addr 127.0.0.1:7000 --stop-signal WINCH --hold-limit 4s --drain-timeout 20s -- reuse-server
hold_begins
loadgen run 127.0.0.1:7000 -c 1 -n 1 > /tmp/sec-get.out 2>&1 &
G=$!
for i in $(seq 1 200); do qdisc --dev lo --ingress status --json | grep -q '"held_packets":[1-9]' && break; sleep 0.02; done
qdisc --dev lo --ingress status --json | grep -q '"held_packets":[1-9]' || fail "the client's SYN was never held"
kill -9 "$RA"
wait $G || fail "the held client got no answer: $(cat /tmp/sec-get.out)"
MS=$(sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p' /tmp/sec-get.out)
echo "   the held client was answered $MS ms after it connected (hold limit 4000 ms)"
[ "$MS" -lt 4000 ] || fail "the client waited $MS ms: the plug outlived its holder"
grep -q "watchdog: the holder died" /tmp/sec-alice.log || fail "the watchdog did not say it released"
stop_servers
as alice qdisc --dev lo --ingress teardown > /dev/null || fail "alice could not tear down her own path"
no_ifb ifb-lo-7000 "alice's teardown left it"

step "finding 2: a holder that stops: released at its bound"
start_alice --addr 127.0.0.1:7000 --stop-signal WINCH --hold-limit 1s --drain-timeout 20s -- reuse-server
hold_begins
kill -STOP "$RA"
loadgen run 127.0.0.1:7000 -c 1 -n 1 > /tmp/sec-get.out 2>&1 || fail "the held client got no answer: $(cat /tmp/sec-get.out)"
MS=$(sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p' /tmp/sec-get.out)
echo "   with the reloader stopped, the held client was answered after $MS ms (hold limit 1000 ms + 250 ms margin)"
# Bounded well below "never" (the client's 30 s), loosely: TCG is slow.
[ "$MS" -lt 4000 ] || fail "the client waited $MS ms"
grep -q "watchdog: a hold outlasted its bound" /tmp/sec-alice.log || fail "the watchdog did not say it released at the bound"
kill -9 "$RA"
stop_servers
as alice qdisc --dev lo --ingress teardown > /dev/null

step "finding 4: a device that only has our name, a long name, an admin's ingress"
/usr/sbin/ip link add ifb-dummy0-7000 type ifb
/usr/sbin/ip link add dummy0 type veth peer name dummy0-peer
refused "an admin's ifb-dummy0-7000" "with no record of ours" qdisc --dev dummy0 --ingress setup --port 7000
/usr/sbin/ip link show ifb-dummy0-7000 > /dev/null || fail "the admin's ifb-dummy0-7000 was removed"
/usr/sbin/tc qdisc add dev dummy0 ingress
/usr/sbin/tc filter add dev dummy0 parent ffff: prio 1 protocol ip u32 match u32 0 0 action pass
/usr/sbin/ip link del ifb-dummy0-7000
refused "an admin's ingress qdisc" "which this tool did not create" qdisc --dev dummy0 --ingress setup --port 7000
/usr/sbin/tc filter show dev dummy0 parent ffff: | grep -q "gact action pass" || fail "the admin's filter changed"
/usr/sbin/tc qdisc add dev dummy0-peer root handle 1: prio
refused "an admin's prio 1:" "already has a root qdisc prio 1:" qdisc --dev dummy0-peer setup
qdisc --dev dummy0-peer teardown > /dev/null 2>&1
/usr/sbin/tc qdisc show dev dummy0-peer | grep -q "qdisc prio 1: root" || fail "teardown removed the admin's prio 1:"
/usr/sbin/ip link add longname-eth0a type veth peer name lpeer-a
/usr/sbin/ip link add longname-eth0b type veth peer name lpeer-b
qdisc --dev longname-eth0a --ingress setup --port 7000 > /dev/null || fail "setup on a long name"
qdisc --dev longname-eth0b --ingress setup --port 7000 > /dev/null || fail "setup on a second long name"
A=$(qdisc --dev longname-eth0a --ingress status --json | sed -n 's/.*"ifb":"\([^"]*\)".*/\1/p')
Bn=$(qdisc --dev longname-eth0b --ingress status --json | sed -n 's/.*"ifb":"\([^"]*\)".*/\1/p')
echo "   ifbs: $A and $Bn"
[ -n "$A" ] && [ "$A" != "$Bn" ] || fail "two long names share one ifb ($A, $Bn)"
qdisc --dev longname-eth0a --ingress teardown > /dev/null || fail "teardown a"
qdisc --dev longname-eth0b --ingress status > /dev/null || fail "tearing down a's path broke b's"
qdisc --dev longname-eth0b --ingress teardown > /dev/null

step "finding 4: the mark rule sets a bit of ours and keeps the others"
qdisc --dev lo setup --source any > /dev/null || fail "root's egress setup"
/usr/sbin/nft list table ip reuse_plug | grep -q "meta mark set meta mark | 0x01000000" || fail "the mark rule overwrites the packet's mark: $(/usr/sbin/nft list table ip reuse_plug)"
/usr/sbin/tc filter show dev lo | grep -q "handle 0x1000000/0x1000000" || fail "the fw filter does not match our bit alone: $(/usr/sbin/tc filter show dev lo)"
echo "   $(/usr/sbin/nft list table ip reuse_plug | grep -o 'meta mark set.*')"
qdisc --dev lo teardown > /dev/null || fail "root's egress teardown"

step "finding 7: tcp_migrate_req only where the policy allows, restored after SIGKILL"
[ "$(cat /proc/sys/net/ipv4/tcp_migrate_req)" = 0 ] || fail "tcp_migrate_req is not 0 to begin with"
refused "migrate" "does not allow alice to change net.ipv4.tcp_migrate_req" as alice reloader run --strategy migrate -- reuse-server
[ "$(cat /proc/sys/net/ipv4/tcp_migrate_req)" = 0 ] || fail "a refused run changed tcp_migrate_req"
sed -i 's/max_hold = "4s"/max_hold = "4s"\nmigrate = true/' /etc/reloader/policy.toml
start_alice --strategy migrate -- reuse-server
[ "$(cat /proc/sys/net/ipv4/tcp_migrate_req)" = 1 ] || fail "migrate did not set tcp_migrate_req"
kill -9 "$RA"
for i in $(seq 1 100); do [ "$(cat /proc/sys/net/ipv4/tcp_migrate_req)" = 0 ] && break; sleep 0.05; done
[ "$(cat /proc/sys/net/ipv4/tcp_migrate_req)" = 0 ] || fail "tcp_migrate_req stayed 1 after SIGKILL"
echo "   tcp_migrate_req back to 0 after kill -9"
stop_servers

step "finding 8: no capability kept where the strategy needs none"
for s in handoff none; do
    start_alice --strategy $s -- reuse-server
    grep -E '^Cap(Eff|Prm)' /proc/$RA/status | tr '\n\t' '  '; echo " ($s)"
    grep -q 'CapEff:	0000000000000000' /proc/$RA/status || fail "$s keeps effective capabilities"
    grep -q 'CapPrm:	0000000000000000' /proc/$RA/status || fail "$s keeps permitted capabilities"
    kill -TERM "$RA"; wait $S
done

step "install: a capability binary anyone may run is warned of"
chmod 0755 "$B/reloader"
start_alice --strategy none -- reuse-server
grep -q "has a file capability and every user may run it" /tmp/sec-alice.log || fail "no warning for a 0755 capability binary"
kill -TERM "$RA"; wait $S
[ "$FAILS" = 0 ] || { echo "scenario: security: $FAILS failure(s)"; exit 1; }
echo "scenario: security ok"
