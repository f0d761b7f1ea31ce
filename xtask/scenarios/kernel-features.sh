# What this kernel offers that the reloader uses or falls back without
# (printed as `feature:` lines for `cargo xtask matrix`), and a check that
# every module the plug needs loads.
set -u
fail() { echo "FAIL: $*"; exit 1; }
echo "feature: kernel $(uname -r)"
if [ -e /proc/sys/net/ipv4/tcp_migrate_req ]; then
    echo "feature: tcp_migrate_req yes"
else
    echo "feature: tcp_migrate_req no (--strategy migrate refuses; plug and handoff do not need it)"
fi
cols=$(head -1 /proc/net/softnet_stat | wc -w)
if [ "$cols" -ge 13 ]; then
    echo "feature: softnet backlog column yes ($cols columns)"
else
    echo "feature: softnet backlog column no ($cols columns): fallback 5 ms settle"
fi
qdisc probe || fail "qdisc probe: this kernel lacks something the plug needs"
echo "scenario: kernel-features ok"
