#!/bin/sh
# Captures the netlink messages iproute2's tc and nft send, as hex, one file
# per operation, for the golden-byte tests (qdisc/tests/golden.rs).
#
# How: each command runs under `strace -e trace=sendmsg,sendto -e write=all`
# inside a fresh network namespace (`unshare -n`, so lo has ifindex 1 and
# no host state is touched); the hex dump of the datagram that carries the
# operation (chosen by netlink message type) is kept. The host kernel may
# refuse the request (it lacks prio, plug and fw): the bytes are what was
# sent either way. Needs root, strace, tc (iproute2) and nft (nftables).
#
#   sh qdisc/tests/golden/capture.sh     (rewrites the .hex files beside it)
set -eu
cd "$(dirname "$0")"

# $1 = output name, $2 = netlink message type (decimal) to keep, the first
# one sent (or TYPE:last, the last one), rest = command
cap() {
    name=$1; want=$2; shift 2
    unshare -n sh -c 'ip link set lo up; strace -f -e trace=sendmsg,sendto -e write=all -o /tmp/golden-strace.out "$@" >/dev/null 2>&1; cat /tmp/golden-strace.out' sh "$@" \
      | python3 -c '
import sys, re
want, _, which = sys.argv[1].partition(":"); want = int(want); blocks = []; cur = None
for line in sys.stdin:
    if re.match(r"^\s*(\d+\s+)?(sendmsg|sendto)\(", line):
        cur = []; blocks.append(cur); continue
    m = re.match(r"^\s*(\d+\s+)?\s*\| [0-9a-f]{5}  ((?:[0-9a-f]{2}  ?)+)", line)
    if m and cur is not None:
        cur.extend(m.group(2).split())
hits = [b for b in blocks if len(b) >= 6 and int(b[5] + b[4], 16) == want]
if not hits:
    sys.exit("no message of type %d captured" % want)
# The first message of that type, or with ":last" the last (ip sends an
# empty RTM_NEWLINK probe before the real one).
print(" ".join(hits[-1] if which == "last" else hits[0]))
' "$want" > "$name.hex"
    echo "captured $name.hex: $*"
}

cap prio_add        36 tc qdisc add dev lo root handle 1: prio bands 4
cap pfifo_add       36 tc qdisc add dev lo parent 1:1 handle 10: pfifo limit 1000
cap plug_add        36 tc qdisc add dev lo parent 1:4 handle 40: plug limit 1048576
cap plug_buffer     36 tc qdisc change dev lo parent 1:4 handle 40: plug block
cap plug_release    36 tc qdisc change dev lo parent 1:4 handle 40: plug release_indefinite
cap plug_release_one 36 tc qdisc change dev lo parent 1:4 handle 40: plug release
cap fw_add_ip       44 tc filter add dev lo protocol ip parent 1:0 prio 1 handle 0x1000000/0x1000000 fw classid 1:4
cap fw_add_ipv6     44 tc filter add dev lo protocol ipv6 parent 1:0 prio 2 handle 0x1000000/0x1000000 fw classid 1:4
cap u32_add_ip      44 tc filter add dev lo parent 1: protocol ip prio 1 u32 \
    match u32 0x00060000 0x00ff0000 at 8 match u32 0x05000000 0x0f000000 at 0 \
    match u32 0x00020000 0x00120000 at 32 match u32 0x7f000001 0xffffffff at 12 flowid 1:4
cap u32_add_ipv6    44 tc filter add dev lo parent 1: protocol ipv6 prio 2 u32 \
    match u32 0x00000600 0x0000ff00 at 4 match u32 0x00020000 0x00120000 at 52 \
    match u32 0x00000000 0xffffffff at 8 match u32 0x00000000 0xffffffff at 12 \
    match u32 0x00000000 0xffffffff at 16 match u32 0x00000001 0xffffffff at 20 flowid 1:4
