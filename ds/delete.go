package ds

import (
	"context"
	"errors"
	"fmt"
)

// Deleting a client. A client (or the operator, for it) may delete its
// account: the Delivery Service then forgets it as far as the other
// members let it. Its registration, KeyPackages, cursors, pending
// Welcomes, memberships, the device links and join links it made go at
// once. The messages it sent stay, since the other members' history holds
// them, but the store no longer says who sent them (the sender becomes
// DeletedSender), nor who claimed a KeyPackage or created a group. A group
// whose last member it was goes with it, messages, state and all.
//
// What the Delivery Service cannot rewrite is what the members signed:
// in a transparent group the public handshake messages, the ratchet tree
// and the GroupInfo hold the client's credential (its id) until the
// members commit its removal, and the messages of the history keep it for
// as long as the store keeps them. The members' clients commit the removal
// of a leaf whose client is no longer on the roster (Roster lists current
// members only), and the store accepts that Commit like any other: a
// removed client that does not exist changes nothing.

// DeletedSender is what a message's sender, a group's creator and a remote
// tree's uploader read as once their client was deleted.
const DeletedSender = ""

// ClientDeletion is what deleting a client did.
type ClientDeletion struct {
	ClientID string
	UserID   string
	// Groups are the groups the client was a member of (an open
	// membership window), sorted.
	Groups [][]byte
	// EmptiedGroups are the groups it ever was in that have no member
	// left (set by the Store, sorted): those of Groups whose last member
	// it was, and those it left last; DeletedGroups those of them that
	// were deleted (set by the Service). An emptied group that is not deleted (a failure, or
	// someone joined it in between) is left to the retention sweep, which
	// deletes groups without members.
	EmptiedGroups [][]byte
	DeletedGroups [][]byte
}

// DeleteClient deletes client, as the client itself asks (see the top of
// this file): the caller is the client being deleted. ErrNotFound if it
// does not exist (deleted already).
func (s *Service) DeleteClient(ctx context.Context, client string) (ClientDeletion, error) {
	if err := s.allow(client); err != nil {
		return ClientDeletion{}, err
	}
	return s.deleteClient(ctx, client)
}

// DeleteClientAdmin deletes client for the operator, without the
// client's rate limit. ErrNotFound if it does not exist.
func (s *Service) DeleteClientAdmin(ctx context.Context, client string) (ClientDeletion, error) {
	if err := s.checkID("client", client); err != nil {
		return ClientDeletion{}, err
	}
	return s.deleteClient(ctx, client)
}

// DeleteUser deletes every client of userID, one by one (each in a
// transaction of its own), for the operator, and returns what each
// deletion did, in client id order. A client that is deleted concurrently
// is left out; a client registered for the user while DeleteUser runs may
// survive it. ErrNotFound if the user has no clients.
func (s *Service) DeleteUser(ctx context.Context, userID string) ([]ClientDeletion, error) {
	if err := s.checkID("user", userID); err != nil {
		return nil, err
	}
	cs, err := s.store.ClientsOfUser(ctx, userID)
	if err != nil {
		return nil, err
	}
	if len(cs) == 0 {
		return nil, fmt.Errorf("%w: user %q has no clients", ErrNotFound, userID)
	}
	var out []ClientDeletion
	for _, c := range cs {
		d, err := s.deleteClient(ctx, c.ID)
		if errors.Is(err, ErrNotFound) {
			continue
		} else if err != nil {
			return out, fmt.Errorf("deleting client %q of user %q: %w", c.ID, userID, err)
		}
		out = append(out, d)
	}
	return out, nil
}

func (s *Service) deleteClient(ctx context.Context, client string) (ClientDeletion, error) {
	// As with LeaveGroup, this node's subscriptions distrust what they
	// know of the client's memberships while the store changes them.
	cur, err := s.store.Cursors(ctx, client)
	if err != nil {
		return ClientDeletion{}, err
	}
	for _, c := range cur {
		s.fan.leaving.add(client, c.GroupID)
		defer s.fan.leaving.remove(client, c.GroupID)
	}
	d, err := s.store.DeleteClient(ctx, client)
	if err != nil {
		return ClientDeletion{}, err
	}
	d.ClientID = client
	s.notify(ClientTopic(client))
	// The groups it leaves without members go (prune.go), in bounded
	// steps; a group someone joined in between stays.
	for _, g := range d.EmptiedGroups {
		deleted, err := s.DeleteGroupIfEmpty(ctx, g)
		if isNotFound(err) {
			continue
		} else if err != nil {
			return d, fmt.Errorf("client %q is deleted, but deleting group %x, which it left without members, failed (the retention sweep will): %w", client, g, err)
		}
		if deleted {
			d.DeletedGroups = append(d.DeletedGroups, g)
			s.notify(GroupTopic(g))
		}
	}
	return d, nil
}
