# The seed's experiment and more, writing results to /results (a host
# folder): for each concurrency, a baseline run against one reuse-server,
# then a run under `reloader run --every 100ms` for each strategy; one `ab`
# cross-check of the baseline. Driven by `cargo xtask bench` / `demo`.
# Then the peers operators already trust, under the same load and reload
# cadence: nginx (`nginx -s reload`'s SIGHUP, with and without `reuseport`)
# and HAProxy (master-worker, seamless reload with `expose-fd listeners`),
# each answering its worker's PID, each with its own baseline.
# With CLIENTS containing "remote", the strategies run again for remote
# clients: the server and reloader in a namespace `srv` (192.0.2.1 on
# veth-s), the load from a namespace `cli` (192.0.2.2) across a veth pair;
# the plug strategies hold SYNs on veth-s's ingress (`--ingress veth-s`).
# Last, back-to-back reloads (BACK_TO_BACK: strategies and peers, local
# clients): each reload starts when the previous one ended, under the same
# load (`--every 0s`; a peer's ended when its master has a new worker),
# for the reloads per second sustained.
# With INTERLEAVE > 0 (local clients and peers), each system's baseline
# and its reloading run alternate in INTERLEAVE slices of REQUESTS/INTERLEAVE
# requests each, under one process tree (our reloader and its server, or
# the peer's master), so that a drift of the machine's speed during the
# bench lands on both; every system, ours and the peers, is then told to
# reload by SIGHUP every 100 ms (`reloader run` without --every), the
# same request at the same cadence.
# usage: bench.sh REQUESTS "CONCURRENCIES" "STRATEGIES" AB_REQUESTS ["PEERS"] ["CLIENTS"] ["BACK_TO_BACK"] [INTERLEAVE]
set -u
N=$1 CONCS=$2 STRATEGIES=$3 AB_N=$4 PEERS=${5:-} CLIENTS=${6:-local} BACK_TO_BACK=${7:-} INTERLEAVE=${8:-0}
OUT=${RESULTS:-/results}
AB=${AB:-/usr/sbin/ab}
fail() { # a peer we started is stopped first
    echo "BENCH-FAIL: $*"
    [ -n "${MASTER:-}" ] && peer_stop
    exit 1
}
[ -d $OUT ] || fail "no results folder"
echo "BENCH-INFO kernel $(uname -r) cpus $(nproc)"
# One thread serves, as the peers are set up (nginx worker_processes 1,
# HAProxy nbthread 1); it is also reuse-server's cheapest start.
SERVE="reuse-server --threads 1"

# ticks PID: the CPU it used and that of the children it reaped (utime
# stime cutime cstime, /proc/PID/stat fields 14-17, in 1/100 s), for the
# CPU per reload (the reloader's own, and its generations').
ticks() { sed 's/.*) //' /proc/$1/stat | cut -d' ' -f12-15; }
wait_serving() { # $1: log
    for i in $(seq 1 300); do grep -qs "$2" "$1" && return 0; sleep 0.1; done
    fail "no '$2' in $1"
}

# interleaved BASE RELOADING C K RELOAD...: INTERLEAVE pairs of slices
# against 127.0.0.1:7000, a baseline slice (nothing reloads) then a
# reloading one (the command RELOAD... every 100 ms while its load runs),
# appended to $OUT/BASE.tsv and $OUT/RELOADING.tsv; K: loadgen's -k or "".
# Sets SENT, the reloads asked for.
interleaved() {
    quiet=$1 busy=$2 conc=$3 k=$4; shift 4
    per=$((N / INTERLEAVE)) i=0 SENT=0
    rm -f $OUT/$quiet.tsv $OUT/$busy.tsv
    while [ $i -lt $INTERLEAVE ]; do
        loadgen run 127.0.0.1:7000 -c $conc -n $per $k --tsv /tmp/slice.tsv > /tmp/slice.txt
        slice_to $OUT/$quiet.tsv
        loadgen run 127.0.0.1:7000 -c $conc -n $per $k --tsv /tmp/slice.tsv > /tmp/slice.txt &
        L=$!
        while kill -0 $L 2>/dev/null; do "$@"; SENT=$((SENT + 1)); sleep 0.1; done
        wait $L
        slice_to $OUT/$busy.tsv
        i=$((i + 1))
    done
    echo "BENCH-INFO $busy: $INTERLEAVE slices of $per requests each, alternating with $quiet's; $SENT reloads asked for ($*)"
}
slice_to() { # $1: the TSV that /tmp/slice.tsv's records are appended to
    [ -e $1 ] || head -n 1 /tmp/slice.tsv > $1
    tail -n +2 /tmp/slice.tsv >> $1
}

