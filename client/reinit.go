package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// Reinitializing a group and branching a subgroup (RFC 9420 §11.2,
// §11.3): a new group linked to the old one by the old group's resumption
// PSK, which only the old group's members hold.
//
// ReInit: Group.ReInit commits a ReInit proposal, only ever on the app's
// request (the client never commits another member's ReInit proposal).
// Every member then gets EventReInit and the group is closed
// (ErrGroupReInit); its state stays, since the resumption PSK of its last
// epoch is what lets its members into the successor. The member whose
// leaf index is lowest in the closed group creates the successor (should
// it not do so within Config.CommitterTimeout, the next member in leaf
// order does, and so on: the member at position p takes its turn p
// timeouts after it processed the ReInit, unless the server has the
// successor by then): it claims a fresh KeyPackage of each other member, as for an Add, makes
// the successor with mls.Group.ReInitGroup and creates it on the server
// in the old group's mode, naming the old group as its predecessor
// (CreateGroupRequest.predecessor_group_id), with the Welcome. The others
// join from the Welcome when it arrives, with mls.Group.JoinSuccessor,
// which checks that the successor continues the closed group: its
// parameters are the ReInit's and its members the old group's. Each
// member, the creator included, gets EventJoined for the successor, whose
// Predecessor names the old group. A member that is not the creator finds
// the successor also through Group.Successor (the server's link).
//
// Branch: Group.Branch makes a subgroup of some members with
// mls.Group.Branch and creates it in the old group's mode; the members it
// names join from the Welcome with mls.Group.JoinBranch (EventJoined,
// Predecessor naming the old group). The old group goes on.

// ReInitOptions are the parameters of the successor group of a ReInit.
type ReInitOptions struct {
	// GroupID is the successor's group id; nil means 16 random bytes.
	GroupID []byte
	// CipherSuite is the successor's cipher suite; 0 keeps the group's.
	// The members' clients must publish KeyPackages of it, and its
	// signature scheme must be that of this client's key.
	CipherSuite mls.CipherSuite
	// Extensions are the successor's GroupContext extensions.
	Extensions mls.Extensions
}

// ReInit closes the group with a Commit of a ReInit proposal (RFC 9420
// §11.2) and returns the id of the successor group. Every member gets
// EventReInit; the member with the lowest leaf index (this client, if it
// is) creates the successor, and everyone joins it (EventJoined with
// Predecessor set to this group's id). ReInit returns once the ReInit is
// committed and, if this client creates the successor, once the
// successor exists.
func (g *Group) ReInit(ctx context.Context, opts ReInitOptions) ([]byte, error) {
	g.mu.Lock()
	cs := g.st.GroupContext().CipherSuite
	deniable := g.den != nil
	g.mu.Unlock()
	if deniable {
		return nil, fmt.Errorf("client: a deniable group cannot be reinitialized: %w", ErrDeniable)
	}
	ri := &mls.ReInit{GroupID: bytes.Clone(opts.GroupID), Version: mls.ProtocolVersionMLS10, CipherSuite: opts.CipherSuite, Extensions: opts.Extensions}
	if ri.GroupID == nil {
		ri.GroupID = make([]byte, 16)
		rand.Read(ri.GroupID)
	}
	if ri.CipherSuite == 0 {
		ri.CipherSuite = cs
	}
	if g.c.group(ri.GroupID) != nil {
		return nil, fmt.Errorf("client: this client already has group %x", ri.GroupID)
	}
	if err := g.commit(ctx, intent{reinit: ri}); err != nil {
		return nil, err
	}
	if err := g.successorDue(ctx); err != nil {
		return ri.GroupID, fmt.Errorf("client: the ReInit is committed, but creating the successor group failed: %w", err)
	}
	return bytes.Clone(ri.GroupID), nil
}

