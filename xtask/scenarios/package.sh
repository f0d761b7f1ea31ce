# `cargo xtask dist`'s package in the systemd guest: `dpkg -i`, what its
# install script makes, `man`, the bash completion; then the README's quick
# start as written, as alice (a member of group `reloader`, as its first
# block makes her), and its systemd block with the packaged unit.
# The deb is /extra/reuse-port-reload.deb (the test adds it for this boot).
# `sudo` runs its command as root (we are root; the guest has no sudo).
# The guest's busybox sh runs its own applets before PATH (it has dpkg and
# man too): the real ones are called by their paths.
set -u
fail() {
    echo "FAIL: $*"
    for f in /tmp/qs-*.log; do [ -e "$f" ] && { echo "== $f"; tail -15 "$f"; }; done
    exit 1
}
export SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 LANG=C MANPAGER=cat PAGER=cat MAN_DISABLE_SECCOMP=1
DEB=/extra/reuse-port-reload.deb
[ -s $DEB ] || fail "no package at $DEB"
LOADGEN=/usr/local/bin/loadgen

echo "--- dpkg -i"
/usr/bin/dpkg -i $DEB > /tmp/qs-dpkg.log 2>&1 || fail "dpkg -i: $(tail -5 /tmp/qs-dpkg.log)"
/usr/bin/dpkg -s reuse-port-reload | grep -q '^Status: install ok installed' || fail "dpkg does not list it installed"
grep -q '^reloader:' /etc/passwd || fail "no reloader user"
grep -q '^reloader:' /etc/group || fail "no reloader group"
for b in reloader qdisc; do
    m=$(stat -c '%U:%G %a' /usr/bin/$b)
    [ "$m" = "root:reloader 750" ] || fail "/usr/bin/$b is $m, not root:reloader 750"
    getcap /usr/bin/$b | grep -q 'cap_net_admin[=+]ep' || fail "/usr/bin/$b: $(getcap /usr/bin/$b)"
    echo "/usr/bin/$b: $m, $(getcap /usr/bin/$b)"
done
[ "$(stat -c %a /usr/bin/reuse-server)" = 755 ] || fail "reuse-server mode"
grep -q '^users = \["reloader"\]' /etc/reloader/policy.toml || fail "no policy for the units' user"

echo "--- man, completions"
/usr/bin/man reloader > /tmp/qs-man.txt 2>&1 || fail "man reloader: $(head -3 /tmp/qs-man.txt)"
grep -q 'reloader-run' /tmp/qs-man.txt || fail "man reloader does not name reloader-run"
/usr/bin/man reloader-run > /tmp/qs-man-run.txt 2>&1 || fail "man reloader-run"
grep -q -- '--strategy' /tmp/qs-man-run.txt || fail "man reloader-run has no --strategy"
head -4 /tmp/qs-man-run.txt
/bin/bash -c '. /usr/share/bash-completion/completions/reloader && complete -p reloader' > /tmp/qs-comp.txt 2>&1 ||
    fail "bash completion: $(cat /tmp/qs-comp.txt)"
grep -q 'reloader$' /tmp/qs-comp.txt || fail "no completion for reloader: $(cat /tmp/qs-comp.txt)"
cat /tmp/qs-comp.txt
/bin/bash -c '. /usr/share/bash-completion/completions/qdisc && complete -p qdisc' | grep -q 'qdisc$' || fail "no completion for qdisc"
for f in /usr/share/zsh/vendor-completions/_reloader /usr/share/fish/vendor_completions.d/reloader.fish; do
    [ -s $f ] || fail "no $f"
done