case " $CLIENTS " in *" local "*) LOCAL_CONCS=$CONCS ;; *) LOCAL_CONCS="" ;; esac
for c in $LOCAL_CONCS; do
    rm -f /tmp/server.log # the wait below must not read the last one's
    $SERVE 2>/tmp/server.log &
    S=$!
    wait_serving /tmp/server.log "listening on"
    echo "BENCH-RUN baseline c=$c"
    loadgen run 127.0.0.1:7000 -c $c -n $N --tsv $OUT/baseline-c$c.tsv --progress | tee $OUT/baseline-c$c.txt
    if [ "$c" = 1 ] && [ "$AB_N" -gt 0 ]; then
        echo "BENCH-RUN ab baseline c=1"
        $AB -q -n $AB_N -g $OUT/ab-baseline-c1.tsv http://127.0.0.1:7000/ > $OUT/ab-baseline-c1.txt 2>&1
        grep -E "^(Complete|Failed) requests|^Time per request.*\(mean\)" $OUT/ab-baseline-c1.txt
    fi
    kill $S; wait $S

    for s in $STRATEGIES; do
        # NAME-k: the same strategy with kept-alive connections (loadgen -k).
        base=${s%-k}; K=""
        [ "$base" != "$s" ] && K="-k"
        # Interleaved, the reloads come from SIGHUP every 100 ms, as the peers'.
        EVERY="--every 100ms"
        [ "$INTERLEAVE" -gt 0 ] && EVERY=""
        reloader run --strategy $base $EVERY --drain-timeout 10s --control /tmp/r.sock -- $SERVE 2>$OUT/reloading-$s-c$c.log &
        R=$!
        wait_serving $OUT/reloading-$s-c$c.log "reloader: serving"
        t0=$(ticks $R); r0=$(grep -c 'reload #[0-9]*: ok' $OUT/reloading-$s-c$c.log)
        if [ "$INTERLEAVE" -gt 0 ]; then
            echo "BENCH-RUN interleaved strategy=$s c=$c"
            interleaved baseline-$s-c$c reloading-$s-c$c $c "$K" kill -HUP $R
        else
            echo "BENCH-RUN reloading strategy=$s c=$c"
            loadgen run 127.0.0.1:7000 -c $c -n $N $K --tsv $OUT/reloading-$s-c$c.tsv --progress | tee $OUT/reloading-$s-c$c.txt
        fi
        echo "$r0 $t0 $(grep -c 'reload #[0-9]*: ok' $OUT/reloading-$s-c$c.log) $(ticks $R)" > $OUT/reloading-$s-c$c.cpu
        kill -TERM $R; wait $R
        grep -c 'reload #[0-9]*: ok' $OUT/reloading-$s-c$c.log > $OUT/reloading-$s-c$c.reloads
        grep -c 'reload #[0-9]*: rolled back' $OUT/reloading-$s-c$c.log >> $OUT/reloading-$s-c$c.reloads
    done
done
# --- remote clients ---
case " $CLIENTS " in *" remote "*)
    . "$(dirname "$0")/veth-pair.sh"
    for c in $CONCS; do
        rm -f /tmp/server.log
        $S $SERVE --listen 0.0.0.0:7000 2>/tmp/server.log &
        P=$!
        wait_serving /tmp/server.log "listening on"
        echo "BENCH-RUN remote baseline c=$c"
        $C loadgen run 192.0.2.1:7000 -c $c -n $N --tsv $OUT/remote-baseline-c$c.tsv --progress | tee $OUT/remote-baseline-c$c.txt
        kill $P; wait $P
        for s in $STRATEGIES; do
            base=${s%-k}; K=""
            [ "$base" != "$s" ] && K="-k"
            INGRESS=""
            [ "$base" = plug ] && INGRESS="--ingress veth-s"
            $S reloader run --strategy $base $INGRESS --addr 0.0.0.0:7000 --every 100ms --drain-timeout 10s \
                --control /tmp/r.sock -- $SERVE --listen 0.0.0.0:7000 2>$OUT/remote-$s-c$c.log &
            R=$!
            wait_serving $OUT/remote-$s-c$c.log "reloader: serving"
            echo "BENCH-RUN remote reloading strategy=$s c=$c"
            t0=$(ticks $R); r0=$(grep -c 'reload #[0-9]*: ok' $OUT/remote-$s-c$c.log)
            $C loadgen run 192.0.2.1:7000 -c $c -n $N $K --tsv $OUT/remote-$s-c$c.tsv --progress | tee $OUT/remote-$s-c$c.txt
            echo "$r0 $t0 $(grep -c 'reload #[0-9]*: ok' $OUT/remote-$s-c$c.log) $(ticks $R)" > $OUT/remote-$s-c$c.cpu
            kill -TERM $R; wait $R
            grep -c 'reload #[0-9]*: ok' $OUT/remote-$s-c$c.log > $OUT/remote-$s-c$c.reloads
            grep -c 'reload #[0-9]*: rolled back' $OUT/remote-$s-c$c.log >> $OUT/remote-$s-c$c.reloads
        done
    done
    $IP netns del srv; $IP netns del cli
    ;;