// ErrSuccessorTaken is returned when the successor a committed ReInit
// names cannot be created on the server: its group id is taken by a group
// that the server does not link to this one, or the server links another
// group as this one's successor (a member linked a group of its own
// before the ReInit). The members' clients do not join such a group: only
// a Welcome that carries the resumption PSK of the closed group's last
// epoch brings them into a successor, and a Welcome into the successor's
// id without it is refused with this error (EventUndecryptable).
var ErrSuccessorTaken = errors.New("client: the successor's group id is taken on the server by a group that does not continue this one")

// Successor returns the id of the group that a committed ReInit of this
// group named, and whether a successor exists yet on the server (its
// creator made it). It returns nil and false for a group no ReInit
// closed. When the server links another group than the ReInit's as the
// successor, the error wraps ErrSuccessorTaken.
func (g *Group) Successor(ctx context.Context) ([]byte, bool, error) {
	g.mu.Lock()
	ri, frozen := g.st.Frozen()
	g.mu.Unlock()
	if !frozen {
		return nil, false, nil
	}
	linked, err := g.c.serverSuccessor(ctx, g.id)
	if err != nil {
		return bytes.Clone(ri.GroupID), false, err
	}
	if linked != nil && !bytes.Equal(linked, ri.GroupID) {
		return bytes.Clone(ri.GroupID), false, fmt.Errorf("%w: the server links group %x as the successor of group %x, whose ReInit names group %x", ErrSuccessorTaken, linked, g.id, ri.GroupID)
	}
	return bytes.Clone(ri.GroupID), linked != nil, nil
}

// serverSuccessor returns the successor the server links to group pred,
// or nil.
func (c *Client) serverSuccessor(ctx context.Context, pred []byte) ([]byte, error) {
	res, err := c.rpc.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: pred}))
	if err != nil {
		return nil, fmt.Errorf("client: reading the successor of group %x: %w", pred, err)
	}
	if len(res.Msg.SuccessorGroupId) == 0 {
		return nil, nil
	}
	return res.Msg.SuccessorGroupId, nil
}

