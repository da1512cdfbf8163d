// The ts-mls side of the mlsds interoperability tests, shared by
// interop.mjs (ts-mls clients only) and sdk.mjs (ts-mls clients together
// with a client of the Go SDK): a ts-mls 1.6.4 client (cipher suite 1)
// with its session with the Delivery Service, spoken to over Connect's
// JSON protocol (HTTP/1.1 POST; Subscribe as a Connect server stream).
//
// Call useServer(url) once before anything else.

import {
  createApplicationMessage,
  createGroupInfoWithExternalPub,
  decodeMlsMessage,
  defaultCapabilities,
  emptyPskIndex,
  encodeMlsMessage,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  processPrivateMessage,
  processPublicMessage,
} from "ts-mls"
import { encodeCredential } from "ts-mls/credential.js"
import { signWithLabel } from "ts-mls/crypto/signature.js"
import { encodeRatchetTree } from "ts-mls/ratchetTree.js"
import { createGroupInfo } from "ts-mls/createCommit.js"
import { makeKeyPackageRef } from "ts-mls/keyPackage.js"

export const SUITE = 1 // MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
export const impl = await getCiphersuiteImpl(getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"))
export const enc = new TextEncoder()
export const dec = new TextDecoder()
export const b64 = (u8) => Buffer.from(u8).toString("base64")
export const unb64 = (s) => new Uint8Array(Buffer.from(s ?? "", "base64"))
export const log = (...a) => console.error("[tsmls]", ...a)

let base

// useServer sets the Delivery Service's base URL.
export function useServer(url) {
  base = url.replace(/\/+$/, "")
}

// RpcError is a Connect error answer.
export class RpcError extends Error {
  constructor(path, status, body) {
    super(`${path}: HTTP ${status}: ${body?.code}: ${body?.message}`)
    this.code = body?.code
    this.details = body?.details ?? []
  }
  detailTypes() {
    return this.details.map((d) => d.type)
  }
}

// rpc makes one unary Connect call with the JSON codec (HTTP/1.1 POST).
export async function rpc(path, msg, token) {
  const headers = { "Content-Type": "application/json", "Connect-Protocol-Version": "1" }
  if (token) headers.Authorization = `Bearer ${token}`
  const res = await fetch(`${base}/${path}`, { method: "POST", headers, body: JSON.stringify(msg) })
  const text = await res.text()
  let body
  try {
    body = text ? JSON.parse(text) : {}
  } catch {
    body = { code: "unknown", message: text }
  }
  if (!res.ok) throw new RpcError(path, res.status, body)
  return body
}

// waitWelcome opens a Subscribe server stream (Connect streaming: 5-byte
// envelopes, flag 2 is the end-of-stream frame) and returns the first
// WelcomeEvent, then hangs up.
export async function waitWelcome(token) {
  const ac = new AbortController()
  const timer = setTimeout(() => ac.abort(), 30_000)
  const body = Buffer.from(JSON.stringify({}))
  const frame = Buffer.alloc(5 + body.length)
  frame.writeUInt32BE(body.length, 1)
  body.copy(frame, 5)
  try {
    const res = await fetch(`${base}/mlsds.v1.DeliveryService/Subscribe`, {
      method: "POST",
      headers: { "Content-Type": "application/connect+json", "Connect-Protocol-Version": "1", Authorization: `Bearer ${token}` },
      body: frame,
      signal: ac.signal,
    })
    if (!res.ok) throw new Error(`Subscribe: HTTP ${res.status}: ${await res.text()}`)
    let buf = Buffer.alloc(0)
    for await (const chunk of res.body) {
      buf = Buffer.concat([buf, Buffer.from(chunk)])
      while (buf.length >= 5) {
        const flags = buf[0]
        const n = buf.readUInt32BE(1)
        if (buf.length < 5 + n) break
        const ev = JSON.parse(buf.subarray(5, 5 + n).toString() || "{}")
        buf = buf.subarray(5 + n)
        if (flags & 2) throw new Error(`Subscribe ended: ${JSON.stringify(ev)}`)
        if (ev.welcome) return ev.welcome
      }
    }
    throw new Error("Subscribe ended without a Welcome")
  } finally {
    clearTimeout(timer)
    ac.abort()
  }
}

// members returns the credential identities of a ts-mls state's leaves, in
// leaf order.
export function members(state) {
  return state.ratchetTree.filter((n) => n?.nodeType === "leaf").map((n) => dec.decode(n.leaf.credential.identity))
}

// leafOf returns the leaf index of the member with identity id in state.
export function leafOf(state, id) {
  for (let i = 0; i < state.ratchetTree.length; i += 2) {
    const n = state.ratchetTree[i]
    if (n?.nodeType === "leaf" && dec.decode(n.leaf.credential.identity) === id) return i / 2
  }
  throw new Error(`${id} is not a member`)
}

// kpMessage encodes a ts-mls KeyPackage as an MLSMessage.
export function kpMessage(kp) {
  return encodeMlsMessage({ version: "mls10", wireformat: "mls_key_package", keyPackage: kp })
}

// opaqueV is v with the variable-size length prefix of RFC 9420 §2.1.2.
function opaqueV(v) {
  const n = v.length
  let prefix
  if (n < 1 << 6) prefix = [n]
  else if (n < 1 << 14) prefix = [0x40 | (n >> 8), n & 0xff]
  else prefix = [0x80 | (n >>> 24), (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]
  return [...prefix, ...v]
}

// registerTBS is what a client signs to register its key (auth.proto):
// struct { opaque credential<V>; opaque signature_key<V>; uint16 cipher_suite; opaque user_id<V>; }.
export function registerTBS(credential, signatureKey, suite, userId) {
  return new Uint8Array([...opaqueV(credential), ...opaqueV(signatureKey), suite >> 8, suite & 0xff, ...opaqueV(enc.encode(userId))])
}

// Client is one ts-mls client and its session with the DS.
export class Client {
  constructor(id) {
    this.id = id
    this.credential = { credentialType: "basic", identity: enc.encode(id) }
    this.next = 0 // next group_seq to fetch
    this.removed = false // a Commit removed this client from the group
  }

  async register() {
    // One KeyPackage carries the signature key pair the client registers with.
    // ts-mls's defaultLifetime is 0..2^63-1; RFC 9420 §7.2 has the
    // application bound the total lifetime, and mlsds refuses more than 90
    // days, so we ask for a week.
    const now = BigInt(Math.floor(Date.now() / 1000))
    const lifetime = { notBefore: now - 3600n, notAfter: now + 7n * 24n * 3600n }
    this.kp = await generateKeyPackage(this.credential, defaultCapabilities(), lifetime, [], impl)
    this.sigPriv = this.kp.privatePackage.signaturePrivateKey
    const sigPub = this.kp.publicPackage.leafNode.signaturePublicKey
    const credential = encodeCredential(this.credential)
    // Proof of possession of the key (auth.proto, RegisterClientRequest.proof):
    // SignWithLabel(key, "mlsds register", RegisterTBS).
    const proof = await signWithLabel(this.sigPriv, "mlsds register", registerTBS(credential, sigPub, SUITE, ""), impl.signature)
    const r = await rpc("mlsds.v1.AuthService/RegisterClient", {
      credential: b64(credential),
      signatureKey: b64(sigPub),
      cipherSuite: SUITE,
      proof: b64(proof),
    })
    if (r.clientId !== this.id) throw new Error(`RegisterClient: client id ${r.clientId}, want ${this.id}`)
    const ch = await rpc("mlsds.v1.AuthService/GetChallenge", { clientId: this.id })
    // SignWithLabel (RFC 9420 §5.1.2) with ts-mls's own implementation:
    // SignContent = opaque label<V> ("MLS 1.0 " + label) || opaque content<V>.
    const sig = await signWithLabel(this.sigPriv, ch.label, unb64(ch.challenge), impl.signature)
    const a = await rpc("mlsds.v1.AuthService/Authenticate", { clientId: this.id, challenge: ch.challenge, signature: b64(sig) })
    if (!a.sessionToken) throw new Error("Authenticate: no session token")
    this.token = a.sessionToken
  }

  // registerWithKeyPackage registers as a library that cannot sign
  // caller-chosen bytes does (auth.proto, RegisterClientRequest.key_package):
  // the proof of possession of the key is a KeyPackage made with it, which
  // is not published. Then it logs in with that key.
  async registerWithKeyPackage() {
    this.kp = await this.newKeyPackage()
    this.sigPriv = this.kp.privatePackage.signaturePrivateKey
    const r = await rpc("mlsds.v1.AuthService/RegisterClient", {
      credential: b64(encodeCredential(this.credential)),
      signatureKey: b64(this.kp.publicPackage.leafNode.signaturePublicKey),
      cipherSuite: SUITE,
      keyPackage: b64(kpMessage(this.kp.publicPackage)),
    })
    if (r.clientId !== this.id) throw new Error(`RegisterClient: client id ${r.clientId}, want ${this.id}`)
    await this.login()
  }

  async login() {
    const ch = await rpc("mlsds.v1.AuthService/GetChallenge", { clientId: this.id })
    const sig = await signWithLabel(this.sigPriv, ch.label, unb64(ch.challenge), impl.signature)
    const a = await rpc("mlsds.v1.AuthService/Authenticate", { clientId: this.id, challenge: ch.challenge, signature: b64(sig) })
    if (!a.sessionToken) throw new Error("Authenticate: no session token")
    this.token = a.sessionToken
  }

  // newKeyPackage makes a KeyPackage with fresh keys, its signature key
  // too, as ts-mls's generateKeyPackage does, valid for a week.
  async newKeyPackage() {
    const now = BigInt(Math.floor(Date.now() / 1000))
    const lifetime = { notBefore: now - 3600n, notAfter: now + 7n * 24n * 3600n }
    return generateKeyPackage(this.credential, defaultCapabilities(), lifetime, [], impl)
  }

  // addKeyOf registers the signature key of kp (from newKeyPackage) as
  // another key of this client (AccountService.AddSignatureKey), with kp
  // itself as the proof of possession.
  async addKeyOf(kp) {
    await this.call("mlsds.v1.AccountService/AddSignatureKey", {
      signatureKey: b64(kp.publicPackage.leafNode.signaturePublicKey),
      keyPackage: b64(kpMessage(kp.publicPackage)),
    })
  }

  // uploadKeyPackage publishes kp (from newKeyPackage) and keeps it for
  // joining (keyPackageFor).
  async uploadKeyPackage(kp) {
    const r = await this.call("mlsds.v1.KeyPackageService/UploadKeyPackages", { keyPackages: [{ keyPackage: b64(kpMessage(kp.publicPackage)) }] })
    if ((r.keyPackages ?? []).length !== 1) throw new Error(`UploadKeyPackages: ${JSON.stringify(r)}`)
    ;(this.published ??= []).push(kp)
  }

  // keyPackageFor returns this client's KeyPackage (public and private)
  // whose KeyPackageRef is ref (base64), or this.kp without published ones.
  async keyPackageFor(ref) {
    if (!this.published) return this.kp
    for (const kp of this.published) {
      if (b64(await makeKeyPackageRef(kp.publicPackage, impl.hash)) === ref) return kp
    }
    throw new Error(`${this.id}: a Welcome for KeyPackage ${ref}, which this client did not publish`)
  }

  async uploadKeyPackages() {
    const kpMsg = (kp) => b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_key_package", keyPackage: kp }))
    const r = await rpc("mlsds.v1.KeyPackageService/UploadKeyPackages", { keyPackages: [{ keyPackage: kpMsg(this.kp.publicPackage) }] }, this.token)
    if ((r.keyPackages ?? []).length !== 1) throw new Error(`UploadKeyPackages: ${JSON.stringify(r)}`)
  }

  call(path, msg) {
    return rpc(path, msg, this.token)
  }

  // claim claims one KeyPackage of client id and returns it (a ts-mls
  // KeyPackage).
  async claim(id) {
    return (await this.claimRaw(id)).keyPackage
  }

  // claimRaw is claim returning the KeyPackage also as the DS handed it
  // out (base64 of the MLSMessage).
  async claimRaw(id) {
    const r = await this.call("mlsds.v1.KeyPackageService/ClaimKeyPackages", { clientId: id, cipherSuite: SUITE })
    const kps = r.keyPackages ?? []
    if (kps.length !== 1 || kps[0].clientId !== id) throw new Error(`ClaimKeyPackages(${id}): ${JSON.stringify(r)}`)
    const m = decodeMlsMessage(unb64(kps[0].keyPackage), 0)?.[0]
    if (m?.wireformat !== "mls_key_package") throw new Error("claimed KeyPackage is not an MLSMessage(KeyPackage)")
    return { keyPackage: m.keyPackage, raw: kps[0].keyPackage }
  }

  async fetchNew() {
    const r = await this.call("mlsds.v1.GroupService/Fetch", { groupId: b64(this.groupId), fromSeq: String(this.next), limit: 100 })
    const msgs = r.messages ?? []
    for (const m of msgs) this.next = Math.max(this.next, Number(m.groupSeq) + 1)
    return msgs
  }

  // catchUp fetches and processes everything new; it returns the
  // application messages it decrypted. Once a Commit removed this client,
  // it stops processing (the DS sends nothing later anyway).
  async catchUp() {
    const out = []
    for (const env of await this.fetchNew()) {
      if (this.removed) break
      if (env.senderClientId === this.id) continue // our own: already applied
      const m = decodeMlsMessage(unb64(env.message), 0)?.[0]
      if (!m) throw new Error(`${this.id}: cannot decode message ${env.groupSeq}`)
      if (m.wireformat === "mls_public_message") {
        const r = await processPublicMessage(this.state, m.publicMessage, emptyPskIndex, impl)
        this.state = r.newState
      } else if (m.wireformat === "mls_private_message") {
        const r = await processPrivateMessage(this.state, m.privateMessage, emptyPskIndex, impl)
        this.state = r.newState
        if (r.kind === "applicationMessage") out.push({ from: env.senderClientId, text: dec.decode(r.message) })
      } else {
        throw new Error(`${this.id}: unexpected wire format ${m.wireformat}`)
      }
      if (this.state.groupActiveState?.kind === "removedFromGroup") this.removed = true
    }
    return out
  }

  async sendText(text) {
    const r = await createApplicationMessage(this.state, enc.encode(text), impl)
    this.state = r.newState
    const msg = encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage: r.privateMessage })
    const res = await this.call("mlsds.v1.GroupService/Send", { message: b64(msg) })
    return res.receipt
  }

  // groupInfo signs a GroupInfo of the current epoch with an external_pub
  // extension (§12.4.3.2), for external joiners.
  //
  // ts-mls 1.6.4 bug (fixed upstream in ts-mls PR 449): its
  // createGroupInfoWithExternalPub puts the bare HPKE public key in the
  // extension_data, without the inner length prefix of
  // struct { HPKEPublicKey external_pub; } (HPKEPublicKey is opaque<V>).
  // Workaround: take the key it derives, wrap it as opaque<V>, and sign the
  // GroupInfo again with the corrected extension.
  async groupInfo(state = this.state) {
    const buggy = await createGroupInfoWithExternalPub(state, [], impl)
    const key = buggy.extensions.find((e) => e.extensionType === "external_pub").extensionData
    if (key.length >= 64) throw new Error("external_pub key too long for a one-byte varint")
    const exts = [{ extensionType: "external_pub", extensionData: new Uint8Array([key.length, ...key]) }]
    const gi = await createGroupInfo(state.groupContext, state.confirmationTag, state, exts, impl)
    return encodeMlsMessage({ version: "mls10", wireformat: "mls_group_info", groupInfo: gi })
  }

  // joinLink makes a join link of this member's group (CreateJoinLink)
  // and returns its secret token, which lets a client that is not a
  // member fetch the group's GroupInfo and send an external Commit.
  async joinLink(ttlSeconds = 3600) {
    const r = await this.call("mlsds.v1.GroupService/CreateJoinLink", { groupId: b64(this.groupId), ttlSeconds })
    if (!r.joinToken) throw new Error(`CreateJoinLink: no join token: ${JSON.stringify(r)}`)
    return r.joinToken
  }

  // checkDSTree compares the public state the DS tracks, built by applying
  // the Commits itself, with this client's ts-mls state: same epoch,
  // byte-identical ratchet tree.
  async checkDSTree(what) {
    const gi = await this.call("mlsds.v1.GroupService/GetGroupInfo", { groupId: b64(this.groupId) })
    const want = Number(this.state.groupContext.epoch)
    if (Number(gi.epoch ?? 0) !== want) throw new Error(`${what}: DS at epoch ${gi.epoch}, ${this.id} (ts-mls) at ${want}`)
    if (b64(encodeRatchetTree(this.state.ratchetTree)) !== (gi.ratchetTree ?? ""))
      throw new Error(`${what}: the DS's ratchet tree differs from ${this.id}'s (ts-mls)`)
  }
}

// readableExternalPub is the reading half of the external_pub workaround
// (see Client.groupInfo): ts-mls 1.6.4's joinGroupExternal takes the
// external_pub extension_data for the bare key, so it is handed the key
// without its length prefix when it looks the extension up, while the
// GroupInfo's signature is still checked over the bytes as received. It
// patches info (a decoded GroupInfo) in place.
export function readableExternalPub(info) {
  const origFind = info.extensions.find.bind(info.extensions)
  info.extensions.find = (pred) => {
    const ext = origFind(pred)
    if (ext?.extensionType !== "external_pub") return ext
    const d = ext.extensionData
    if (d[0] !== d.length - 1) throw new Error("external_pub is not a one-byte-prefixed key")
    return { ...ext, extensionData: d.subarray(1) }
  }
  return info
}
