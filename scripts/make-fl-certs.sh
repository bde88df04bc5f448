#!/usr/bin/env bash
# Make TLS certificates for a Flower deployment of `gradprom.federated` (SuperLink + SuperNodes + `flwr run`):
# a self-signed CA and a SuperLink server certificate signed by it.
#
#   scripts/make-fl-certs.sh [OUT_DIR=certs] [HOST...]      (default hosts: 127.0.0.1 localhost)
#
# Writes OUT_DIR/ca.crt (give it to every SuperNode: --root-certificates, and to `flwr`'s connection:
# root-certificates), OUT_DIR/server.pem and OUT_DIR/server.key (the SuperLink's --ssl-certfile/--ssl-keyfile,
# with --ssl-ca-certfile OUT_DIR/ca.crt). Keys never leave OUT_DIR; the private keys are mode 600.
set -euo pipefail

out="${1:-certs}"
shift || true
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(127.0.0.1 localhost)
command -v openssl >/dev/null || { echo "make-fl-certs: openssl is not installed" >&2; exit 2; }
mkdir -p "$out"
umask 077

san=""
for h in "${hosts[@]}"; do
  if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then san+="IP:$h,"; else san+="DNS:$h,"; fi
done
san="${san%,}"

# 1) the certificate authority
openssl genrsa -out "$out/ca.key" 4096 2>/dev/null
openssl req -x509 -new -nodes -key "$out/ca.key" -sha256 -days 365 -subj "/CN=gradprom-fl-ca" -out "$out/ca.crt"

# 2) the SuperLink's key and a certificate for its host names, signed by the CA
openssl genrsa -out "$out/server.key" 4096 2>/dev/null
openssl req -new -key "$out/server.key" -subj "/CN=${hosts[0]}" -out "$out/server.csr"
printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" \
  "$san" > "$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -out "$out/server.pem" -days 365 -sha256 -extfile "$out/server.ext" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 644 "$out/ca.crt" "$out/server.pem"
echo "certificates in $out: ca.crt, server.pem, server.key (for ${hosts[*]})"