// maybeCreateSuccessor is successorDue after processing, logging a
// failure.
func (g *Group) maybeCreateSuccessor(ctx context.Context) {
	if err := g.successorDue(ctx); err != nil && ctx.Err() == nil {
		g.c.log.Warn("creating the successor of a reinitialized group failed", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
	}
}

// successorDue creates the successor of a group a committed ReInit closed
// if this client is its designated creator (the member with the lowest
// leaf index), and otherwise arms a timer for this client's turn: the
// member at position p in leaf order creates it after p times
// Config.CommitterTimeout if nobody has by then. The timer reuses the
// Group's takeover timer, which a closed group has no other use for.
func (g *Group) successorDue(ctx context.Context) error {
	c := g.c
	g.mu.Lock()
	ri, frozen := g.st.Frozen()
	idle := !frozen || g.removed || g.broken || g.closed || g.den != nil
	pos := slices.IndexFunc(g.st.Members(), func(m mls.Member) bool { return m.Leaf == g.st.Self() })
	g.mu.Unlock()
	if idle || pos < 0 || c.group(ri.GroupID) != nil {
		return nil
	}
	if pos > 0 {
		g.mu.Lock()
		if g.takeover == nil && !g.closed {
			g.takeover = time.AfterFunc(time.Duration(pos)*c.committerTimeout(), func() {
				if !c.startTask() {
					return
				}
				defer c.wg.Done()
				g.mu.Lock()
				g.takeover = nil
				g.mu.Unlock()
				if _, err := g.createSuccessor(c.ctx, pos); err != nil && c.ctx.Err() == nil {
					c.log.Warn("creating the successor of a reinitialized group failed", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
				}
			})
		}
		g.mu.Unlock()
		return nil
	}
	_, err := g.createSuccessor(ctx, 0)
	return err
}

// createSuccessor creates the successor of the group, if a committed
// ReInit closed it, this client's leaf is at position turn among the
// members in leaf order, and neither this client nor the server has the
// successor yet. It returns the new group, or nil when there was nothing
// for this client to do.
func (g *Group) createSuccessor(ctx context.Context, turn int) (*Group, error) {
	c := g.c
	g.mu.Lock()
	ri, frozen := g.st.Frozen()
	members := g.st.Members()
	self := g.st.Self()
	opaque := g.opaque
	idle := !frozen || g.removed || g.broken || g.closed || turn >= len(members) || members[turn].Leaf != self
	g.mu.Unlock()
	if idle || c.group(ri.GroupID) != nil {
		return nil, nil
	}
	if _, exists, err := g.Successor(ctx); err != nil {
		return nil, err
	} else if exists {
		return nil, nil
	}
	var others []*mls.KeyPackage
	var kpData [][]byte
	var ids []string
	for _, m := range members {
		if m.Leaf == self {
			continue
		}
		id := string(m.Identity)
		data, kp, err := c.claimSuite(ctx, id, ri.CipherSuite)
		if err != nil {
			return nil, err
		}
		others, kpData, ids = append(others, kp), append(kpData, data), append(ids, id)
	}
	kp, priv, err := mls.NewKeyPackageWith(ri.CipherSuite, []byte(c.id), c.sig, 0, math.MaxUint64, greaseKeyPackages)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	st, welcome, err := g.st.ReInitGroup(kp, priv, others)
	g.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return c.createLinked(ctx, st, welcome, g.id, g.id, opaque, ids, kpData)
}

// Branch creates a subgroup of this group with the given members besides
// this client (RFC 9420 §11.3), in this group's mode, and returns it: a
// new group with id newGroupID (nil: 16 random bytes) whose Welcome
// carries this group's resumption PSK. It claims a fresh KeyPackage of
// each member, as Add does. The members' clients join it on their own
// (EventJoined, Predecessor naming this group); this group goes on. The
// branch of a deniable group is a deniable group that the server does not
// link to this one.
func (g *Group) Branch(ctx context.Context, newGroupID []byte, members ...string) (*Group, error) {
	return g.branch(ctx, newGroupID, g.lockActive, members...)
}

// branch is Branch with lock, which locks g unless it cannot be branched
// (Branch: lockActive; the recovery of a deniable group, whose broken
// epoch may have made it look dropped: lockOpen).
func (g *Group) branch(ctx context.Context, newGroupID []byte, lock func() error, members ...string) (*Group, error) {
	c := g.c
	if err := lock(); err != nil {
		return nil, err
	}
	cs := g.st.GroupContext().CipherSuite
	current := memberIDs(g.st)
	opaque, deniable := g.opaque, g.den != nil
	g.mu.Unlock()
	id := bytes.Clone(newGroupID)
	if id == nil {
		id = make([]byte, 16)
		rand.Read(id)
	}
	if c.group(id) != nil {
		return nil, fmt.Errorf("client: this client already has group %x", id)
	}
	var others []*mls.KeyPackage
	var kpData [][]byte
	var ids []string
	for _, m := range members {
		if m == c.id || slices.Contains(ids, m) {
			continue
		}
		if !slices.Contains(current, m) {
			return nil, fmt.Errorf("client: %q is not a member of group %x; a branch takes members only", m, g.id)
		}
		data, kp, err := c.claimSuite(ctx, m, cs)
		if err != nil {
			return nil, err
		}
		others, kpData, ids = append(others, kp), append(kpData, data), append(ids, m)
	}
	kp, priv, err := mls.NewKeyPackageWith(cs, []byte(c.id), c.sig, 0, math.MaxUint64, greaseKeyPackages)
	if err != nil {
		return nil, err
	}
	if err := lock(); err != nil {
		return nil, err
	}
	st, welcome, err := g.st.Branch(id, kp, priv, others)
	g.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("client: branching group %x: %w", g.id, err)
	}
	if deniable {
		// A new deniable group, which the server does not link to this
		// one (deniable_recover.go).
		return c.createDeniableBranch(ctx, st, welcome, g.id)
	}
	return c.createLinked(ctx, st, welcome, g.id, nil, opaque, ids, kpData)
}

// createLinked creates st, the new group of a ReInit or a branch of the
// group from, on the server (with the Welcome for the members ids, whose
// claimed KeyPackages are kpData, and the predecessor link pred, if not
// nil), keeps it and emits its EventJoined.
func (c *Client) createLinked(ctx context.Context, st *mls.Group, welcome *mls.Welcome, from, pred []byte, opaque bool, ids []string, kpData [][]byte) (*Group, error) {
	id := st.GroupID()
	// Every leaf passes the credential check (§5.3.1), as for an Add.
	if err := c.validateTree(ctx, id, st.Tree()); err != nil {
		return nil, err
	}
	req := &mlsdsv1.CreateGroupRequest{GroupId: id, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, PredecessorGroupId: pred, KeyPackages: kpData}
	if welcome != nil {
		data, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: welcome})
		if err != nil {
			return nil, err
		}
		req.Welcome = data
	}
	var remote *mlsdsv1.RemoteTree
	if opaque {
		req.Mode, req.Members, req.Epoch = mlsdsv1.GroupMode_GROUP_MODE_OPAQUE, ids, st.Epoch()
		var err error
		if remote, err = currentRemoteTree(st); err != nil {
			return nil, err
		}
	} else {
		gi, err := st.GroupInfo(true)
		if err != nil {
			return nil, err
		}
		if req.GroupInfo, err = mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}); err != nil {
			return nil, err
		}
	}
	if _, err := c.rpc.groups.CreateGroup(ctx, connect.NewRequest(req)); err != nil {
		if pred != nil && connect.CodeOf(err) == connect.CodeAlreadyExists {
			// Another call of this client (Group.ReInit and the
			// processing of the ReInit Commit both try) or another
			// member made it first, if the server links it to pred;
			// else the id is another group's, which nobody joins.
			linked, lerr := c.serverSuccessor(ctx, pred)
			if lerr != nil {
				return nil, lerr
			}
			if bytes.Equal(linked, id) {
				return nil, nil
			}
			return nil, fmt.Errorf("%w: creating group %x as the successor of group %x: %v", ErrSuccessorTaken, id, pred, err)
		}
		return nil, fmt.Errorf("client: creating group %x: %w", id, err)
	}
	g := &Group{c: c, id: id, st: st, opaque: opaque}
	if err := c.holdNewGroup(ctx, g, remote); err != nil {
		return nil, err
	}
	c.emit(Event{Kind: EventJoined, GroupID: bytes.Clone(id), Epoch: st.Epoch(), Members: memberIDs(st), Predecessor: bytes.Clone(from)})
	return g, nil
}

