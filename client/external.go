package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// External Commits (RFC 9420 §12.4.3.2): joining a group from a GroupInfo,
// and rejoining one whose state this client lost track of.

// errRejoinOpaque refuses Rejoin in an opaque-mode group.
var errRejoinOpaque = errors.New("client: the server keeps no GroupInfo of an opaque-mode group that a member who lost track of it can read: " +
	"get one from another member (Group.GroupInfo) and call Client.JoinExternalWith, or have a member remove this client and add it again")

// joinExternal joins a group by external Commit, from the server's
// GroupInfo (groupID set) or from groupInfo. A client whose state of the
// group is broken rejoins it (Group.Rejoin).
func (c *Client) joinExternal(ctx context.Context, groupID, groupInfo []byte) (*Group, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, backoff(attempt)); err != nil {
				return nil, err
			}
		}
		giData, treeData := groupInfo, []byte(nil)
		if groupID != nil {
			res, err := c.rpc.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: groupID, JoinToken: joinTokenFrom(ctx)}))
			if err != nil {
				if transient(err) {
					lastErr = err
					continue
				}
				if connect.CodeOf(err) == connect.CodePermissionDenied {
					return nil, fmt.Errorf("client: the server gives group %x's GroupInfo to members only; get one from a member (Group.GroupInfo) and call JoinExternalWith: %w", groupID, err)
				}
				return nil, fmt.Errorf("client: getting the GroupInfo of group %x: %w", groupID, err)
			}
			if res.Msg.Mode == mlsdsv1.GroupMode_GROUP_MODE_OPAQUE {
				return nil, fmt.Errorf("client: group %x is an opaque-mode group; joining those by external Commit is not supported (the server keeps no GroupInfo of them in the clear)", groupID)
			}
			giData, treeData = res.Msg.GroupInfo, res.Msg.RatchetTree
		}
		g, err := c.joinExternalOnce(ctx, giData, treeData)
		if err == nil {
			return g, nil
		}
		lastErr = err
		if epochConflict(err) {
			if groupID == nil {
				return nil, fmt.Errorf("client: the group moved on from the GroupInfo's epoch; get a fresh GroupInfo and try again: %w", err)
			}
			continue
		}
		if !transient(err) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("client: joining by external Commit failed %d times; try again later: %w", maxAttempts, lastErr)
}

// parseGroupInfo decodes an MLSMessage holding a GroupInfo, and the ratchet
// tree if treeData is not empty.
func parseGroupInfo(giData, treeData []byte) (*mls.GroupInfo, *mls.RatchetTree, error) {
	m, err := mls.ParseMLSMessage(giData)
	if err != nil || m.GroupInfo == nil {
		return nil, nil, fmt.Errorf("client: the GroupInfo is not an MLSMessage holding a GroupInfo: %v", err)
	}
	gi := m.GroupInfo
	var tree *mls.RatchetTree
	if len(treeData) > 0 {
		if tree, err = mls.UnmarshalRatchetTree(gi.GroupContext.CipherSuite, treeData); err != nil {
			return nil, nil, fmt.Errorf("client: the server's ratchet tree does not decode: %w", err)
		}
	}
	return gi, tree, nil
}

func (c *Client) joinExternalOnce(ctx context.Context, giData, treeData []byte) (*Group, error) {
	gi, tree, err := parseGroupInfo(giData, treeData)
	if err != nil {
		return nil, err
	}
	if g := c.group(gi.GroupContext.GroupID); g != nil && !g.isRemoved() {
		g.mu.Lock()
		broken := g.broken
		g.mu.Unlock()
		if !broken {
			return nil, fmt.Errorf("client: this client is a member of group %x already; to start over in it, use Group.Rejoin", gi.GroupContext.GroupID)
		}
		if err := g.rejoinOnce(ctx, gi, tree, nil); err != nil {
			return nil, err
		}
		return g, nil
	}
	// The group's messages may come before the Group is in c.groups:
	// they must not make the client leave it (leaveUnknown).
	defer c.beginJoin(gi.GroupContext.GroupID)()
	st, rc, err := c.externalCommit(ctx, gi, tree, false)
	if err != nil {
		return nil, err
	}
	g := &Group{c: c, id: st.GroupID(), st: st, processed: rc.GroupSeq}
	if err := g.persist(nil); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.groups[string(g.id)] = g
	c.mu.Unlock()
	c.emit(Event{Kind: EventJoined, GroupID: g.id, Seq: rc.GroupSeq, Epoch: st.Epoch(), Sender: c.id, Members: memberIDs(st), AcceptedAt: rc.AcceptedAt.AsTime()})
	c.acks.now()
	return g, nil
}

