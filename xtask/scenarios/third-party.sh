# Servers we did not write, under `reloader run --every 100ms`, each with the
# flags its documentation calls for:
#   nginx         reuseport, 2 workers, daemon off; --stop-signal QUIT (its
#                 TERM is a fast shutdown); workers switch to nobody, so
#                 --server-caps CAP_SETUID,CAP_SETGID,CAP_CHOWN (its temp paths)
#   haproxy-db    HAProxy in the foreground; --stop-signal USR1 (soft stop)
#   haproxy-ws    HAProxy master-worker with sd_notify (READY=1 from the master)
#   haproxy-fd    HAProxy on the reloader's socket (`bind fd@3`, --strategy handoff)
#   launcher      `sh -c 'nginx ...; true'`: a launcher that does not exec
# usage: third-party.sh SERVER STRATEGY CLIENT CONC REQUESTS
#   CLIENT: loadgen (a new connection per request, spanning 5 reloads at
#   least) or ab; every request must succeed.
set -u
SERVER=$1 STRATEGY=$2 CLIENT=$3 CONC=$4 N=$5
fail() { echo "FAIL: $*"; tail -25 /tmp/reloader.log; cat /tmp/ngx/error.log 2>/dev/null | tail -5; exit 1; }
NGINX=/usr/sbin/nginx HAPROXY=/usr/sbin/haproxy
case $SERVER in
  nginx|launcher) [ -x $NGINX ] || fail "no nginx in the guest (apt-get install nginx-light on the host)" ;;
  haproxy*) [ -x $HAPROXY ] || fail "no haproxy in the guest (apt-get install haproxy on the host)" ;;
esac

mkdir -p /tmp/ngx && chmod 777 /tmp/ngx
cat > /tmp/ngx/nginx.conf <<'CONF'
daemon off; master_process on; worker_processes 2;
error_log /tmp/ngx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path /tmp/ngx/body; proxy_temp_path /tmp/ngx/proxy;
    fastcgi_temp_path /tmp/ngx/fcgi; uwsgi_temp_path /tmp/ngx/uwsgi; scgi_temp_path /tmp/ngx/scgi;
    server { listen 127.0.0.1:7000 reuseport; location / { return 200 "$pid"; } }
}
CONF
haproxy_conf() { # $1: bind address
    cat > /tmp/haproxy.cfg <<CONF
global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind $1
    http-request return status 200 content-type text/plain lf-string "%pid"
CONF
}
# Each nginx generation gets its own pid file ($$ is nginx's PID after exec).
NGINX_CMD='exec /usr/sbin/nginx -c /tmp/ngx/nginx.conf -g "pid /tmp/ngx/$$.pid;"'
FLAGS="--strategy $STRATEGY --every 100ms --drain-timeout 10s --control /tmp/r.sock"
case $SERVER in
  nginx)
    set -- reloader run $FLAGS --stop-signal QUIT --server-caps CAP_SETUID,CAP_SETGID,CAP_CHOWN -- sh -c "$NGINX_CMD" ;;
  launcher)
    set -- reloader run $FLAGS --stop-signal QUIT --server-caps CAP_SETUID,CAP_SETGID,CAP_CHOWN -- sh -c "${NGINX_CMD#exec }; echo launcher: nginx exited" ;;
  haproxy-db)
    haproxy_conf 127.0.0.1:7000
    set -- reloader run $FLAGS --stop-signal USR1 -- $HAPROXY -db -f /tmp/haproxy.cfg ;;
  haproxy-ws)
    haproxy_conf 127.0.0.1:7000
    set -- reloader run $FLAGS --stop-signal USR1 -- $HAPROXY -Ws -f /tmp/haproxy.cfg ;;
  haproxy-fd)
    haproxy_conf fd@3
    set -- reloader run $FLAGS --stop-signal USR1 -- $HAPROXY -db -f /tmp/haproxy.cfg ;;
  *) fail "unknown server $SERVER" ;;
esac
echo "+ $*"
"$@" 2>/tmp/reloader.log &
R=$!
for i in $(seq 1 300); do grep -q 'reloader: serving' /tmp/reloader.log && break; sleep 0.1; done
grep -q 'reloader: serving' /tmp/reloader.log || fail "reloader did not start"

case $CLIENT in
  loadgen)
    # 6 generations answered (nginx: 2 worker PIDs each).
    case $SERVER in nginx|launcher) MINS=12 ;; *) MINS=6 ;; esac
    loadgen run 127.0.0.1:7000 -c "$CONC" -n "$N" --min-servers $MINS -d 900 | tee /tmp/load.out
    failed=$(sed -n 's/.* failed=\([0-9]*\) .*/\1/p' /tmp/load.out)
    ;;
  ab)
    /usr/sbin/ab -q -s 10 -n "$N" -c "$CONC" http://127.0.0.1:7000/ > /tmp/ab.out 2>&1
    rc=$?
    grep -E '^(Complete|Failed) requests|^Non-2xx|Total of|timeout' /tmp/ab.out
    [ "$rc" = 0 ] || fail "ab exited $rc: a request was never answered"
    failed=$(sed -n 's/^Failed requests: *//p' /tmp/ab.out)
    grep -q '^Non-2xx' /tmp/ab.out && failed="$failed+non-2xx"
    ;;
esac
kill -TERM $R
wait $R
rc=$?
ok=$(grep -c 'reload #[0-9]*: ok' /tmp/reloader.log)
bad=$(grep -c 'reload #[0-9]*: rolled back' /tmp/reloader.log)
grep 'reload #' /tmp/reloader.log | tail -2
echo "server=$SERVER strategy=$STRATEGY $CLIENT c=$CONC: $ok reloads ok, $bad rolled back, failed $failed; reloader exit $rc"
[ "$rc" = 0 ] || fail "reloader exited $rc"
# Six generations answered the load. A server without the gate listens
# before its check has passed, so the sixth can answer before its reload
# is logged: at least four reloads completed, and a fifth had begun.
[ "$ok" -ge 4 ] || fail "too few reloads ($ok)"
[ "$bad" = 0 ] || fail "$bad reloads rolled back"
[ "$failed" = 0 ] || fail "$failed failed requests"
pidof nginx haproxy > /dev/null && fail "a server outlived the reloader: $(pidof nginx haproxy)"
echo "scenario: third-party $SERVER $STRATEGY $CLIENT c=$CONC ok"
