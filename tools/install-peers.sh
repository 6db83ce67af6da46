#!/usr/bin/env bash
# Install the Debian programs the end-to-end tests talk to, when run as root and
# they are missing. Never starts their system services (policy-rc.d denies it).
set -euo pipefail
# command to look for -> Debian package
declare -A PEERS=(
  [swaks]=swaks
  [/usr/share/perl5/IO/Socket/SSL.pm]=libio-socket-ssl-perl  # swaks --tls
  [/usr/lib/x86_64-linux-gnu/perl5/5.36/Net/SSLeay.pm]=libnet-ssleay-perl  # swaks --tls
  [mutt]=mutt
  [mbsync]=isync
  [fetchmail]=fetchmail
  [getmail]=getmail6
  [/usr/lib/dovecot/pop3]=dovecot-pop3d  # bench/pop3.py baseline (pulls in dovecot-core)
  [smtp-source]=postfix
  [clamd]=clamav-daemon  # tests/policy: EICAR through a real clamd (own signature db, no freshclam)
  [rspamd]=rspamd  # tests/policy: the rspamd scorer plug over its HTTP protocol
  [haproxy]=haproxy  # tests/net: PROXY protocol v1/v2 from a real load balancer (send-proxy, send-proxy-v2)
  [sieve-connect]=sieve-connect  # tests/sieve: a ManageSieve client we did not write (RFC 5804)
)
missing=()
for cmd in "${!PEERS[@]}"; do
  if [[ $cmd == /* ]]; then
    [ -e "$cmd" ] && continue   # a file the package installs
  elif command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ]; then
    continue
  fi
  missing+=("${PEERS[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "mailsrv: test peers missing (${missing[*]}); as root: apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 0
fi
echo "mailsrv: installing test peers: ${missing[*]}" >&2
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
fi
trap '[ $created_policy = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || true
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
  || echo "mailsrv: could not install ${missing[*]}; the tests that need them will say so" >&2