// claimSuite claims a KeyPackage of client id for cipher suite cs, and
// returns it as the server handed it out and decoded.
func (c *Client) claimSuite(ctx context.Context, id string, cs mls.CipherSuite) ([]byte, *mls.KeyPackage, error) {
	res, err := c.rpc.kps.ClaimKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
		Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: id}, CipherSuite: uint32(cs)}))
	if err != nil {
		return nil, nil, fmt.Errorf("client: claiming a KeyPackage of %q: %w", id, err)
	}
	if len(res.Msg.KeyPackages) != 1 {
		return nil, nil, fmt.Errorf("client: claiming a KeyPackage of %q: got %d", id, len(res.Msg.KeyPackages))
	}
	data := res.Msg.KeyPackages[0].KeyPackage
	kp, err := claimedKeyPackage(id, data)
	if err != nil {
		return nil, nil, err
	}
	return data, kp, nil
}

// joinWelcome joins the group of a Welcome to keys with the ratchet tree
// tree (nil: the Welcome's). A Welcome that continues one of this
// client's groups (a resumption PSK of usage reinit or branch) is joined
// with that group's state, which holds the PSK and against which the
// link is checked; the group must be one this client holds.
//
// The group id that a committed ReInit of a group this client holds
// names is that group's successor's: a Welcome into it must continue that
// group with a resumption PSK of usage reinit (JoinSuccessor). Any other
// (a plain Welcome, or a branch) is refused with ErrSuccessorTaken, so
// that no member, nor whoever learns the id, puts another group of its
// choosing in the successor's place.
func (c *Client) joinWelcome(ctx context.Context, w *mls.Welcome, keys keyPackageKeys, tree *mls.RatchetTree) (*mls.Group, error) {
	link, err := mls.WelcomeLink(w, keys.kp, keys.priv)
	if err != nil {
		return nil, err
	}
	st, err := c.joinLinked(ctx, w, keys, tree, link)
	if err != nil {
		return nil, err
	}
	if pred := c.reinitNaming(st.GroupID()); pred != nil &&
		(link == nil || link.Usage != mls.ResumptionPSKUsageReInit || !bytes.Equal(link.PSKGroupID, pred)) {
		return nil, fmt.Errorf("%w: the Welcome is for group %x, the successor that the ReInit of group %x names, but does not continue that group with its resumption PSK (usage reinit)",
			ErrSuccessorTaken, st.GroupID(), pred)
	}
	return st, nil
}

