// ts-mls clients driven by sdk_test.go, which runs them in the same groups
// as a client of the mlsds Go SDK (package client). Run as
//
//	node sdk.mjs http://127.0.0.1:PORT
//
// It reads one command per stdin line, a JSON object
// {"id": N, "op": "...", "args": {...}}, carries it out, and answers with
// one stdout line {"id": N, "ok": true, "result": {...}} or
// {"id": N, "ok": false, "error": "..."}; commands run one at a time, in
// order. Progress goes to stderr. It exits when stdin closes.
//
// Every Commit a ts-mls client makes is a PublicMessage, which the DS
// validates, and after each the DS's ratchet tree must equal the
// committer's byte for byte (Client.checkDSTree).

import { createInterface } from "node:readline"
import {
  createCommit,
  createGroup,
  createProposal,
  decodeMlsMessage,
  emptyPskIndex,
  encodeMlsMessage,
  joinGroup,
  joinGroupExternal,
  mlsExporter,
} from "ts-mls"
import { decodeRatchetTree, encodeRatchetTree } from "ts-mls/ratchetTree.js"
import { Client, RpcError, b64, dec, enc, impl, leafOf, log, members, readableExternalPub, unb64, useServer, waitWelcome } from "./tsmls.mjs"

const base = process.argv[2]
if (!base) {
  console.error("usage: node sdk.mjs <server-url>")
  process.exit(2)
}
useServer(base)

const clients = new Map()

function client(id) {
  const c = clients.get(id)
  if (!c) throw new Error(`no ts-mls client ${id}`)
  return c
}

// summary is what the Go side checks of a ts-mls member's state.
async function summary(c) {
  if (!c.state) return { removed: c.removed }
  return {
    epoch: Number(c.state.groupContext.epoch),
    epochAuthenticator: b64(c.state.keySchedule.epochAuthenticator),
    // The Go SDK does not export secrets; the ts-mls members compare
    // theirs among themselves.
    exported: b64(await mlsExporter(c.state.keySchedule.exporterSecret, "mlsds interop", enc.encode("tsmls"), 32, impl)),
    treeHash: b64(c.state.groupContext.treeHash),
    members: members(c.state),
    // Each member's leaf: its HPKE encryption key and how it got there.
    leaves: Object.fromEntries(
      c.state.ratchetTree
        .filter((n) => n?.nodeType === "leaf")
        .map((n) => [
          dec.decode(n.leaf.credential.identity),
          { hpkeKey: b64(n.leaf.hpkePublicKey), signatureKey: b64(n.leaf.signaturePublicKey), source: n.leaf.leafNodeSource },
        ]),
    ),
    removed: c.removed,
  }
}

// commitBundle sends a Commit made by createCommit with its Welcome (if
// any) and a GroupInfo of the new epoch, then adopts the new state and
// checks the DS's tree.
async function commitBundle(c, res, what) {
  const req = { commit: b64(encodeMlsMessage(res.commit)), groupInfo: b64(await c.groupInfo(res.newState)) }
  if (res.welcome) req.welcome = b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: res.welcome }))
  const { receipt } = await c.call("mlsds.v1.GroupService/SendCommitBundle", req)
  c.state = res.newState
  // Our own Commit comes back in Fetch; catchUp skips it.
  await c.checkDSTree(what)
  return { seq: Number(receipt.groupSeq), epoch: Number(c.state.groupContext.epoch) }
}

