# Least privilege: an ordinary user runs the reloader with only the file
# capability CAP_NET_ADMIN; the server it starts has no capabilities; the
# same binary without the capability refuses with the setcap command.
set -u
fail() { echo "FAIL: $*"; cat /tmp/caps.log 2>/dev/null; exit 1; }
cp /usr/local/bin/reloader /tmp/reloader || fail "copy"
setcap cap_net_admin+ep /tmp/reloader || fail "setcap"
cp /usr/local/bin/reloader /tmp/reloader-nocaps
chmod 1777 /tmp
chmod 755 /tmp/reloader /tmp/reloader-nocaps
# A user of the capability binary acts only where root's policy allows.
chmod 755 / /etc
mkdir -p /etc/reloader
printf '[[allow]]\nusers = ["nobody"]\nports = [7000]\n' > /etc/reloader/policy.toml
install -d -m 700 -o nobody /run/user/65534

su -s /bin/sh nobody -c 'XDG_RUNTIME_DIR=/run/user/65534 /tmp/reloader run --control /tmp/nobody.sock -- reuse-server' 2>/tmp/caps.log &
for i in $(seq 1 300); do grep -qs 'reloader: serving' /tmp/caps.log && break; sleep 0.1; done
grep -q 'reloader: serving' /tmp/caps.log || fail "the reloader did not start as nobody"
SERVER=$(pidof reuse-server)
# Not its watchdog (a fork that keeps CAP_NET_ADMIN, named reloader-watch).
for p in $(pidof reloader); do [ "$(cat /proc/$p/comm)" = reloader-watch ] || RELOADER=$p; done
WATCH=$(for p in $(pidof reloader); do [ "$(cat /proc/$p/comm)" = reloader-watch ] && echo $p; done)
[ -n "$WATCH" ] || fail "no watchdog beside the plug reloader"
grep -q 'CapEff:	0000000000001000' /proc/$WATCH/status || fail "the watchdog should hold exactly CAP_NET_ADMIN"
echo "reloader $RELOADER: $(grep -E '^(Uid|CapPrm|CapEff|CapInh|CapAmb)' /proc/$RELOADER/status | tr '\t\n' '  ')"
echo "server $SERVER: $(grep -E '^(Uid|CapPrm|CapEff|CapInh|CapAmb)' /proc/$SERVER/status | tr '\t\n' '  ')"
grep -q 'CapEff:	0000000000000000' /proc/$SERVER/status || fail "the server has capabilities"
grep -q 'CapPrm:	0000000000000000' /proc/$SERVER/status || fail "the server has permitted capabilities"
grep -q 'CapEff:	0000000000001000' /proc/$RELOADER/status || fail "the reloader should hold exactly CAP_NET_ADMIN"
su -s /bin/sh nobody -c '/tmp/reloader reload --control /tmp/nobody.sock' || fail "a reload as nobody failed"
# The old generation drains in the background and is reaped within ~50 ms.
for i in $(seq 1 50); do [ "$(pidof reuse-server | wc -w)" = 1 ] && break; sleep 0.1; done
NEW=$(pidof reuse-server)
[ "$(echo $NEW | wc -w)" = 1 ] || fail "not exactly one server after the reload: $NEW"
grep -q 'CapEff:	0000000000000000' /proc/$NEW/status || fail "the reloaded server has capabilities"
ls -l /tmp/nobody.sock | grep -q '^srw-------' || fail "control socket is not mode 0600: $(ls -l /tmp/nobody.sock)"
# root may ask too; another ordinary user may not. The socket's mode 0600
# stops it first; the peer-uid checks are the next walls: opened up to 0666,
# the client will not trust another user's socket, nor the reloader another
# user's request, and no reload happens.
echo "other:x:1000:1000:other:/tmp:/bin/sh" >> /etc/passwd
chmod 666 /tmp/nobody.sock
BEFORE=$(pidof reuse-server)
if su -s /bin/sh other -c '/tmp/reloader-nocaps reload --control /tmp/nobody.sock' > /tmp/other.out 2>&1; then
    fail "another user was allowed to reload: $(cat /tmp/other.out)"
fi
cat /tmp/other.out
# The client refuses first (the socket is not its user's), else the reloader.
grep -q -e "permission denied (not the reloader's user)" -e "is served by uid 65534, not by you" /tmp/other.out || fail "no clear refusal for another user"
[ "$(pidof reuse-server)" = "$BEFORE" ] || fail "a refused request changed the serving generation"
/usr/local/bin/reloader reload --control /tmp/nobody.sock > /dev/null || fail "root was refused"

su -s /bin/sh nobody -c '/tmp/reloader-nocaps run --control /tmp/x.sock -- reuse-server' 2>/tmp/nocaps.log
rc=$?
cat /tmp/nocaps.log
[ $rc = 2 ] || fail "without the capability the reloader should exit 2, got $rc"
grep -q 'setcap cap_net_admin+ep /tmp/reloader-nocaps' /tmp/nocaps.log || fail "the error does not name the setcap command"
kill -TERM $RELOADER; wait

# Handoff on port 80 (IPv4 and IPv6) with only CAP_NET_BIND_SERVICE: no
# CAP_NET_ADMIN, the servers get nothing, and they name their sockets.
cp /usr/local/bin/reloader /tmp/reloader-bind
setcap cap_net_bind_service+ep /tmp/reloader-bind || fail "setcap bind"
chmod 755 /tmp/reloader-bind
rm -f /tmp/caps.log # the wait below must not read the first run's
su -s /bin/sh nobody -c "/tmp/reloader-bind run --strategy handoff --addr 127.0.0.1:80 --addr '[::1]:80' --control /tmp/h.sock -- reuse-server" 2>/tmp/caps.log &
for i in $(seq 1 300); do grep -qs 'reloader: serving' /tmp/caps.log && break; sleep 0.1; done
grep -q 'reloader: serving' /tmp/caps.log || fail "the handoff reloader did not start as nobody on port 80"
RELOADER=$(pidof reloader-bind)
SERVER=$(pidof reuse-server)
echo "handoff reloader $RELOADER: $(grep -E '^(Uid|CapEff|CapPrm)' /proc/$RELOADER/status | tr '\t\n' '  ')"
grep -q 'CapEff:	0000000000000400' /proc/$RELOADER/status || fail "the handoff reloader should hold exactly CAP_NET_BIND_SERVICE"
grep -q 'CapEff:	0000000000000000' /proc/$SERVER/status || fail "the server has capabilities"
A=$(loadgen get 127.0.0.1:80) || fail "no answer on 127.0.0.1:80"
B=$(loadgen get '[::1]:80') || fail "no answer on [::1]:80"
su -s /bin/sh nobody -c '/tmp/reloader-bind reload --control /tmp/h.sock' || fail "a handoff reload failed"
C=$(loadgen get '[::1]:80') || fail "no answer on [::1]:80 after the reload"
[ "$C" != "$A" ] || fail "still PID $A after the reload"
grep 'listening on' /tmp/caps.log | tail -2
grep -q 'listening on \[::1\]:80 (inherited fd 4, tcp6-80)' /tmp/caps.log || fail "the server did not log its socket names (LISTEN_FDNAMES)"
kill -TERM $RELOADER; wait
echo "scenario: reloader-caps ok"
