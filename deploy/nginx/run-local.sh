#!/bin/sh
# Runs nginx in the foreground with deploy/nginx/tessera.conf in front of two replicas on
# this machine, as any user (root or not), everything under DIR:
#
#     deploy/nginx/run-local.sh DIR PORT HOST1:PORT1 HOST2:PORT2
#
# e.g. deploy/nginx/run-local.sh /tmp/tessera-nginx 8080 127.0.0.1:8081 127.0.0.1:8082
#
# The shipped file is used as it is, but for three substitutions: compose's replica
# addresses tessera-1:8080 and tessera-2:8080 become HOST1:PORT1 and HOST2:PORT2, and
# `listen 80;` becomes `listen 127.0.0.1:PORT;`. The result is DIR/tessera.conf, included
# by DIR/nginx.conf (pid, error log, temporary paths in DIR; one worker). The access log
# (format `tessera`) goes to stdout, errors to DIR/error.log. Stop it with SIGQUIT
# (graceful) or SIGTERM (at once). NGINX_BIN=/path/to/nginx picks the binary (default:
# nginx on the PATH, else /usr/sbin/nginx).
set -eu

if [ $# -ne 4 ]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
dir=$1 port=$2 r1=$3 r2=$4
conf=$(dirname "$0")/tessera.conf
nginx=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}

mkdir -p "$dir/tmp"
dir=$(cd "$dir" && pwd)

# Each directive must occur exactly once (comments aside), so that a change to
# tessera.conf that breaks the substitution fails here instead of running something else.
for pat in 'server tessera-1:8080 ' 'server tessera-2:8080 ' 'listen 80;'; do
    n=$(grep -c -E "^[[:space:]]*$pat" "$conf" || true)
    if [ "$n" != 1 ]; then
        echo "run-local.sh: '$pat' occurs $n times in $conf (want 1)" >&2
        exit 1
    fi
done
sed -E -e "s|^([[:space:]]*server )tessera-1:8080 |\\1$r1 |" \
       -e "s|^([[:space:]]*server )tessera-2:8080 |\\1$r2 |" \
       -e "s|^([[:space:]]*)listen 80;|\\1listen 127.0.0.1:$port;|" "$conf" > "$dir/tessera.conf"

cat > "$dir/nginx.conf" <<EOF
# Written by deploy/nginx/run-local.sh: the parts of a system's nginx.conf that the
# shipped http-context file needs, with every path under $dir.
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events {
    worker_connections 1024;
}
http {
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    include $dir/tessera.conf;
}
EOF

# -e: the error log used before the configuration is read (not the build's default path).
# NGINX in the environment would be taken for inherited listening sockets.
unset NGINX
exec "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;'
