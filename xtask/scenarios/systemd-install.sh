# The install-from-source steps of docs/systemd.md, as written, with systemd
# as PID 1 in the VM (`cargo xtask vm -- --systemd sh
# /scenarios/systemd-install.sh`). The blocks are read from that file.
# The guest has no sudo and we are root: `sudo` runs its command.
set -u
fail() { echo "FAIL: $*"; systemctl status --no-pager reloader reloader-handoff 2>&1 | tail -20; exit 1; }
sudo() { "$@"; }
# A serial console, not a terminal: no pager, no colours.
export SYSTEMD_PAGER=cat SYSTEMD_COLORS=0
[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm), not systemd"
echo "systemd $(systemctl --version | head -1 | cut -d' ' -f2) is PID 1"
cd /repo
mkdir -p target/release
cp /usr/local/bin/reloader /usr/local/bin/reuse-server target/release/
# The fenced blocks of the page, in order: 1 = install, 2 = socket-activated.
awk '/^```/ { if (inblock) { inblock = 0 } else { inblock = 1; n++ }; next }
     inblock { print > ("/tmp/block" n ".sh") }' docs/systemd.md
[ -s /tmp/block1.sh ] && [ -s /tmp/block2.sh ] || fail "the blocks of docs/systemd.md were not found"

echo "--- docs/systemd.md block 1, as written:"; cat /tmp/block1.sh
. /tmp/block1.sh || fail "a step of block 1 failed"
systemctl is-active reloader || fail "reloader.service is not active"
R=$(systemctl show -p MainPID --value reloader)
echo "reloader.service MainPID $R: $(grep -E '^(Uid|CapEff)' /proc/$R/status | tr '\t\n' '  ')"
[ "$(sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' /proc/$R/status)" = "$(id -u reloader)" ] || fail "not running as the reloader user"
grep -q '^CapEff:[[:space:]]*0000000000001000$' /proc/$R/status || fail "CapEff is not CAP_NET_ADMIN alone"
before=$(loadgen get 127.0.0.1:7000) || fail "no answer on 7000"
loadgen run 127.0.0.1:7000 -c 4 -n 3000 > /tmp/load.out &
L=$!
sleep 1
for i in 1 2 3; do sudo systemctl reload reloader || fail "systemctl reload $i"; done
wait $L
cat /tmp/load.out
f=$(sed -n 's/.* failed=\([0-9]*\) .*/\1/p' /tmp/load.out)
[ "$f" = 0 ] || fail "$f requests failed across systemctl reload"
after=$(loadgen get 127.0.0.1:7000)
echo "PID answering before: $before, after three reloads: $after"
[ "$before" != "$after" ] || fail "the same PID answers after the reloads"
systemctl status --no-pager reloader | grep -E 'Active|Status' | tee /tmp/st
grep -q 'last reload ok' /tmp/st || fail "systemctl status does not show the last reload ok"
reloader status --control /run/reloader/control.sock | head -3
systemctl stop reloader || fail "stop"
loadgen get 127.0.0.1:7000 > /dev/null 2>&1 && fail "something still serves 7000 after stop"
pidof reuse-server && fail "servers left after systemctl stop"

echo "--- docs/systemd.md block 2, as written:"; cat /tmp/block2.sh
. /tmp/block2.sh || fail "a step of block 2 failed"
systemctl is-active reloader-handoff.socket || fail "the socket unit is not active"
first=$(loadgen get 127.0.0.1:7000) || fail "no answer through the activated socket"
systemctl is-active reloader-handoff || fail "the first connection did not start reloader-handoff.service"
H=$(systemctl show -p MainPID --value reloader-handoff)
echo "activated: reloader-handoff.service MainPID $H answered by PID $first: $(grep -E '^(Uid|CapEff)' /proc/$H/status | tr '\t\n' '  ')"
grep -q '^CapEff:[[:space:]]*0000000000000000$' /proc/$H/status || fail "the handoff reloader has a capability"
loadgen run 127.0.0.1:7000 -c 4 -n 2000 > /tmp/load2.out &
L=$!
sleep 1
reloader reload --control /run/reloader-handoff/control.sock || fail "reload of the handoff service"
wait $L
cat /tmp/load2.out
f=$(sed -n 's/.* failed=\([0-9]*\) .*/\1/p' /tmp/load2.out)
[ "$f" = 0 ] || fail "$f requests failed across the handoff reload"
systemctl stop reloader-handoff.service reloader-handoff.socket
echo "scenario: systemd-install ok"