// externalCommit makes an external Commit from gi (with tree, or gi's
// ratchet_tree extension if tree is nil) and sends it. If the tree holds a
// leaf of this client, the Commit removes it: a resync (§12.4.3.2), for
// the server lets a client hold one leaf of a group only. In an opaque
// group (only a resync: the server takes external Commits from members
// only) the new epoch's GroupInfo and tree go to the server encrypted,
// and the roster does not change.
func (c *Client) externalCommit(ctx context.Context, gi *mls.GroupInfo, tree *mls.RatchetTree, opaque bool) (*mls.Group, *mlsdsv1.Receipt, error) {
	if tree == nil {
		t, err := groupInfoTree(gi)
		if err != nil {
			return nil, nil, err
		}
		tree = t // nil: mls.JoinExternalWith says what is missing
	}
	if tree != nil {
		// Every leaf of the group joined passes the credential check
		// (§5.3.1) before this client commits to it.
		if err := c.validateTree(ctx, gi.GroupContext.GroupID, tree); err != nil {
			return nil, nil, err
		}
	}
	old, err := c.ownLeaf(gi, tree)
	if err != nil {
		return nil, nil, err
	}
	if opaque && old == nil {
		return nil, nil, errors.New("client: the GroupInfo's tree holds no leaf of this client; only members take part in an opaque group's external Commits")
	}
	now := uint64(time.Now().Unix())
	kp, priv, err := mls.NewKeyPackageWith(gi.GroupContext.CipherSuite, []byte(c.id), c.sig, now-3600, now+uint64(keyPackageLifetime.Seconds()), greaseKeyPackages)
	if err != nil {
		return nil, nil, err
	}
	st, commit, err := mls.JoinExternalWith(gi, tree, kp, priv, mls.JoinExternalOptions{RemoveLeaf: old})
	if err != nil {
		return nil, nil, fmt.Errorf("client: joining by external Commit: %w", err)
	}
	wire, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: commit})
	if err != nil {
		return nil, nil, err
	}
	var ngi *mls.GroupInfo
	if opaque {
		ngi, err = st.GroupInfo(false)
	} else {
		ngi, err = c.commitGroupInfo(st)
	}
	if err != nil {
		return nil, nil, err
	}
	req := &mlsdsv1.SendCommitBundleRequest{Commit: wire, JoinToken: joinTokenFrom(ctx)}
	if opaque {
		blob, err := SealRemoteTree(st, ngi, st.Tree())
		if err != nil {
			return nil, nil, err
		}
		req.RemoteTree = &mlsdsv1.RemoteTree{Epoch: st.Epoch(), Blob: blob}
	} else if req.GroupInfo, err = mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: ngi}); err != nil {
		return nil, nil, err
	}
	res, err := c.rpc.groups.SendCommitBundle(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, nil, fmt.Errorf("client: sending the external Commit: %w", err)
	}
	return st, res.Msg.Receipt, nil
}

// ownLeaf returns the leaf of this client's identity in the tree (gi's
// ratchet_tree extension if tree is nil), or nil if it holds none.
func (c *Client) ownLeaf(gi *mls.GroupInfo, tree *mls.RatchetTree) (*mls.LeafIndex, error) {
	if tree == nil {
		t, err := groupInfoTree(gi)
		if err != nil || t == nil {
			return nil, err // no tree: mls.JoinExternalWith says what is missing
		}
		tree = t
	}
	for i, ln := range tree.Leaves() {
		if bytes.Equal(mls.CredentialIdentity(&ln.Credential), []byte(c.id)) {
			return &i, nil
		}
	}
	return nil, nil
}

