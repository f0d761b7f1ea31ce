# Prints how many sockets skipped TIME_WAIT because its table was full
# (TcpExt TCPTimeWaitOverflow): such a socket answers its client's late
# segments with a reset. The guest's init sizes it (`tcp_max_tw_buckets`).
awk '/^TcpExt:/ { if (!c) { for (i = 2; i <= NF; i++) if ($i == "TCPTimeWaitOverflow") c = i; next } print $c }' /proc/net/netstat