const ops = {
  // register registers ts-mls clients and uploads one KeyPackage each.
  async register({ ids }) {
    for (const id of ids) {
      const c = new Client(id)
      await c.register()
      await c.uploadKeyPackages()
      clients.set(id, c)
    }
    return {}
  },

  // create has `by` create a transparent-mode group alone.
  async create({ by, groupId }) {
    const c = client(by)
    c.groupId = groupId ? unb64(groupId) : enc.encode(`tsmls-sdk-${Date.now()}-${Math.random().toString(16).slice(2)}`)
    c.state = await createGroup(c.groupId, c.kp.publicPackage, c.kp.privatePackage, [], impl)
    await c.call("mlsds.v1.GroupService/CreateGroup", {
      groupId: b64(c.groupId),
      mode: "GROUP_MODE_TRANSPARENT",
      groupInfo: b64(await c.groupInfo()),
      ratchetTree: b64(encodeRatchetTree(c.state.ratchetTree)),
    })
    c.next = 1
    await c.checkDSTree("after CreateGroup")
    return { groupId: b64(c.groupId), ...(await summary(c)) }
  },

  // add has `by` claim a KeyPackage of each of ids (ts-mls or Go SDK
  // clients) and add them with one PublicMessage Commit and a Welcome,
  // whose GroupInfo carries the ratchet_tree extension if ratchetTree.
  async add({ by, ids, ratchetTree }) {
    const c = client(by)
    const kps = []
    for (const id of ids) kps.push(await c.claim(id))
    const res = await createCommit(
      { state: c.state, cipherSuite: impl },
      {
        wireAsPublicMessage: true,
        ratchetTreeExtension: !!ratchetTree,
        extraProposals: kps.map((kp) => ({ proposalType: "add", add: { keyPackage: kp } })),
      },
    )
    return commitBundle(c, res, `after ${by}'s Add of ${ids}`)
  },

  // join has ts-mls client id join from the Welcome the DS routes to it.
  // With dsTree it takes the ratchet tree the DS serves; without, the one
  // in the Welcome's ratchet_tree extension.
  async join({ id, dsTree }) {
    const c = client(id)
    const w = await waitWelcome(c.token)
    const wm = decodeMlsMessage(unb64(w.welcome), 0)?.[0]
    if (wm?.wireformat !== "mls_welcome") throw new Error(`${id}: WelcomeEvent without a Welcome`)
    let tree
    if (dsTree) {
      const gi = await c.call("mlsds.v1.GroupService/GetGroupInfo", { groupId: w.groupId })
      tree = decodeRatchetTree(unb64(gi.ratchetTree), 0)?.[0]
      if (!tree) throw new Error(`${id}: cannot decode the DS's ratchet tree`)
    }
    const kp = await c.keyPackageFor(w.keyPackageRef)
    c.state = await joinGroup(wm.welcome, kp.publicPackage, kp.privatePackage, emptyPskIndex, impl, tree)
    c.groupId = unb64(w.groupId)
    c.next = Number(w.commitSeq) + 1
    c.removed = false
    await c.checkDSTree(`after ${id} joined`)
    return { groupId: w.groupId, commitSeq: Number(w.commitSeq), ...(await summary(c)) }
  },

  // createWithWelcome has `by` create the group as a library that cannot
  // export the GroupInfo of epoch 0 does: it makes the group alone,
  // claims a KeyPackage of each of ids and adds them in its first Commit,
  // which it does not send; then it calls CreateGroup with the GroupInfo
  // and ratchet tree of epoch 1, the claimed KeyPackages and the Commit's
  // Welcome, which the DS routes to the joiners. The Welcome carries the
  // ratchet_tree extension if ratchetTree.
  async createWithWelcome({ by, ids, ratchetTree }) {
    const c = client(by)
    c.groupId = enc.encode(`tsmls-welcome-${Date.now()}-${Math.random().toString(16).slice(2)}`)
    const state0 = await createGroup(c.groupId, c.kp.publicPackage, c.kp.privatePackage, [], impl)
    const claimed = []
    for (const id of ids) claimed.push(await c.claimRaw(id))
    const res = await createCommit(
      { state: state0, cipherSuite: impl },
      {
        wireAsPublicMessage: true,
        ratchetTreeExtension: !!ratchetTree,
        extraProposals: claimed.map((k) => ({ proposalType: "add", add: { keyPackage: k.keyPackage } })),
      },
    )
    if (!res.welcome) throw new Error("ts-mls made no Welcome for the Adds")
    c.state = res.newState
    await c.call("mlsds.v1.GroupService/CreateGroup", {
      groupId: b64(c.groupId),
      mode: "GROUP_MODE_TRANSPARENT",
      groupInfo: b64(await c.groupInfo()),
      ratchetTree: b64(encodeRatchetTree(c.state.ratchetTree)),
      keyPackages: claimed.map((k) => k.raw),
      welcome: b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: res.welcome })),
    })
    c.next = 1
    await c.checkDSTree("after CreateGroup at epoch 1 with a Welcome")
    return { groupId: b64(c.groupId), ...(await summary(c)) }
  },

  // registerKeyPerKeyPackage registers ts-mls clients as libraries that
  // make a new signature key for each KeyPackage need: each registers
  // with a KeyPackage as its proof of possession (not published), then
  // makes n KeyPackages, each with a key of its own. The first upload of
  // one is tried before its key is added, and must be refused; then each
  // key is added (AccountService.AddSignatureKey, proven by the
  // KeyPackage itself) and the KeyPackage published. It returns each
  // client's registered key, its added keys and the first refusal.
  async registerKeyPerKeyPackage({ ids, n }) {
    const out = {}
    for (const id of ids) {
      const c = new Client(id)
      await c.registerWithKeyPackage()
      clients.set(id, c)
      const kps = []
      for (let i = 0; i < n; i++) kps.push(await c.newKeyPackage())
      let refusal
      try {
        await c.uploadKeyPackage(kps[0])
      } catch (e) {
        if (!(e instanceof RpcError)) throw e
        refusal = { code: e.code, message: e.message }
      }
      if (!refusal) throw new Error(`${id}: a KeyPackage with an unregistered key was accepted`)
      c.published = []
      for (const kp of kps) {
        await c.addKeyOf(kp)
        await c.uploadKeyPackage(kp)
      }
      out[id] = {
        registeredKey: b64(c.kp.publicPackage.leafNode.signaturePublicKey),
        addedKeys: kps.map((kp) => b64(kp.publicPackage.leafNode.signaturePublicKey)),
        refusal,
      }
    }
    return out
  },

  // send has `by` send an application message (a PrivateMessage).
  async send({ by, text }) {
    const r = await client(by).sendText(text)
    return { seq: Number(r.groupSeq) }
  },

  // sync has each of ids fetch and process everything new; it reports
  // what each decrypted and its state after.
  async sync({ ids }) {
    const out = {}
    for (const id of ids) {
      const c = client(id)
      const messages = await c.catchUp()
      out[id] = { messages, ...(await summary(c)) }
    }
    return out
  },

  // update has `by` commit an UpdatePath without proposals.
  async update({ by }) {
    const c = client(by)
    const res = await createCommit({ state: c.state, cipherSuite: impl }, { wireAsPublicMessage: true })
    return commitBundle(c, res, `after ${by}'s update commit`)
  },

  // prepareUpdate has `by` make an UpdatePath Commit and hold it back.
  async prepareUpdate({ by }) {
    const c = client(by)
    c.prepared = await createCommit({ state: c.state, cipherSuite: impl }, { wireAsPublicMessage: true })
    return { epoch: Number(c.state.groupContext.epoch) }
  },

  // sendStale sends the Commit prepareUpdate held back, which the group
  // has moved on from: the DS must refuse it with aborted and a
  // WrongEpoch detail. Then `by` catches up and commits an UpdatePath
  // again, as a client does when it loses the race for an epoch.
  async sendStale({ by }) {
    const c = client(by)
    const stale = c.prepared
    c.prepared = undefined
    let refusal
    try {
      await c.call("mlsds.v1.GroupService/SendCommitBundle", {
        commit: b64(encodeMlsMessage(stale.commit)),
        groupInfo: b64(await c.groupInfo(stale.newState)),
      })
    } catch (e) {
      if (!(e instanceof RpcError)) throw e
      refusal = { code: e.code, details: e.detailTypes(), wrongEpoch: e.details.find((d) => d.type === "mlsds.v1.WrongEpoch")?.debug }
    }
    if (!refusal) throw new Error(`${by}'s stale Commit was accepted`)
    await c.catchUp()
    const res = await createCommit({ state: c.state, cipherSuite: impl }, { wireAsPublicMessage: true })
    return { refusal, ...(await commitBundle(c, res, `after ${by}'s rebased update commit`)) }
  },

  // privateCommit has `by` send an UpdatePath Commit as a PrivateMessage,
  // which a transparent-mode DS cannot validate and must refuse; `by`
  // keeps its state. It goes as a Commit should, through SendCommitBundle
  // with a good GroupInfo of the new epoch, so that what is refused is the
  // wire format alone. It returns the refusal.
  async privateCommit({ by }) {
    const c = client(by)
    const res = await createCommit({ state: c.state, cipherSuite: impl }, { wireAsPublicMessage: false })
    if (res.commit.wireformat !== "mls_private_message") throw new Error(`ts-mls made a ${res.commit.wireformat} Commit`)
    try {
      await c.call("mlsds.v1.GroupService/SendCommitBundle", {
        commit: b64(encodeMlsMessage(res.commit)),
        groupInfo: b64(await c.groupInfo(res.newState)),
      })
    } catch (e) {
      if (!(e instanceof RpcError)) throw e
      const invalid = e.details.find((d) => d.type === "mlsds.v1.InvalidMessage")?.debug
      return { code: e.code, details: e.detailTypes(), message: e.message, invalid }
    }
    throw new Error(`${by}'s PrivateMessage Commit was accepted`)
  },

  // remove has `by` remove the members ids with one Commit.
  async remove({ by, ids }) {
    const c = client(by)
    const extraProposals = ids.map((id) => ({ proposalType: "remove", remove: { removed: leafOf(c.state, id) } }))
    const res = await createCommit({ state: c.state, cipherSuite: impl }, { wireAsPublicMessage: true, extraProposals })
    return commitBundle(c, res, `after ${by}'s Remove of ${ids}`)
  },

  // leave has `by` propose its own removal (a PublicMessage Proposal),
  // for another member to commit.
  async leave({ by }) {
    const c = client(by)
    const prop = await createProposal(c.state, true, { proposalType: "remove", remove: { removed: c.state.privatePath.leafIndex } }, impl)
    const { receipt } = await c.call("mlsds.v1.GroupService/Send", { message: b64(encodeMlsMessage(prop.message)) })
    c.state = prop.newState
    return { seq: Number(receipt.groupSeq) }
  },

  // commit has `by` fetch what is new and commit the proposals it
  // received, by reference (a Commit without proposals of its own).
  async commit({ by }) {
    const c = client(by)
    await c.catchUp()
    const res = await createCommit({ state: c.state, cipherSuite: impl }, { wireAsPublicMessage: true })
    const refs = res.commit.publicMessage.content.commit.proposals.filter((p) => p.proposalOrRefType === "reference").length
    if (refs === 0) throw new Error(`${by}'s Commit carries no proposal by reference`)
    return { ...(await commitBundle(c, res, `after ${by}'s Commit by reference`)), references: refs }
  },

  // joinLink has member `by` make a join link of its group
  // (CreateJoinLink) and returns its secret token, for a client that is
  // not a member to join by external Commit.
  async joinLink({ by }) {
    return { joinToken: await client(by).joinLink() }
  },

  // joinExternal has ts-mls client id join by external Commit
  // (§12.4.3.2) from groupInfo, an MLSMessage(GroupInfo) carrying the
  // ratchet_tree extension (from the Go SDK's Group.GroupInfo). Not being
  // a member, it passes joinToken, the token of a join link a member made.
  async joinExternal({ id, groupInfo, joinToken }) {
    const c = client(id)
    const m = decodeMlsMessage(unb64(groupInfo), 0)?.[0]
    if (m?.wireformat !== "mls_group_info") throw new Error("joinExternal: not an MLSMessage(GroupInfo)")
    const ext = await joinGroupExternal(readableExternalPub(m.groupInfo), c.kp.publicPackage, c.kp.privatePackage, false, impl)
    const commit = encodeMlsMessage({ version: "mls10", wireformat: "mls_public_message", publicMessage: ext.publicMessage })
    const { receipt } = await c.call("mlsds.v1.GroupService/SendCommitBundle", {
      commit: b64(commit),
      groupInfo: b64(await c.groupInfo(ext.newState)),
      joinToken,
    })
    c.state = ext.newState
    c.groupId = m.groupInfo.groupContext.groupId
    c.next = Number(receipt.groupSeq) + 1
    c.removed = false
    await c.checkDSTree(`after ${id}'s external commit`)
    return { seq: Number(receipt.groupSeq), ...(await summary(c)) }
  },

  // proposeAdd has `by` claim a KeyPackage of id and propose adding it
  // (a PublicMessage Proposal), for another member to commit.
  async proposeAdd({ by, id }) {
    const c = client(by)
    const kp = await c.claim(id)
    const prop = await createProposal(c.state, true, { proposalType: "add", add: { keyPackage: kp } }, impl)
    const { receipt } = await c.call("mlsds.v1.GroupService/Send", { message: b64(encodeMlsMessage(prop.message)) })
    c.state = prop.newState
    return { seq: Number(receipt.groupSeq) }
  },

  // check compares the DS's tree with id's ts-mls state.
  async check({ id, what }) {
    await client(id).checkDSTree(what ?? `check of ${id}`)
    return {}
  },

  // roster returns the DS's roster of id's group.
  async roster({ id }) {
    const c = client(id)
    const r = await c.call("mlsds.v1.GroupService/GetRoster", { groupId: b64(c.groupId) })
    return { clientIds: r.clientIds ?? [] }
  },
}

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
for await (const line of rl) {
  if (!line.trim()) continue
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (e) {
    console.log(JSON.stringify({ id: null, ok: false, error: `bad command line: ${e}` }))
    continue
  }
  const fn = ops[cmd.op]
  log(`${cmd.id}: ${cmd.op} ${JSON.stringify(cmd.args ?? {})}`)
  try {
    if (!fn) throw new Error(`unknown op ${cmd.op}`)
    const result = await fn(cmd.args ?? {})
    console.log(JSON.stringify({ id: cmd.id, ok: true, result }))
  } catch (e) {
    const reply = { id: cmd.id, ok: false, error: String(e?.stack ?? e) }
    if (e instanceof RpcError) reply.rpcError = { code: e.code, message: e.message, details: e.details }
    log(`${cmd.id}: ${cmd.op} failed: ${reply.error}`)
    console.log(JSON.stringify(reply))
  }
}
