// ts-mls clients of mlsds. Run by tsmls_test.go as
//
//	node interop.mjs http://127.0.0.1:PORT
//
// ts-mls 1.6.4 clients (cipher suite 1) talk to the Delivery Service over
// Connect's JSON protocol (HTTP/1.1 POST; Subscribe as a Connect server
// stream). A, B and C register, authenticate and upload KeyPackages; A
// creates a transparent group, claims B's and C's KeyPackages and adds
// them with a PublicMessage Commit; B and C join from the Welcome the DS
// routes to them; all three exchange PrivateMessages; B commits an
// UpdatePath; A's Commit with a flipped signature byte must be refused
// with invalid_message; A removes C, who then gets nothing more; D joins
// by external commit; B proposes removing D and A commits that by
// reference. Every handshake is a PublicMessage that the DS validates, and
// after every Commit the DS's ratchet tree must equal ts-mls's byte for
// byte.
//
// Progress goes to stderr; the last stdout line is one JSON object with the
// results, which the Go test checks. Any unexpected refusal throws, and the
// script exits 1 after printing {"ok": false, ...}.

import {
  createApplicationMessage,
  createCommit,
  createGroup,
  createGroupInfoWithExternalPub,
  createProposal,
  joinGroupExternal,
  decodeMlsMessage,
  defaultCapabilities,
  emptyPskIndex,
  encodeMlsMessage,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  processPrivateMessage,
  processPublicMessage,
} from "ts-mls"
import { encodeCredential } from "ts-mls/credential.js"
import { signWithLabel } from "ts-mls/crypto/signature.js"
import { decodeRatchetTree, encodeRatchetTree } from "ts-mls/ratchetTree.js"
import { createGroupInfo } from "ts-mls/createCommit.js"

const base = process.argv[2]
if (!base) {
  console.error("usage: node interop.mjs <server-url>")
  process.exit(2)
}

