# What one server generation costs the machine, apart from any request
# (issue #23): the CPU of N lifecycles of a command (start, "listening on"
# in its log, SIGTERM, exit), read from this shell's reaped children
# (cutime + cstime in /proc/$$/stat). In the VM: `cargo xtask vm --
# sh /scenarios/start-cost.sh 20`.
# usage: start-cost.sh N
set -u
N=${1:-20}
ip link set lo up 2>/dev/null
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
kids() { sed 's/.*) //' /proc/$$/stat | cut -d' ' -f14-15 | tr ' ' '+' | sed 's/^/0+/' ; }
measure() { # $1: label; the rest: the server's argv
    label=$1; shift
    k0=$(($(kids)))
    i=0
    while [ $i -lt $N ]; do
        rm -f /tmp/sc.log
        "$@" 2>/tmp/sc.log &
        P=$!
        j=0
        until grep -qs "listening on" /tmp/sc.log; do
            j=$((j + 1)); [ $j -gt 3000 ] && { echo "FAIL: $label did not start"; exit 1; }
            sleep 0.01
        done
        kill -TERM $P; wait $P
        i=$((i + 1))
    done
    k1=$(($(kids)))
    echo "start-cost: $label: $(( (k1 - k0) * 1000 / hz / N )) ms CPU per lifecycle ($N, the waits' sleeps included)"
}
k0=$(($(kids))); i=0
while [ $i -lt $N ]; do sleep 0.01; i=$((i + 1)); done
echo "start-cost: the wait's own cost: $(( ($(($(kids))) - k0) * 1000 / hz / N )) ms per sleep"
k0=$(($(kids))); i=0
while [ $i -lt $N ]; do reuse-server --version > /dev/null; i=$((i + 1)); done
echo "start-cost: reuse-server --version: $(( ($(($(kids))) - k0) * 1000 / hz / N )) ms per exec"
measure "reuse-server --threads 1" reuse-server --threads 1 --listen 127.0.0.1:7100
measure "reuse-server (a thread per CPU)" reuse-server --listen 127.0.0.1:7100