// reinitNaming returns the id of a group this client holds that a
// committed ReInit closed naming gid as its successor, or nil.
func (c *Client) reinitNaming(gid []byte) []byte {
	for _, g := range c.allGroups() {
		g.mu.Lock()
		ri, frozen := g.st.Frozen()
		g.mu.Unlock()
		if frozen && bytes.Equal(ri.GroupID, gid) {
			return bytes.Clone(g.id)
		}
	}
	return nil
}

// joinLinked is joinWelcome without the check of the successor's id.
func (c *Client) joinLinked(ctx context.Context, w *mls.Welcome, keys keyPackageKeys, tree *mls.RatchetTree, link *mls.PreSharedKeyID) (*mls.Group, error) {
	if link == nil {
		return mls.JoinGroup(w, keys.kp, keys.priv, tree, nil)
	}
	old := c.group(link.PSKGroupID)
	if old == nil {
		return nil, fmt.Errorf("the Welcome continues group %x, which this client does not hold", link.PSKGroupID)
	}
	if link.Usage == mls.ResumptionPSKUsageReInit {
		// The ReInit Commit may still be on its way in the old group's
		// stream: process what is outstanding there first.
		old.mu.Lock()
		_, frozen := old.st.Frozen()
		old.mu.Unlock()
		if !frozen {
			if err := old.Sync(ctx); err != nil && !errors.Is(err, ErrGroupReInit) {
				return nil, fmt.Errorf("catching up with group %x, which the Welcome continues: %w", link.PSKGroupID, err)
			}
		}
	} else if old.Epoch() < link.PSKEpoch {
		// A branch of an epoch this client has not reached yet (it was
		// offline): catch up first. What fails after that epoch (a
		// deniable group's broken next epoch, deniable_recover.go) does
		// not matter here.
		err := old.Sync(ctx)
		if old.Epoch() < link.PSKEpoch {
			return nil, fmt.Errorf("catching up with group %x, which the Welcome branches from at epoch %d: %v", link.PSKGroupID, link.PSKEpoch, err)
		}
	}
	old.mu.Lock()
	defer old.mu.Unlock()
	if link.Usage == mls.ResumptionPSKUsageReInit {
		return old.st.JoinSuccessor(w, keys.kp, keys.priv, tree)
	}
	return old.st.JoinBranch(w, keys.kp, keys.priv, tree)
}

// welcomePredecessor returns the group a Welcome to keys continues (a
// ReInit's or a branch's), or nil.
func welcomePredecessor(w *mls.Welcome, keys keyPackageKeys) []byte {
	link, err := mls.WelcomeLink(w, keys.kp, keys.priv)
	if err != nil || link == nil {
		return nil
	}
	return bytes.Clone(link.PSKGroupID)
}