esac
# --- peers ---
NGINX=/usr/sbin/nginx
HAPROXY=/usr/sbin/haproxy
nginx_conf() { # $1: listen options
    mkdir -p /tmp/ngx
    cat > /tmp/ngx/nginx.conf <<EOF
daemon on; master_process on; worker_processes 1; user root;
pid /tmp/ngx/nginx.pid; error_log /tmp/ngx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path /tmp/ngx/body; proxy_temp_path /tmp/ngx/proxy;
    fastcgi_temp_path /tmp/ngx/fcgi; uwsgi_temp_path /tmp/ngx/uwsgi; scgi_temp_path /tmp/ngx/scgi;
    server { listen 127.0.0.1:7000 $1; location / { return 200 "\$pid"; } }
}
EOF
}
haproxy_conf() {
    cat > /tmp/haproxy.cfg <<EOF
global
    master-worker
    nbthread 1
    stats socket /tmp/haproxy.sock mode 600 expose-fd listeners level admin
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:7000
    http-request return status 200 content-type text/plain lf-string "%pid"
EOF
}
peer_start() { # $1: peer; sets MASTER once the peer answers
    case $1 in
        nginx) nginx_conf ""; pidfile=/tmp/ngx/nginx.pid ;;
        nginx-reuseport) nginx_conf reuseport; pidfile=/tmp/ngx/nginx.pid ;;
        haproxy) haproxy_conf; pidfile=/tmp/haproxy.pid ;;
    esac
    rm -f $pidfile
    case $1 in
        nginx*) $NGINX -c /tmp/ngx/nginx.conf || fail "nginx" ;;
        haproxy) $HAPROXY -W -D -p $pidfile -f /tmp/haproxy.cfg || fail "haproxy" ;;
    esac
    # Both daemonize: the master writes its PID file and the worker
    # accepts some time after the command returns.
    i=0
    until [ -s $pidfile ] && loadgen get 127.0.0.1:7000 > /dev/null 2>&1; do
        i=$((i + 1)); [ $i -gt 300 ] && fail "$1 does not answer after 30 s"
        sleep 0.1
    done
    MASTER=$(cat $pidfile)
}
peer_reload() { # $1: peer
    case $1 in
        nginx*) kill -HUP $MASTER ;;     # what `nginx -s reload` sends
        haproxy) kill -USR2 $MASTER ;;   # master-worker reload (re-exec, fds over the socket)
    esac
}
peer_stop() { # the master and the workers it has, by PID (never another's nginx)
    workers=$(cat /proc/$MASTER/task/*/children 2>/dev/null)
    kill -QUIT $MASTER 2>/dev/null
    i=0
    while kill -0 $MASTER 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    for w in $MASTER $workers; do kill -9 $w 2>/dev/null; done
    # The port is free again once no listener of ours is left on it.
    i=0
    while loadgen get 127.0.0.1:7000 > /dev/null 2>&1 && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    MASTER=""
}
for p in $PEERS; do
    case $p in
        nginx*) [ -x $NGINX ] || { echo "BENCH-INFO no nginx in the guest: skipped"; continue; } ;;
        haproxy) [ -x $HAPROXY ] || { echo "BENCH-INFO no haproxy in the guest: skipped"; continue; } ;;
    esac
    for c in $CONCS; do
        peer_start $p
        if [ "$INTERLEAVE" -gt 0 ]; then
            echo "BENCH-RUN interleaved peer $p c=$c"
            interleaved peer-$p-baseline-c$c peer-$p-reloading-c$c $c "" peer_reload $p
            echo $SENT > $OUT/peer-$p-reloading-c$c.reloads; echo 0 >> $OUT/peer-$p-reloading-c$c.reloads
            peer_stop
            continue
        fi
        echo "BENCH-RUN peer $p baseline c=$c"
        loadgen run 127.0.0.1:7000 -c $c -n $N --tsv $OUT/peer-$p-baseline-c$c.tsv --progress | tee $OUT/peer-$p-baseline-c$c.txt
        echo "BENCH-RUN peer $p reloading c=$c"
        loadgen run 127.0.0.1:7000 -c $c -n $N --tsv $OUT/peer-$p-reloading-c$c.tsv --progress > $OUT/peer-$p-reloading-c$c.txt &
        L=$!
        n=0
        while kill -0 $L 2>/dev/null; do peer_reload $p; n=$((n + 1)); sleep 0.1; done
        wait $L
        cat $OUT/peer-$p-reloading-c$c.txt
        echo $n > $OUT/peer-$p-reloading-c$c.reloads; echo 0 >> $OUT/peer-$p-reloading-c$c.reloads
        peer_stop
    done
done
# --- back-to-back reloads ---
for c in $LOCAL_CONCS; do
    for s in $BACK_TO_BACK; do
        case $s in
        nginx*|haproxy)
            case $s in
                nginx*) [ -x $NGINX ] || { echo "BENCH-INFO no nginx in the guest: skipped"; continue; } ;;
                haproxy) [ -x $HAPROXY ] || { echo "BENCH-INFO no haproxy in the guest: skipped"; continue; } ;;
            esac
            peer_start $s
            echo "BENCH-RUN back-to-back peer $s c=$c"
            loadgen run 127.0.0.1:7000 -c $c -n $N --tsv $OUT/b2b-$s-c$c.tsv --progress > $OUT/b2b-$s-c$c.txt &
            L=$!
            n=0
            kids() { cat /proc/$MASTER/task/*/children; }
            resent=0
            while kill -0 $L 2>/dev/null; do
                was=" $(kids) "
                peer_reload $s
                turns=0
                # Ended once the master has a worker it had not before (it
                # serves the listeners it inherits), or the load is over;
                # looked at every 10 ms, asking nothing of the server. A
                # signal that comes while the master still takes the last
                # reload in is not acted on (HAProxy): sent again after 0.5 s.
                while kill -0 $L 2>/dev/null; do
                    new=0
                    for k in $(kids); do case "$was" in *" $k "*) ;; *) new=1 ;; esac; done
                    [ $new = 1 ] && { n=$((n + 1)); break; }
                    sleep 0.01
                    turns=$((turns + 1))
                    [ $turns -ge 50 ] && { peer_reload $s; turns=0; resent=$((resent + 1)); }
                done
            done
            echo "BENCH-INFO back-to-back $s c=$c: $n reloads ended, $resent signal(s) sent again"

            wait $L
            cat $OUT/b2b-$s-c$c.txt
            echo $n > $OUT/b2b-$s-c$c.reloads; echo 0 >> $OUT/b2b-$s-c$c.reloads
            peer_stop
            ;;
        *)
            reloader run --strategy $s --every 0s --drain-timeout 10s --control /tmp/r.sock -- $SERVE 2>$OUT/b2b-$s-c$c.log &
            R=$!
            wait_serving $OUT/b2b-$s-c$c.log "reloader: serving"
            echo "BENCH-RUN back-to-back strategy=$s c=$c"
            t0=$(ticks $R); r0=$(grep -c 'reload #[0-9]*: ok' $OUT/b2b-$s-c$c.log)
            b0=$(grep -c 'reload #[0-9]*: rolled back' $OUT/b2b-$s-c$c.log)
            loadgen run 127.0.0.1:7000 -c $c -n $N --tsv $OUT/b2b-$s-c$c.tsv --progress | tee $OUT/b2b-$s-c$c.txt
            r1=$(grep -c 'reload #[0-9]*: ok' $OUT/b2b-$s-c$c.log)
            b1=$(grep -c 'reload #[0-9]*: rolled back' $OUT/b2b-$s-c$c.log)
            echo "$r0 $t0 $r1 $(ticks $R)" > $OUT/b2b-$s-c$c.cpu
            kill -TERM $R; wait $R
            echo $((r1 - r0)) > $OUT/b2b-$s-c$c.reloads; echo $((b1 - b0)) >> $OUT/b2b-$s-c$c.reloads
            ;;
        esac
    done
done
sync
echo "BENCH-DONE"
