package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

// Delete deletes this client's account on the server and then the client
// itself. It first leaves every group it is in (Group.Leave), so that the
// other members' clients commit its removal at once; a group it cannot
// leave is left by the deletion anyway, and the members commit the removal
// after their next Commit (the server's roster no longer lists the
// client). Then the server deletes the client (AccountService.
// DeleteClient): its registration, KeyPackages, memberships and pending
// Welcomes; the messages it sent stay for the other members, without its
// id. Last, Delete closes the client and deletes its state file
// (Config.StatePath), with the identity's private keys and the group
// states. It returns the number of groups the server still counted the
// client in. If the server's deletion fails, the client stays open and
// its state is kept, so Delete may be called again.
func (c *Client) Delete(ctx context.Context) (groupsLeft int, err error) {
	if err := c.checkOpen(); err != nil {
		return 0, err
	}
	for _, g := range c.allGroups() {
		err := g.Leave(ctx)
		if err != nil && !errors.Is(err, ErrRemoved) && !errors.Is(err, ErrClosed) && ctx.Err() == nil {
			c.log.Debug("leaving a group before deleting the client failed; the deletion leaves it",
				slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
		}
	}
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	res, err := c.rpc.account.DeleteClient(ctx, connect.NewRequest(&mlsdsv1.DeleteClientRequest{}))
	if err != nil {
		return 0, fmt.Errorf("client: deleting the client on the server: %w", err)
	}
	if err := c.close(); err != nil && !errors.Is(err, ErrClosed) {
		return int(res.Msg.GroupsLeft), err
	}
	if p := c.cfg.StatePath; p != "" {
		for _, f := range []string{p, p + "-wal", p + "-shm", p + "-journal"} {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return int(res.Msg.GroupsLeft), fmt.Errorf("client: the client is deleted on the server, but its state file remains: %w", err)
			}
		}
	}
	return int(res.Msg.GroupsLeft), nil
}
