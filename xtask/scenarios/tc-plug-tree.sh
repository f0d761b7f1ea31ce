# The seed's tree built with iproute2's tc in the guest: the kernel has (or
# autoloads) sch_prio, pfifo, sch_plug and cls_fw.
set -e
TC=/usr/sbin/tc
$TC qdisc add dev lo root handle 1: prio bands 4
$TC qdisc add dev lo parent 1:1 handle 10: pfifo limit 1000
$TC qdisc add dev lo parent 1:2 handle 20: pfifo limit 1000
$TC qdisc add dev lo parent 1:3 handle 30: pfifo limit 1000
$TC qdisc add dev lo parent 1:4 handle 40: plug limit 1048576
$TC qdisc change dev lo handle 40: plug release_indefinite
$TC filter add dev lo protocol ip parent 1:0 prio 1 handle 1 fw classid 1:4
$TC qdisc show dev lo | tee /tmp/qdiscs
$TC filter show dev lo | tee /tmp/filters
grep -q 'qdisc prio 1: root .*bands 4' /tmp/qdiscs
grep -q 'qdisc plug 40: parent 1:4' /tmp/qdiscs
grep -c 'qdisc pfifo' /tmp/qdiscs | grep -qx 3
grep -q 'fw chain 0 handle 0x1 classid 1:4' /tmp/filters
# Loaded on demand by the kernel through modprobe and modules.dep:
lsmod | tee /tmp/mods
for m in sch_prio sch_plug cls_fw; do grep -q "^$m " /tmp/mods; done
echo "scenario: tc-plug-tree ok"
