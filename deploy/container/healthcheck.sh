#!/bin/sh
# Container health probe: GET /healthz on the proxy's own listener, exit 0 when it answers 2xx.
#
# The address comes from the same COMPOSER_PROXY_* variables the proxy reads, so moving the
# listener to another port or turning TLS on does not silently break the HEALTHCHECK. (Settings
# given only in a --config file are not seen here; set LISTEN and TLS_* by environment then.)
# /healthz is subject to the client allowlist like every route: COMPOSER_PROXY_ALLOW must admit
# loopback (the default does).
set -eu

listen="${COMPOSER_PROXY_LISTEN:-127.0.0.1:8080}"
port="${listen##*:}"
host="${listen%:*}"
# A wildcard listener is reached through loopback of the same family.
case "$host" in
  0.0.0.0) host=127.0.0.1 ;;
  "[::]") host="[::1]" ;;
esac

scheme=http
if [ -n "${COMPOSER_PROXY_TLS_CERT:-}" ] && [ -n "${COMPOSER_PROXY_TLS_KEY:-}" ]; then
  scheme=https
fi

# --insecure: the certificate names the public host, not loopback; this only checks liveness.
# --noproxy: an HTTP(S)_PROXY in the environment must not intercept a loopback probe.
exec curl --fail --silent --show-error --insecure --noproxy '*' --max-time 4 \
  --output /dev/null "$scheme://$host:$port/healthz"
