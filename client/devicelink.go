package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

// DeviceLink is a one-time secret with which a new client (device)
// registers under this client's user: pass Link as Config.DeviceLink and
// UserID as Config.UserID when opening the new client.
type DeviceLink struct {
	Link      string
	UserID    string
	ExpiresAt time.Time
}

// CreateDeviceLink asks the server for a device link valid for ttl (0:
// the server's default, 10 minutes; at most a day). Hand it to the new
// device over a channel you trust, such as a QR code shown on this one:
// whoever holds it can add a client to this user.
func (c *Client) CreateDeviceLink(ctx context.Context, ttl time.Duration) (DeviceLink, error) {
	if ttl < 0 {
		return DeviceLink{}, errors.New("client: a device link's ttl must not be negative")
	}
	if ttl > 24*time.Hour {
		return DeviceLink{}, errors.New("client: a device link is valid for at most a day")
	}
	res, err := c.rpc.account.CreateDeviceLink(ctx, connect.NewRequest(&mlsdsv1.CreateDeviceLinkRequest{TtlSeconds: uint32(ttl / time.Second)}))
	if err != nil {
		return DeviceLink{}, fmt.Errorf("client: creating a device link: %w", err)
	}
	return DeviceLink{Link: res.Msg.DeviceLink, UserID: res.Msg.UserId, ExpiresAt: res.Msg.ExpiresAt.AsTime()}, nil
}
