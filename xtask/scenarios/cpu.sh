# CPU per reload (issue #23): `reloader run --every 100ms` with no load
# for SECONDS, then the reloader's own CPU (utime + stime in
# /proc/PID/stat) and that of the generations it reaped (cutime +
# cstime), each divided by the reloads. With --strace, also the
# reloader's system calls by count (strace -c -f; with STRACE_F= set
# empty, the reloader's own only), its profile.
# In the VM: `cargo xtask vm -- sh /scenarios/cpu.sh plug`; on the host,
# with the release binaries first on PATH, in a private network
# namespace: `unshare -n sh xtask/scenarios/cpu.sh none`.
# usage: cpu.sh STRATEGY [SECONDS] [--strace]
set -u
ST=$1 SECS=${2:-20} TRACE=${3:-}
fail() { echo "FAIL: $*"; tail -5 /tmp/cpu-$$.log; exit 1; }
ip link set lo up 2>/dev/null
SERVER="reuse-server --listen 127.0.0.1:7000 ${SERVER_ARGS:-}"
# steer checks a server that joins at once as well (the gate is optional).
[ "$ST" = steer ] && SERVER="env -u RELOADER_GATE $SERVER"
reloader run --strategy "$ST" --every 100ms --drain-timeout 5s --control /tmp/cpu-$$.sock -- $SERVER 2>/tmp/cpu-$$.log &
R=$!
for i in $(seq 1 300); do grep -q 'reloader: serving' /tmp/cpu-$$.log && break; sleep 0.1; done
grep -q 'reloader: serving' /tmp/cpu-$$.log || fail "the reloader did not start"
# ticks PID: utime stime cutime cstime (fields 14-17; the name before
# them may hold spaces, so count from the last ')').
ticks() { sed 's/.*) //' /proc/$1/stat | cut -d' ' -f12-15; }
r0=$(grep -c 'reload #[0-9]*: ok' /tmp/cpu-$$.log); t0=$(ticks $R)
if [ "$TRACE" = --strace ]; then
    timeout "$SECS" strace -c ${STRACE_F--f} -p $R -o /tmp/cpu-$$.strace 2>/dev/null
else
    sleep "$SECS" # the measured window itself
fi
r1=$(grep -c 'reload #[0-9]*: ok' /tmp/cpu-$$.log); t1=$(ticks $R)
kill -TERM $R; wait $R
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
set -- $t0 $t1
n=$((r1 - r0))
[ "$n" -gt 0 ] || fail "no reload in ${SECS}s"
awk -v n=$n -v hz=$hz -v u0=$1 -v s0=$2 -v cu0=$3 -v cs0=$4 -v u1=$5 -v s1=$6 -v cu1=$7 -v cs1=$8 -v st="$ST" 'BEGIN {
    own = ((u1 - u0) + (s1 - s0)) * 1000 / hz; kids = ((cu1 - cu0) + (cs1 - cs0)) * 1000 / hz
    printf "cpu: strategy %s, %d reloads: reloader %.0f ms (%.2f ms per reload), generations reaped %.0f ms (%.2f ms per reload)\n", st, n, own, own / n, kids, kids / n }'
[ "$TRACE" = --strace ] && head -25 /tmp/cpu-$$.strace
rm -f /tmp/cpu-$$.log /tmp/cpu-$$.strace
