#!/usr/bin/env bash
# The README's API walk-through ("A group's life, through the API"), steps 1
# and 2 and one authenticated call, with nothing but curl, openssl and the
# shell: it makes an Ed25519 key, registers a client with its proof of
# possession, logs in by challenge, and looks its own keys up in the
# directory with the session token.
#
#   scripts/walkthrough.sh [SERVER_URL [CLIENT_ID]]
#
# SERVER_URL defaults to $MLSDS_SERVER, else http://127.0.0.1:7400 (a local
# 'mlsds serve'); CLIENT_ID to a random one. Needs bash, curl, openssl
# (1.1.1 or later, for Ed25519), base64, od, sed and printf.
set -euo pipefail

server="${1:-${MLSDS_SERVER:-http://127.0.0.1:7400}}"
id="${2:-walker-$(od -An -tx1 -N4 /dev/urandom | tr -d ' \n')}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

# varint N: the MLS variable-size length prefix of N (RFC 9420 §2.1.2):
# 1 byte below 64, 2 bytes (top bits 01) below 16384, else 4 bytes (10).
varint() {
  local n=$1
  if [ "$n" -lt 64 ]; then
    printf "\\x$(printf %02x "$n")"
  elif [ "$n" -lt 16384 ]; then
    printf "\\x$(printf %02x $(((n >> 8) | 0x40)))\\x$(printf %02x $((n & 0xff)))"
  else
    printf "\\x$(printf %02x $(((n >> 24) | 0x80)))\\x$(printf %02x $(((n >> 16) & 0xff)))"
    printf "\\x$(printf %02x $(((n >> 8) & 0xff)))\\x$(printf %02x $((n & 0xff)))"
  fi
}

# opaque FILE: the bytes of FILE as an MLS opaque<V>: length prefix, bytes.
opaque() {
  varint "$(wc -c <"$1" | tr -d ' ')"
  cat "$1"
}

b64() { base64 <"$1" | tr -d '\n'; }

# sign_with_label LABEL FILE: SignWithLabel(key.pem, LABEL, content of FILE)
# (RFC 9420 §5.1.2), base64: the Ed25519 signature of
#   struct { opaque label<V> = "MLS 1.0 " + LABEL; opaque content<V>; }
sign_with_label() {
  printf 'MLS 1.0 %s' "$1" >label.bin
  { opaque label.bin; opaque "$2"; } >signcontent.bin
  openssl pkeyutl -sign -inkey key.pem -rawin -in signcontent.bin -out sig.bin
  b64 sig.bin
}

# field NAME: the string value of the JSON field NAME in standard input.
field() { sed -n "s/.*\"$1\": *\"\\([^\"]*\\)\".*/\\1/p"; }

# call Service/Method JSON [TOKEN]: one Connect call, JSON in and out.
call() {
  local auth=()
  if [ -n "${3:-}" ]; then auth=(-H "Authorization: Bearer $3"); fi
  curl -sS --fail-with-body -X POST "$server/mlsds.v1.$1" \
    -H 'Content-Type: application/json' "${auth[@]}" -d "$2"
}

echo "== 0. an Ed25519 signature key (cipher suite 1) for client $id"
openssl genpkey -algorithm ed25519 -out key.pem 2>/dev/null
# The SignaturePublicKey is the raw 32-byte key: the end of the DER SPKI.
openssl pkey -in key.pem -pubout -outform DER | tail -c 32 >pub.bin

echo "== 1. RegisterClient, with the proof of possession"
# Credential (RFC 9420 §5.3): uint16 credential_type = 1 (basic),
# opaque identity<V> = the client id.
printf %s "$id" >id.bin
{ printf '\x00\x01'; opaque id.bin; } >credential.bin
# RegisterTBS: opaque credential<V>; opaque signature_key<V>;
# uint16 cipher_suite; opaque user_id<V> (here the client is its own user).
{ opaque credential.bin; opaque pub.bin; printf '\x00\x01'; opaque id.bin; } >tbs.bin
proof="$(sign_with_label "mlsds register" tbs.bin)"
call AuthService/RegisterClient "{\"credential\":\"$(b64 credential.bin)\",\"signatureKey\":\"$(b64 pub.bin)\",\"cipherSuite\":1,\"userId\":\"$id\",\"proof\":\"$proof\"}"
echo

echo "== 2. GetChallenge, sign it, Authenticate"
challenge_json="$(call AuthService/GetChallenge "{\"clientId\":\"$id\"}")"
echo "$challenge_json"
challenge="$(field challenge <<<"$challenge_json")"
label="$(field label <<<"$challenge_json")"
printf %s "$challenge" | base64 -d >challenge.bin
signature="$(sign_with_label "${label:-mlsds auth}" challenge.bin)"
auth_json="$(call AuthService/Authenticate "{\"clientId\":\"$id\",\"challenge\":\"$challenge\",\"signature\":\"$signature\"}")"
token="$(field sessionToken <<<"$auth_json")"
if [ -z "$token" ]; then
  echo "walkthrough: no session token in $auth_json" >&2
  exit 1
fi
echo "session token: ${token:0:12}... (expires $(field expiresAt <<<"$auth_json"))"

echo "== an authenticated call: AccountService/GetClientKeys"
keys_json="$(call AccountService/GetClientKeys "{\"clientIds\":[\"$id\"]}" "$token")"
echo "$keys_json"
case "$keys_json" in
*"$(b64 pub.bin)"*) echo "walkthrough: ok, the directory binds $id to this key" ;;
*)
  echo "walkthrough: the directory does not list this key for $id" >&2
  exit 1
  ;;
esac