cap u32_add_ip_port 44 tc filter add dev lo parent 1: protocol ip prio 1 u32 \
    match u32 0x00060000 0x00ff0000 at 8 match u32 0x05000000 0x0f000000 at 0 \
    match u32 0x00020000 0x00120000 at 32 match u32 0x7f000001 0xffffffff at 12 \
    match u32 0x00001b58 0x0000ffff at 20 flowid 1:4
cap u32_add_ipv6_port 44 tc filter add dev lo parent 1: protocol ipv6 prio 2 u32 \
    match u32 0x00000600 0x0000ff00 at 4 match u32 0x00020000 0x00120000 at 52 \
    match u32 0x00000000 0xffffffff at 8 match u32 0x00000000 0xffffffff at 12 \
    match u32 0x00000000 0xffffffff at 16 match u32 0x00000001 0xffffffff at 20 \
    match u32 0x00001b58 0x0000ffff at 40 flowid 1:4
cap root_del        37 tc qdisc del dev lo root
cap filter_del      45 tc filter del dev lo parent 1: prio 2 protocol ipv6

# The ingress path (remote clients): an ifb device of ours, the ingress
# qdisc on the real device (lo here), u32 filters that redirect SYNs to the
# served port to the ifb (which is ifindex 2 in the fresh namespace).
cap ifb_add         16:last ip link add ifb-lo type ifb
cap ifb_up          16:last sh -c 'ip link add ifb-lo type ifb; ip link set dev ifb-lo up'
cap ingress_add     36 tc qdisc add dev lo ingress
cap ingress_del     37 tc qdisc del dev lo ingress
cap ifb_del         17 sh -c 'ip link add ifb-lo type ifb; ip link del dev ifb-lo'
cap u32_mirred_ip   44 sh -c 'ip link add ifb-lo type ifb; tc qdisc add dev lo ingress; tc filter add dev lo parent ffff: protocol ip prio 1 u32 \
    match u32 0x00060000 0x00ff0000 at 8 match u32 0x05000000 0x0f000000 at 0 \
    match u32 0x00020000 0x00120000 at 32 match u32 0x00001b58 0x0000ffff at 20 \
    action mirred egress redirect dev ifb-lo'
cap u32_mirred_ipv6 44 sh -c 'ip link add ifb-lo type ifb; tc qdisc add dev lo ingress; tc filter add dev lo parent ffff: protocol ipv6 prio 2 u32 \
    match u32 0x00000600 0x0000ff00 at 4 match u32 0x00020000 0x00120000 at 52 \
    match u32 0x00001b58 0x0000ffff at 40 action mirred egress redirect dev ifb-lo'

# nft sends a whole transaction as one datagram that starts with BATCH_BEGIN (type 16).
nft_script() { printf '%s\n' \
    "add table $1 reuse_plug" "delete table $1 reuse_plug" "add table $1 reuse_plug" \
    "add chain $1 reuse_plug output { type route hook output priority mangle; policy accept; }" \
    "add rule $1 reuse_plug output $2 tcp flags & (syn|ack) == syn meta mark set meta mark or 0x1000000" > "/tmp/golden-$1.nft"; }
nft_script ip "ip saddr 127.0.0.1"; cap nft_install_ip 16 nft -f /tmp/golden-ip.nft
nft_script ip6 "ip6 saddr ::1"; cap nft_install_ip6 16 nft -f /tmp/golden-ip6.nft
nft_script ip ""; cap nft_install_ip_any 16 nft -f /tmp/golden-ip.nft
nft_script ip "ip saddr 127.0.0.1 tcp dport 7000"; cap nft_install_ip_port 16 nft -f /tmp/golden-ip.nft
nft_script ip6 "ip6 saddr ::1 tcp dport 7000"; cap nft_install_ip6_port 16 nft -f /tmp/golden-ip6.nft
cap nft_delete_ip 16 nft delete table ip reuse_plug
