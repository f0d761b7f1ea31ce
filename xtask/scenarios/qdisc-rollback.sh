# All or nothing: a setup that fails half-way (the classifier module cannot
# be loaded) removes what it added, and says what is missing.
set -u
TC=/usr/sbin/tc
NFT=/usr/sbin/nft
fail() { echo "FAIL: $*"; exit 1; }

modprobe sch_prio && modprobe sch_plug || fail "cannot load sch_prio/sch_plug"
# From now on the kernel cannot autoload anything (cls_fw, cls_u32, nf_tables).
echo /nonexistent > /proc/sys/kernel/modprobe
$TC qdisc show dev lo > /tmp/before
$NFT list ruleset > /tmp/nft-before 2>/dev/null

for c in fw u32; do
    qdisc setup --classifier $c 2>/tmp/err && fail "setup --classifier $c succeeded without cls_$c"
    cat /tmp/err
    grep -q "kernel lacks the $c classifier (cls_$c, CONFIG_NET_CLS_$(echo $c | tr a-z A-Z))" /tmp/err || fail "error does not name cls_$c"
    $TC qdisc show dev lo > /tmp/after
    diff /tmp/before /tmp/after || fail "setup --classifier $c left qdiscs behind"
    $TC filter show dev lo | grep -q . && fail "setup --classifier $c left filters behind"
done
$NFT list ruleset > /tmp/nft-after 2>/dev/null
diff /tmp/nft-before /tmp/nft-after || fail "nf_tables changed"
echo "scenario: qdisc-rollback ok"