# The quick start's fenced blocks, in order: 1 = the admin's, 2-4 = the
# three ways.
awk '/^## Quick start/ { on = 1; next } /^## / { on = 0 }
     on && /^```/ { if (inblock) { inblock = 0 } else { inblock = 1; n++ }; next }
     on && inblock { print > ("/tmp/qs-block" n ".sh") }' /usr/share/doc/reuse-port-reload/README.md
for n in 1 2 3 4; do [ -s /tmp/qs-block$n.sh ] || fail "the README's quick start has no block $n"; done

echo "--- alice, and the quick start's admin block as written"
useradd -M -d /tmp -s /bin/sh alice || fail "useradd alice"
A=$(id -u alice)
install -d -m 700 -o alice -g alice /run/user/$A
cat /tmp/qs-block1.sh
sudo() { "$@"; }
(USER=alice; . /tmp/qs-block1.sh) > /tmp/qs-admin.log 2>&1 || fail "the admin block: $(cat /tmp/qs-admin.log)"
id alice | grep -q '(reloader)' || fail "alice is not in group reloader: $(id alice)"
# as_alice LINE: LINE run by alice's login shell, in her session's
# environment, with the package's binaries first on PATH.
as_alice() {
    su -s /bin/sh alice -c "export XDG_RUNTIME_DIR=/run/user/$A USER=alice PATH=/usr/bin:/usr/sbin:/bin; $1"
}

for n in 2 3 4; do
    echo "--- way $((n - 1)), as written:"; cat /tmp/qs-block$n.sh
    run=$(sed -n 1p /tmp/qs-block$n.sh)
    case $run in "reloader run "*) ;; *) fail "block $n does not start with reloader run: $run" ;; esac
    rm -f /tmp/qs-stop /tmp/qs-started
    as_alice "exec $run" > /tmp/qs-way$n.log 2>&1 &
    R=$!
    for i in $(seq 1 300); do grep -q 'reloader: serving' /tmp/qs-way$n.log && break; kill -0 $R 2>/dev/null || break; sleep 0.1; done
    grep -q 'reloader: serving' /tmp/qs-way$n.log || fail "way $((n - 1)): the reloader did not start"
    first=$($LOADGEN get 127.0.0.1:8080) || fail "way $((n - 1)): no answer on 8080"
    $LOADGEN run 127.0.0.1:8080 -c 4 --started /tmp/qs-started --until-exists /tmp/qs-stop -d 300 > /tmp/qs-load$n.out &
    L=$!
    for i in $(seq 1 300); do [ -e /tmp/qs-started ] && break; sleep 0.1; done
    [ -e /tmp/qs-started ] || fail "way $((n - 1)): the load did not start"
    # Every deploy: the rest of the block, three times.
    for k in 1 2 3; do
        sed -n '2,$p' /tmp/qs-block$n.sh | while read -r line; do
            as_alice "$line" || { echo "deploy $k: $line failed"; exit 1; }
        done || fail "way $((n - 1)): deploy $k"
    done
    touch /tmp/qs-stop
    wait $L
    cat /tmp/qs-load$n.out
    f=$(sed -n 's/.* failed=\([0-9]*\) .*/\1/p' /tmp/qs-load$n.out)
    [ "$f" = 0 ] || fail "way $((n - 1)): $f requests failed across the reloads"
    s=$(sed -n 's/.* servers=\([0-9]*\) .*/\1/p' /tmp/qs-load$n.out)
    [ "$s" -ge 3 ] || fail "way $((n - 1)): the load saw $s servers, not the reloads"
    after=$($LOADGEN get 127.0.0.1:8080)
    [ "$first" != "$after" ] || fail "way $((n - 1)): PID $first still answers after three reloads"
    grep 'reload #' /tmp/qs-way$n.log | tail -3
    echo "way $((n - 1)): PID $first -> $after, 0 failed, $s servers answered"
    # $R is alice's su; the reloader is the process of hers named so (its
    # watchdog is named reloader-watch).
    RP=""
    for p in $(pidof reloader); do
        [ "$(stat -c %u /proc/$p)" = "$A" ] && [ "$(cat /proc/$p/comm)" = reloader ] && RP="$RP $p"
    done
    [ "$(echo $RP | wc -w)" = 1 ] || fail "way $((n - 1)): alice's reloader is not one process: $RP"
    kill -TERM $RP; wait $R
    while kill -0 $RP 2>/dev/null; do sleep 0.1; done
    $LOADGEN get 127.0.0.1:8080 > /dev/null 2>&1 && fail "way $((n - 1)): 8080 still served after the reloader's exit"
done

echo "--- the README's systemd block, with the packaged unit"
awk '/^## Running under systemd/ { on = 1; next } /^## / { on = 0 }
     on && /^```/ { if (inblock) { inblock = 0 } else { inblock = 1; n++ }; next }
     on && inblock { print > ("/tmp/qs-sd" n ".sh") }' /usr/share/doc/reuse-port-reload/README.md
[ -s /tmp/qs-sd1.sh ] || fail "the README's systemd section has no block"
cat /tmp/qs-sd1.sh
enable=$(grep 'enable' /tmp/qs-sd1.sh)
reload=$(grep 'systemctl reload' /tmp/qs-sd1.sh)
eval "$enable" || fail "$enable"
U=$(echo "$enable" | sed 's/.*--now \([^ ]*\).*/\1/')
systemctl is-active "$U" || fail "$U is not active"
P=$(systemctl show -p MainPID --value "$U")
grep -q '^CapEff:[[:space:]]*0000000000001000$' /proc/$P/status || fail "$U: CapEff is not CAP_NET_ADMIN alone"
before=$($LOADGEN get 127.0.0.1:7000) || fail "$U: no answer on 7000"
rm -f /tmp/qs-stop /tmp/qs-started
$LOADGEN run 127.0.0.1:7000 -c 4 --started /tmp/qs-started --until-exists /tmp/qs-stop -d 300 > /tmp/qs-sdload.out &
L=$!
for i in $(seq 1 300); do [ -e /tmp/qs-started ] && break; sleep 0.1; done
for k in 1 2 3; do eval "$reload" || fail "$reload ($k)"; done
touch /tmp/qs-stop
wait $L
cat /tmp/qs-sdload.out
f=$(sed -n 's/.* failed=\([0-9]*\) .*/\1/p' /tmp/qs-sdload.out)
[ "$f" = 0 ] || fail "$f requests failed across systemctl reload"
after=$($LOADGEN get 127.0.0.1:7000)
[ "$before" != "$after" ] || fail "the same PID answers after the reloads"
systemctl stop "$U"
pidof reuse-server && fail "servers left after systemctl stop"
echo "scenario: package ok"