// groupInfoTree returns the tree of gi's ratchet_tree extension, or nil if
// it has none.
func groupInfoTree(gi *mls.GroupInfo) (*mls.RatchetTree, error) {
	for _, e := range gi.Extensions {
		if e.ExtensionType != mls.ExtensionTypeRatchetTree {
			continue
		}
		t, err := mls.UnmarshalRatchetTree(gi.GroupContext.CipherSuite, e.ExtensionData)
		if err != nil {
			return nil, fmt.Errorf("client: the GroupInfo's ratchet tree does not decode: %w", err)
		}
		return t, nil
	}
	return nil, nil
}

// rejoin is Group.Rejoin: a resync external Commit from the server's
// GroupInfo, made again with a fresh GroupInfo if another Commit wins the
// epoch.
func (g *Group) rejoin(ctx context.Context) error { return g.rejoinWith(ctx, nil) }

// rejoinWith is rejoin; a reason (not nil) makes it the automatic rejoin of
// a group this client could not follow, reported with EventRejoined
// instead of EventJoined. When several members rejoin at once they race
// for the epoch: a loser makes its Commit again from the newer GroupInfo,
// at most maxAttempts times.
func (g *Group) rejoinWith(ctx context.Context, reason error) error {
	var lastErr error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, retryAfter(lastErr, attempt)); err != nil {
				return err
			}
		}
		err := g.rejoinOnce(ctx, nil, nil, reason)
		if err == nil {
			return nil
		}
		lastErr = err
		if !epochConflict(err) && !transient(err) {
			return err
		}
	}
	return fmt.Errorf("client: rejoining group %x failed %d times; try again later: %w", g.id, maxAttempts, lastErr)
}

// rejoinOnce replaces the group's state by a resync external Commit from
// gi and tree, or from the server's GroupInfo if gi is nil (transparent
// mode only). reason, if not nil, makes it an automatic rejoin
// (EventRejoined). A tree with a leaf that fails the credential check is
// not joined: the group is then marked refused (EventRefused) and the
// *CredentialError returned.
func (g *Group) rejoinOnce(ctx context.Context, gi *mls.GroupInfo, tree *mls.RatchetTree, reason error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.closed:
		return ErrClosed
	case g.removed:
		return ErrRemoved
	case g.opaque && gi == nil:
		return errRejoinOpaque
	}
	if gi == nil {
		res, err := g.c.rpc.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: g.id}))
		if err != nil {
			return fmt.Errorf("client: getting the GroupInfo of group %x: %w", g.id, err)
		}
		if res.Msg.Mode == mlsdsv1.GroupMode_GROUP_MODE_OPAQUE {
			return errRejoinOpaque
		}
		if gi, tree, err = parseGroupInfo(res.Msg.GroupInfo, res.Msg.RatchetTree); err != nil {
			return err
		}
	}
	if !bytes.Equal(gi.GroupContext.GroupID, g.id) {
		return fmt.Errorf("client: the GroupInfo is of group %x, not %x", gi.GroupContext.GroupID, g.id)
	}
	st, rc, err := g.c.externalCommit(ctx, gi, tree, g.opaque)
	var ce *CredentialError
	if errors.As(err, &ce) {
		g.c.logRefused("rejoining", ce)
		if !g.refused {
			g.broken, g.refused = true, true
			g.unsaved = append(g.unsaved, refusedEvent(Event{GroupID: g.id, Seq: g.processed, Epoch: gi.GroupContext.Epoch}, ce))
			if perr := g.persist(nil); perr != nil {
				return perr
			}
		}
		return err
	}
	if err != nil {
		return err
	}
	// What was sent before the Commit stays unread: this client held no
	// keys of those epochs.
	g.st, g.processed = st, rc.GroupSeq
	// Rejoining starts over: an earlier Leave no longer stands.
	g.broken, g.refused, g.brokenErr, g.rejoinFailures, g.pending, g.proposals, g.leaving = false, false, nil, 0, nil, nil, false
	g.own, g.removalsDue, g.commitSeen = nil, nil, true
	if err := g.persist(nil); err != nil {
		return err
	}
	e := Event{Kind: EventJoined, GroupID: g.id, Seq: rc.GroupSeq, Epoch: st.Epoch(), Sender: g.c.id, Members: memberIDs(st), AcceptedAt: rc.AcceptedAt.AsTime()}
	if reason != nil {
		e.Kind, e.Err = EventRejoined, reason
	}
	g.c.emit(e)
	g.c.acks.now()
	return nil
}
