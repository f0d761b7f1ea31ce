# Evidence for the ab stall (README, "Why the local hold is on lo's
# ingress"): capture lo while ab runs against reuse-server, once with each
# hold path installed and once with none, and count the segments that
# arrived out of order (an ACK carrying a SACK block: on loopback nothing is
# lost, so every one is a reordering).
# usage: lo-reorder.sh [REQUESTS]   (needs tcpdump on the host)
set -u
N=${1:-5000}
[ -x /usr/sbin/tcpdump ] || { echo "lo-reorder: no tcpdump in the guest (apt-get install tcpdump on the host)"; exit 1; }
reuse-server --listen 127.0.0.1:7000 2>/tmp/srv.log &
S=$!
for i in $(seq 1 100); do grep -q listening /tmp/srv.log && break; sleep 0.1; done
for path in none egress ingress; do
    case $path in
        egress) qdisc setup --port 7000 > /dev/null ;;
        ingress) qdisc --ingress setup --port 7000 > /dev/null ;;
    esac
    /usr/sbin/tcpdump -Z root -i lo -s 128 -w /tmp/cap.pcap -U tcp port 7000 2>/dev/null &
    T=$!
    sleep 1
    /usr/sbin/ab -q -s 5 -n "$N" -c 32 http://127.0.0.1:7000/ > /tmp/ab.out 2>&1
    rc=$?
    sleep 0.5; kill $T; wait $T
    /usr/sbin/tcpdump -Z root -nn -r /tmp/cap.pcap 2>/dev/null > /tmp/cap.txt
    echo "path=$path: ab exit $rc ($(grep -E '^Complete requests|^Total of' /tmp/ab.out | tr -s ' ')), segments out of order: $(grep -c 'sack 1 {' /tmp/cap.txt), resets: $(grep -c 'Flags \[R' /tmp/cap.txt)"
    case $path in
        egress) qdisc teardown > /dev/null ;;
        ingress) qdisc --ingress teardown > /dev/null ;;
    esac
done
kill $S
