# A kernel where sock_diag cannot list TCP sockets (tcp_diag not loaded and
# no module autoload, as in a container): the reloader must refuse to run,
# naming the module, instead of reloading blind (seen once: it logged
# `listeners {}` and clients got resets).
set -u
fail() { echo "FAIL: $*"; cat /tmp/nodiag.log; exit 1; }
grep -q '^tcp_diag ' /proc/modules && fail "tcp_diag is loaded already: the test would prove nothing"
# Loads the tc modules first (the hold path on lo's ingress: ifb, ingress,
# u32, mirred, prio, plug).
qdisc --ingress setup --port 7000 > /dev/null || fail "qdisc setup"
echo /nonexistent > /proc/sys/kernel/modprobe
for s in plug none; do
    if reloader run --strategy $s -- reuse-server 2>/tmp/nodiag.log; then
        fail "reloader ran without sock_diag (strategy $s)"
    fi
    cat /tmp/nodiag.log
    grep -q 'modprobe tcp_diag' /tmp/nodiag.log || fail "the error does not name tcp_diag (strategy $s)"
    pidof reuse-server && fail "a server was left running (strategy $s)"
done
echo "scenario: reloader-nodiag ok"
