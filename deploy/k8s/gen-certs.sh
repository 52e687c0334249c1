#!/usr/bin/env bash
# Creates the TLS material of a ringattn deployment with openssl, for a
# cluster without cert-manager (with it, use overlays/cert-manager instead):
#
#   ca.crt, ca.key       the cluster CA (ECDSA P-256). Keep ca.key offline.
#   nats.crt, nats.key   NATS servers: client port 4222 and routes 6222
#                        (server and client usage; SANs for the Services,
#                        every pod of ringattn-nats-headless, localhost and
#                        127.0.0.1 for `kubectl port-forward`).
#   raft.crt, raft.key   coordinators' Raft mutual TLS (server and client
#                        usage; SAN ringattn-coordinator-raft, the name the
#                        coordinators verify each other by, and the pods'
#                        DNS names).
#
# and, with --apply, the Secrets the manifests mount (kubectl apply, so it
# also replaces them when rotating):
#
#   ringattn-nats-tls   tls.crt tls.key ca.crt   (NATS StatefulSet)
#   ringattn-nats-ca    ca.crt                   (coordinators, workers, gateway)
#   ringattn-raft-tls   tls.crt tls.key ca.crt   (coordinator StatefulSet)
#
# Usage:
#   deploy/k8s/gen-certs.sh -n ringattn --out ./ringattn-pki [--days 365] [--apply]
#
# An existing ca.crt/ca.key in --out is reused (rotation of the leaves: run
# it again with --apply; pods pick the new files up, see docs/SECURITY.md);
# --new-ca makes a new CA even if one exists.
set -euo pipefail

ns=ringattn
out=
days=365
apply=false
newca=false
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--namespace) ns=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --apply) apply=true; shift ;;
    --new-ca) newca=true; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gen-certs.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$out" ]; then echo "gen-certs.sh: --out DIR is required (see --help)" >&2; exit 2; fi
case "$days" in ''|*[!0-9]*) echo "gen-certs.sh: --days $days: want a whole number of days" >&2; exit 2 ;; esac
case "$ns" in ''|*[!a-z0-9-]*) echo "gen-certs.sh: --namespace $ns: want a Kubernetes namespace name" >&2; exit 2 ;; esac
command -v openssl >/dev/null || { echo "gen-certs.sh: openssl not found" >&2; exit 1; }

umask 077
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
serial() { echo "0x$(openssl rand -hex 16)"; }

if $newca || [ ! -s "$out/ca.key" ] || [ ! -s "$out/ca.crt" ]; then
  key "$tmp/ca.key"
  # The CA is valid ten times as long as the leaves it signs.
  openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days $((days * 10)) \
    -set_serial "$(serial)" -subj "/O=ringattn/CN=ringattn CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$tmp/ca.crt"
  mv "$tmp/ca.key" "$out/ca.key"
  mv "$tmp/ca.crt" "$out/ca.crt"
  chmod 0644 "$out/ca.crt"
  echo "gen-certs.sh: new CA in $out/ca.crt"
fi

# leaf NAME CN SANS: a server+client certificate signed by the CA.
leaf() {
  local name=$1 cn=$2 sans=$3
  key "$tmp/$name.key"
  openssl req -new -key "$tmp/$name.key" -subj "/O=ringattn/CN=$cn" -out "$tmp/$name.csr"
  cat >"$tmp/$name.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$sans
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash
EXT
  openssl x509 -req -in "$tmp/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -set_serial "$(serial)" -days "$days" -sha256 -extfile "$tmp/$name.ext" \
    -out "$tmp/$name.crt" 2>/dev/null
  # Key first, then the certificate, each replaced atomically.
  mv "$tmp/$name.key" "$out/$name.key"
  chmod 0644 "$tmp/$name.crt"
  mv "$tmp/$name.crt" "$out/$name.crt"
  echo "gen-certs.sh: $out/$name.crt ($cn, $days days)"
}

svc() { # every name a Service or headless pod name resolves by
  local n=$1
  echo "DNS:$n,DNS:$n.$ns,DNS:$n.$ns.svc,DNS:$n.$ns.svc.cluster.local"
}
leaf nats ringattn-nats \
  "$(svc ringattn-nats),$(svc '*.ringattn-nats-headless'),DNS:localhost,IP:127.0.0.1,IP:::1"
leaf raft ringattn-coordinator-raft \
  "DNS:ringattn-coordinator-raft,$(svc '*.ringattn-coordinator-headless')"

if $apply; then
  command -v kubectl >/dev/null || { echo "gen-certs.sh: kubectl not found" >&2; exit 1; }
  secret() { kubectl -n "$ns" create secret generic "$@" --dry-run=client -o yaml | kubectl apply -f -; }
  secret ringattn-nats-tls --from-file=tls.crt="$out/nats.crt" --from-file=tls.key="$out/nats.key" --from-file=ca.crt="$out/ca.crt"
  secret ringattn-nats-ca --from-file=ca.crt="$out/ca.crt"
  secret ringattn-raft-tls --from-file=tls.crt="$out/raft.crt" --from-file=tls.key="$out/raft.key" --from-file=ca.crt="$out/ca.crt"
fi