const SUITE = 1 // MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
const impl = await getCiphersuiteImpl(getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"))
const enc = new TextEncoder()
const dec = new TextDecoder()
const b64 = (u8) => Buffer.from(u8).toString("base64")
const unb64 = (s) => new Uint8Array(Buffer.from(s ?? "", "base64"))
const log = (...a) => console.error("[tsmls]", ...a)

const results = { ok: false, steps: [], decrypted: {}, refusals: [] }
const step = (name) => {
  results.steps.push(name)
  log("step:", name)
}

// RpcError is a Connect error answer.
class RpcError extends Error {
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
async function rpc(path, msg, token) {
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
async function waitWelcome(token) {
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

// Client is one ts-mls client and its session with the DS.
class Client {
  constructor(id) {
    this.id = id
    this.credential = { credentialType: "basic", identity: enc.encode(id) }
    this.next = 0 // next group_seq to fetch
    this.received = []
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
    const r = await rpc("mlsds.v1.AuthService/RegisterClient", {
      credential: b64(encodeCredential(this.credential)),
      signatureKey: b64(sigPub),
      cipherSuite: SUITE,
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

  async uploadKeyPackages() {
    const kpMsg = (kp) => b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_key_package", keyPackage: kp }))
    const r = await rpc("mlsds.v1.KeyPackageService/UploadKeyPackages", { keyPackages: [{ keyPackage: kpMsg(this.kp.publicPackage) }] }, this.token)
    if ((r.keyPackages ?? []).length !== 1) throw new Error(`UploadKeyPackages: ${JSON.stringify(r)}`)
  }

  call(path, msg) {
    return rpc(path, msg, this.token)
  }

  async fetchNew() {
    const r = await this.call("mlsds.v1.GroupService/Fetch", { groupId: b64(this.groupId), fromSeq: String(this.next), limit: 100 })
    const msgs = r.messages ?? []
    for (const m of msgs) this.next = Math.max(this.next, Number(m.groupSeq) + 1)
    return msgs
  }

  // catchUp fetches and processes everything new; it returns the
  // application messages it decrypted.
  async catchUp() {
    const out = []
    for (const env of await this.fetchNew()) {
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
    const fixed = new Uint8Array([key.length, ...key])
    const gi = await createGroupInfo(state.groupContext, state.confirmationTag, state, [{ extensionType: "external_pub", extensionData: fixed }], impl)
    return encodeMlsMessage({ version: "mls10", wireformat: "mls_group_info", groupInfo: gi })
  }
}

// checkDSTree compares the public state the DS tracks, built by applying
// the ts-mls Commits itself, with the committer's ts-mls state: same epoch,
// byte-identical ratchet tree.
async function checkDSTree(c, what) {
  const gi = await c.call("mlsds.v1.GroupService/GetGroupInfo", { groupId: b64(c.groupId) })
  const want = Number(c.state.groupContext.epoch)
  if (Number(gi.epoch ?? 0) !== want) throw new Error(`${what}: DS at epoch ${gi.epoch}, ts-mls at ${want}`)
  if (b64(encodeRatchetTree(c.state.ratchetTree)) !== (gi.ratchetTree ?? ""))
    throw new Error(`${what}: the DS's ratchet tree differs from ts-mls's`)
  results.treeChecks = (results.treeChecks ?? 0) + 1
}

async function expectRefused(what, fn, wantCode, wantDetail) {
  try {
    await fn()
  } catch (e) {
    if (!(e instanceof RpcError)) throw e
    const types = e.detailTypes()
    const invalid = e.details.find((d) => d.type === "mlsds.v1.InvalidMessage")?.debug
    results.refusals.push({ what, code: e.code, message: e.message, details: types, invalid })
    if (e.code !== wantCode || (wantDetail && !types.includes(wantDetail)))
      throw new Error(`${what}: refused with ${e.code} ${types}, want ${wantCode} ${wantDetail ?? ""}: ${e.message}`)
    return e
  }
  throw new Error(`${what}: accepted, want a refusal`)
}

async function main() {
  const A = new Client("tsmls-alice")
  const B = new Client("tsmls-bob")
  const C = new Client("tsmls-carol")
  for (const c of [A, B, C]) await c.register()
  step("registered")
  for (const c of [A, B, C]) await c.uploadKeyPackages()
  step("uploaded key packages")

  // A creates the group: CreateGroup takes the epoch-0 GroupInfo and the
  // ratchet tree, in the ratchet_tree extension's encoding.
  const groupId = enc.encode(`tsmls-${Date.now()}-${Math.random().toString(16).slice(2)}`)
  A.groupId = groupId
  A.state = await createGroup(groupId, A.kp.publicPackage, A.kp.privatePackage, [], impl)
  await A.call("mlsds.v1.GroupService/CreateGroup", {
    groupId: b64(groupId),
    mode: "GROUP_MODE_TRANSPARENT",
    groupInfo: b64(await A.groupInfo()),
    ratchetTree: b64(encodeRatchetTree(A.state.ratchetTree)),
  })
  A.next = 1
  await checkDSTree(A, "after CreateGroup")
  step("created group")

  // A claims B's and C's KeyPackages.
  const claimed = []
  for (const c of [B, C]) {
    const r = await A.call("mlsds.v1.KeyPackageService/ClaimKeyPackages", { clientId: c.id, cipherSuite: SUITE })
    const kps = r.keyPackages ?? []
    if (kps.length !== 1 || kps[0].clientId !== c.id) throw new Error(`ClaimKeyPackages(${c.id}): ${JSON.stringify(r)}`)
    const m = decodeMlsMessage(unb64(kps[0].keyPackage), 0)?.[0]
    if (m?.wireformat !== "mls_key_package") throw new Error("claimed KeyPackage is not an MLSMessage(KeyPackage)")
    claimed.push(m.keyPackage)
  }
  step("claimed key packages")

  // A adds B and C with a PublicMessage Commit.
  const add = await createCommit(
    { state: A.state, cipherSuite: impl },
    { wireAsPublicMessage: true, extraProposals: claimed.map((kp) => ({ proposalType: "add", add: { keyPackage: kp } })) },
  )
  const welcome = encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: add.welcome })
  const addReceipt = (
    await A.call("mlsds.v1.GroupService/SendCommitBundle", {
      commit: b64(encodeMlsMessage(add.commit)),
      welcome: b64(welcome),
      groupInfo: b64(await A.groupInfo(add.newState)),
    })
  ).receipt
  A.state = add.newState
  await checkDSTree(A, "after the Add commit")
  step("add commit accepted")

  // B and C join from the Welcome the DS routes to them, with the ratchet
  // tree the DS serves (GetGroupInfo) rather than one from A.
  for (const c of [B, C]) {
    const w = await waitWelcome(c.token)
    const wm = decodeMlsMessage(unb64(w.welcome), 0)?.[0]
    if (wm?.wireformat !== "mls_welcome") throw new Error(`${c.id}: WelcomeEvent without a Welcome`)
    c.groupId = unb64(w.groupId)
    const gi = await c.call("mlsds.v1.GroupService/GetGroupInfo", { groupId: w.groupId })
    const tree = decodeRatchetTree(unb64(gi.ratchetTree), 0)?.[0]
    if (!tree) throw new Error(`${c.id}: cannot decode the DS's ratchet tree`)
    c.state = await joinGroup(wm.welcome, c.kp.publicPackage, c.kp.privatePackage, emptyPskIndex, impl, tree)
    c.next = Number(w.commitSeq) + 1
  }
  step("B and C joined")
  results.epochAfterAdd = Number(A.state.groupContext.epoch)

  // Application messages, each decrypted by the two others.
  for (const c of [A, B, C]) await c.sendText(`hello from ${c.id}`)
  for (const c of [A, B, C]) results.decrypted[c.id] = (await c.catchUp()).map((m) => m.text)
  step("exchanged application messages")

  // B commits with only an UpdatePath (an empty Commit), as a
  // PublicMessage through Send; A and C follow.
  const upd = await createCommit({ state: B.state, cipherSuite: impl }, { wireAsPublicMessage: true })
  await B.call("mlsds.v1.GroupService/Send", { message: b64(encodeMlsMessage(upd.commit)) })
  B.state = upd.newState
  await checkDSTree(B, "after B's update commit")
  for (const c of [A, C]) {
    await c.catchUp()
    if (c.state.groupContext.epoch !== B.state.groupContext.epoch) throw new Error(`${c.id} did not follow B's commit`)
  }
  step("update commit by B accepted")

  // A corrupted Commit: one signature byte flipped. The DS must refuse it
  // with invalid_message, and nothing changes.
  const bad = await createCommit({ state: A.state, cipherSuite: impl }, { wireAsPublicMessage: true })
  const sig = bad.commit.publicMessage.auth.signature
  sig[sig.length >> 1] ^= 0x01
  const badBytes = encodeMlsMessage(bad.commit)
  results.corruptCommit = b64(badBytes)
  await expectRefused(
    "corrupted commit",
    () => A.call("mlsds.v1.GroupService/Send", { message: b64(badBytes) }),
    "invalid_argument",
    "mlsds.v1.InvalidMessage",
  )
  await checkDSTree(A, "after the refused commit")
  step("corrupted commit refused")

  // A removes C with a PublicMessage Commit.
  const cLeaf = C.state.privatePath.leafIndex
  const rm = await createCommit(
    { state: A.state, cipherSuite: impl },
    { wireAsPublicMessage: true, extraProposals: [{ proposalType: "remove", remove: { removed: cLeaf } }] },
  )
  const rmReceipt = (
    await A.call("mlsds.v1.GroupService/SendCommitBundle", {
      commit: b64(encodeMlsMessage(rm.commit)),
      groupInfo: b64(await A.groupInfo(rm.newState)),
    })
  ).receipt
  A.state = rm.newState
  results.removeSeq = Number(rmReceipt.groupSeq)
  await checkDSTree(A, "after the Remove commit")
  step("remove commit accepted")

  await B.catchUp()
  if (B.state.groupContext.epoch !== A.state.groupContext.epoch) throw new Error("B did not follow the remove commit")
  await A.sendText("after C left")
  const afterRemove = await B.catchUp()
  results.decryptedAfterRemove = afterRemove.map((m) => m.text)
  step("A and B talk without C")

  const roster = await A.call("mlsds.v1.GroupService/GetRoster", { groupId: b64(groupId) })
  results.rosterAfterRemove = (roster.clientIds ?? []).sort()

  // D joins by external commit (§12.4.3.2), from the GroupInfo and tree
  // the DS serves.
  const D = new Client("tsmls-dave")
  await D.register()
  // GetGroupInfo answers members only, so A fetches the GroupInfo and
  // tree the DS serves and hands them to D out of band.
  const gi = await A.call("mlsds.v1.GroupService/GetGroupInfo", { groupId: b64(groupId) })
  const gim = decodeMlsMessage(unb64(gi.groupInfo), 0)?.[0]
  if (gim?.wireformat !== "mls_group_info") throw new Error("GetGroupInfo: not an MLSMessage(GroupInfo)")
  const info = gim.groupInfo
  // Second half of the external_pub workaround: ts-mls 1.6.4 reads the
  // extension_data as the bare key, so joinGroupExternal gets the key
  // without its length prefix when it looks the extension up, while the
  // GroupInfo's signature is still checked over the bytes as received.
  const origFind = info.extensions.find.bind(info.extensions)
  info.extensions.find = (pred) => {
    const ext = origFind(pred)
    if (ext?.extensionType !== "external_pub") return ext
    const d = ext.extensionData
    if (d[0] !== d.length - 1) throw new Error("external_pub from the DS is not a one-byte-prefixed key")
    return { ...ext, extensionData: d.subarray(1) }
  }
  const dsTree = decodeRatchetTree(unb64(gi.ratchetTree), 0)?.[0]
  const ext = await joinGroupExternal(info, D.kp.publicPackage, D.kp.privatePackage, false, impl, dsTree)
  const extMsg = encodeMlsMessage({ version: "mls10", wireformat: "mls_public_message", publicMessage: ext.publicMessage })
  const extReceipt = (
    await D.call("mlsds.v1.GroupService/SendCommitBundle", { commit: b64(extMsg), groupInfo: b64(await D.groupInfo(ext.newState)) })
  ).receipt
  D.state = ext.newState
  D.groupId = groupId
  D.next = Number(extReceipt.groupSeq) + 1
  await checkDSTree(D, "after D's external commit")
  for (const c of [A, B]) {
    await c.catchUp()
    if (c.state.groupContext.epoch !== D.state.groupContext.epoch) throw new Error(`${c.id} did not follow D's external commit`)
  }
  step("external commit by D accepted")
  await D.sendText("hello from tsmls-dave")
  results.decryptedFromD = {}
  for (const c of [A, B]) results.decryptedFromD[c.id] = (await c.catchUp()).map((m) => m.text)
  // C gets nothing after the Commit that removed it, though
  // the group went on (A's message, D's external commit and message).
  let cLater = []
  try {
    cLater = (await C.fetchNew()).filter((e) => Number(e.groupSeq) > results.removeSeq)
  } catch (e) {
    if (!(e instanceof RpcError)) throw e
    results.cFetchAfterRemove = e.code
  }
  results.cMessagesAfterRemove = cLater.length
  const roster2 = await A.call("mlsds.v1.GroupService/GetRoster", { groupId: b64(groupId) })
  results.rosterAfterExternal = (roster2.clientIds ?? []).sort()

  // A Proposal by reference: B proposes removing D (a PublicMessage
  // Proposal through Send), A commits it by reference.
  const prop = await createProposal(B.state, true, { proposalType: "remove", remove: { removed: D.state.privatePath.leafIndex } }, impl)
  await B.call("mlsds.v1.GroupService/Send", { message: b64(encodeMlsMessage(prop.message)) })
  B.state = prop.newState
  await A.catchUp()
  const byRef = await createCommit({ state: A.state, cipherSuite: impl }, { wireAsPublicMessage: true })
  if (byRef.commit.publicMessage.content.commit.proposals[0]?.proposalOrRefType !== "reference")
    throw new Error("A's commit does not carry B's proposal by reference")
  await A.call("mlsds.v1.GroupService/SendCommitBundle", {
    commit: b64(encodeMlsMessage(byRef.commit)),
    groupInfo: b64(await A.groupInfo(byRef.newState)),
  })
  A.state = byRef.newState
  await checkDSTree(A, "after the commit by reference")
  await B.catchUp()
  if (B.state.groupContext.epoch !== A.state.groupContext.epoch) throw new Error("B did not follow the commit by reference")
  step("proposal by reference committed")
  const roster3 = await A.call("mlsds.v1.GroupService/GetRoster", { groupId: b64(groupId) })
  results.roster = (roster3.clientIds ?? []).sort()
  results.finalEpoch = Number(A.state.groupContext.epoch)
  results.groupId = b64(groupId)
  results.treeHash = b64(A.state.groupContext.treeHash)
  results.addSeq = Number(addReceipt.groupSeq)
  step("done")
  results.ok = true
}

try {
  await main()
  console.log(JSON.stringify(results))
} catch (e) {
  results.error = String(e?.stack ?? e)
  if (e instanceof RpcError) results.rpcError = { code: e.code, message: e.message, details: e.details }
  console.log(JSON.stringify(results))
  process.exit(1)
}
