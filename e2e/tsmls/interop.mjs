// ts-mls clients of mlsds. Run by tsmls_test.go as
//
//	node interop.mjs http://127.0.0.1:PORT
//
// ts-mls 1.6.4 clients (cipher suite 1; the Client of tsmls.mjs) talk to
// the Delivery Service over Connect's JSON protocol (HTTP/1.1 POST;
// Subscribe as a Connect server stream). A, B and C register, authenticate and upload KeyPackages; A
// creates a transparent group, claims B's and C's KeyPackages and adds
// them with a PublicMessage Commit; B and C join from the Welcome the DS
// routes to them; all three exchange PrivateMessages; B commits an
// UpdatePath; A's Commit with a flipped signature byte must be refused
// with invalid_message; A removes C, who then gets nothing more; D joins
// by external commit with a join link A made; B proposes removing D and A commits that by
// reference. Every handshake is a PublicMessage that the DS validates,
// every Commit goes with the GroupInfo of the epoch it starts
// (SendCommitBundle), and after every Commit the DS's ratchet tree must equal ts-mls's byte for
// byte.
//
// Progress goes to stderr; the last stdout line is one JSON object with the
// results, which the Go test checks. Any unexpected refusal throws, and the
// script exits 1 after printing {"ok": false, ...}.

import {
  createCommit,
  createGroup,
  createProposal,
  joinGroupExternal,
  decodeMlsMessage,
  emptyPskIndex,
  encodeMlsMessage,
  joinGroup,
} from "ts-mls"
import { decodeRatchetTree, encodeRatchetTree } from "ts-mls/ratchetTree.js"
import { Client, RpcError, b64, enc, impl, log, readableExternalPub, unb64, useServer, waitWelcome } from "./tsmls.mjs"

const base = process.argv[2]
if (!base) {
  console.error("usage: node interop.mjs <server-url>")
  process.exit(2)
}
useServer(base)

const results = { ok: false, steps: [], decrypted: {}, refusals: [] }
const step = (name) => {
  results.steps.push(name)
  log("step:", name)
}

// checkDSTree compares the DS's public state with the committer's ts-mls
// state (Client.checkDSTree) and counts the comparisons.
async function checkDSTree(c, what) {
  await c.checkDSTree(what)
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
  for (const c of [B, C]) claimed.push(await A.claim(c.id))
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
  // PublicMessage through SendCommitBundle with the new epoch's GroupInfo
  // (a transparent group's Commits may not go through plain Send); A and
  // C follow.
  const upd = await createCommit({ state: B.state, cipherSuite: impl }, { wireAsPublicMessage: true })
  await B.call("mlsds.v1.GroupService/SendCommitBundle", {
    commit: b64(encodeMlsMessage(upd.commit)),
    groupInfo: b64(await B.groupInfo(upd.newState)),
  })
  B.state = upd.newState
  await checkDSTree(B, "after B's update commit")
  for (const c of [A, C]) {
    await c.catchUp()
    if (c.state.groupContext.epoch !== B.state.groupContext.epoch) throw new Error(`${c.id} did not follow B's commit`)
  }
  step("update commit by B accepted")

  // A corrupted Commit: one signature byte flipped, sent in a bundle
  // with a good GroupInfo of the epoch it would start. The DS must refuse
  // it with invalid_message, and nothing changes.
  const bad = await createCommit({ state: A.state, cipherSuite: impl }, { wireAsPublicMessage: true })
  const badInfo = await A.groupInfo(bad.newState)
  const sig = bad.commit.publicMessage.auth.signature
  sig[sig.length >> 1] ^= 0x01
  const badBytes = encodeMlsMessage(bad.commit)
  results.corruptCommit = b64(badBytes)
  await expectRefused(
    "corrupted commit",
    () => A.call("mlsds.v1.GroupService/SendCommitBundle", { commit: b64(badBytes), groupInfo: b64(badInfo) }),
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
  // the DS serves. D is not a member, so the DS takes it only with a join
  // link: A makes one and hands its token to D out of band; D passes it
  // to GetGroupInfo and SendCommitBundle.
  const D = new Client("tsmls-dave")
  await D.register()
  const joinToken = await A.joinLink()
  const gi = await D.call("mlsds.v1.GroupService/GetGroupInfo", { groupId: b64(groupId), joinToken })
  const gim = decodeMlsMessage(unb64(gi.groupInfo), 0)?.[0]
  if (gim?.wireformat !== "mls_group_info") throw new Error("GetGroupInfo: not an MLSMessage(GroupInfo)")
  // Second half of the external_pub workaround: ts-mls 1.6.4 reads the
  // extension_data as the bare key (readableExternalPub).
  const info = readableExternalPub(gim.groupInfo)
  const dsTree = decodeRatchetTree(unb64(gi.ratchetTree), 0)?.[0]
  const ext = await joinGroupExternal(info, D.kp.publicPackage, D.kp.privatePackage, false, impl, dsTree)
  const extMsg = encodeMlsMessage({ version: "mls10", wireformat: "mls_public_message", publicMessage: ext.publicMessage })
  const extReceipt = (
    await D.call("mlsds.v1.GroupService/SendCommitBundle", {
      commit: b64(extMsg),
      groupInfo: b64(await D.groupInfo(ext.newState)),
      joinToken,
    })
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
