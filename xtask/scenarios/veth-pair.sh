# Sourced: two network namespaces joined by a veth pair, standing for a
# server host (srv: 192.0.2.1 and 2001:db8::1 on veth-s) and a client host
# (cli: 192.0.2.2 and 2001:db8::2 on veth-c), documentation addresses.
# Sets IP, S (run in srv) and C (run in cli); needs fail().
IP=/usr/sbin/ip
S="$IP netns exec srv"
C="$IP netns exec cli"
$IP netns add srv || fail "netns srv"
$IP netns add cli || fail "netns cli"
$IP link add veth-s type veth peer name veth-c || fail "veth"
$IP link set veth-s netns srv
$IP link set veth-c netns cli
# Each namespace has its own TIME_WAIT table: as large as the init's.
for ns in srv cli; do
    $IP netns exec $ns sh -c 'echo 32768 > /proc/sys/net/ipv4/tcp_max_tw_buckets' || fail "tcp_max_tw_buckets in $ns"
done
$S $IP link set lo up
$C $IP link set lo up
$S $IP addr add 192.0.2.1/24 dev veth-s
$S $IP addr add 2001:db8::1/64 dev veth-s nodad
$C $IP addr add 192.0.2.2/24 dev veth-c
$C $IP addr add 2001:db8::2/64 dev veth-c nodad
$S $IP link set veth-s up
$C $IP link set veth-c up
$C ping -c 1 -W 5 192.0.2.1 > /dev/null || fail "no IPv4 path between the namespaces"
$C ping -c 1 -W 5 2001:db8::1 > /dev/null || fail "no IPv6 path between the namespaces"
