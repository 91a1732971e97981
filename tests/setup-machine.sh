#!/usr/bin/env bash
# Installs and starts what the integration tests need, so `make test` passes on a fresh machine:
# Dovecot (IMAP), openssl (test certificates), Chromium (the browser test), wrk (bench/pixel.py),
# promtool (the alert rules test), PostgreSQL and RabbitMQ (started if down).
set -euo pipefail

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need=()
command -v dovecot >/dev/null 2>&1 || need+=(dovecot-imapd)
command -v doveadm >/dev/null 2>&1 || need+=(dovecot-imapd)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v psql >/dev/null 2>&1 || need+=(postgresql)
command -v rabbitmqctl >/dev/null 2>&1 || need+=(rabbitmq-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)   # the tracking browser test
command -v wrk >/dev/null 2>&1 || need+=(wrk)             # bench/pixel.py
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup-machine: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v promtool >/dev/null 2>&1; then   # promtool check rules ops/prometheus/alerts.yml
  echo "setup-machine: installing prometheus (for promtool)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 5432; then
  echo "setup-machine: starting PostgreSQL"
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
fi
if ! port_open 5672; then
  echo "setup-machine: starting RabbitMQ"
  $SUDO rabbitmqctl -q start_app 2>/dev/null || $SUDO rabbitmq-server -detached
fi
for _ in $(seq 1 60); do
  if port_open 5432 && port_open 5672; then exit 0; fi
  sleep 1
done
port_open 5432 || { echo "setup-machine: PostgreSQL is not answering on 127.0.0.1:5432" >&2; exit 1; }
port_open 5672 || { echo "setup-machine: RabbitMQ is not answering on 127.0.0.1:5672" >&2; exit 1; }
