package ds

import (
	"context"
	"encoding/hex"
	"sync"
)

// Notifier carries wake-ups from the code that writes to a Store to the
// subscriptions that read from it. A wake-up only says "look again": the
// subscriptions read what is new from the Store, so a lost or duplicated
// wake-up costs latency, never a message (subscriptions also poll).
//
// The in-process implementation is NewLocalNotifier. An engine shared by
// several nodes provides its own (see NotifierProvider), for example on
// PostgreSQL LISTEN/NOTIFY.
type Notifier interface {
	// Notify wakes the listeners of each topic. It must not block on
	// listeners.
	Notify(ctx context.Context, topics ...string) error
	// Listen calls fn whenever topic is notified, until stop is called.
	// fn must return quickly and must not call back into the Notifier.
	Listen(topic string, fn func()) (stop func())
}

// GroupTopic is the topic notified when a message is appended to a group.
func GroupTopic(groupID []byte) string { return "g:" + hex.EncodeToString(groupID) }

// ClientTopic is the topic notified when something that is not a group
// message changes for a client: it joins or leaves a group, a Welcome is
// routed to it, its KeyPackage stock changes.
func ClientTopic(clientID string) string { return "c:" + clientID }

// LocalNotifier is a Notifier within one process.
type LocalNotifier struct {
	mu        sync.Mutex
	next      uint64
	listeners map[string]map[uint64]func()
}

// NewLocalNotifier returns an in-process Notifier.
func NewLocalNotifier() *LocalNotifier {
	return &LocalNotifier{listeners: make(map[string]map[uint64]func())}
}

// Notify calls the listeners of each topic.
func (n *LocalNotifier) Notify(_ context.Context, topics ...string) error {
	var fns []func()
	n.mu.Lock()
	for _, t := range topics {
		for _, fn := range n.listeners[t] {
			fns = append(fns, fn)
		}
	}
	n.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
	return nil
}

// Listen registers fn for topic.
func (n *LocalNotifier) Listen(topic string, fn func()) (stop func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	id := n.next
	n.next++
	m := n.listeners[topic]
	if m == nil {
		m = make(map[uint64]func())
		n.listeners[topic] = m
	}
	m[id] = fn
	var once sync.Once
	return func() {
		once.Do(func() {
			n.mu.Lock()
			defer n.mu.Unlock()
			delete(n.listeners[topic], id)
			if len(n.listeners[topic]) == 0 {
				delete(n.listeners, topic)
			}
		})
	}
}
