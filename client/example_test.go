package client_test

import (
	"context"
	"fmt"
	"log"

	"github.com/mlsds/mlsds/client"
)

func Example() {
	ctx := context.Background()
	c, err := client.Open(ctx, client.Config{
		Server:    "http://127.0.0.1:7400",
		StatePath: "alice.db",
		ClientID:  "alice",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	g, err := c.CreateGroup(ctx, client.GroupOptions{})
	if err != nil {
		log.Fatal(err)
	}
	if err := g.Add(ctx, "bob", "carol"); err != nil {
		log.Fatal(err)
	}
	if _, err := g.Send(ctx, []byte("hello")); err != nil {
		log.Fatal(err)
	}
	for ev := range c.Events() {
		switch ev.Kind {
		case client.EventMessage:
			fmt.Printf("%s: %s\n", ev.Sender, ev.Data)
		case client.EventUndecryptable:
			log.Printf("group %x, message %d: %v", ev.GroupID, ev.Seq, ev.Err)
		}
	}
}
