package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gembatch/gembatch/client"
)

// Submit waits for the answer: batch jobs take minutes to hours, so give ctx as long as the
// answer is worth waiting for.
func ExampleClient_Submit() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc, client.WithDefaultModel("gemini-2.5-flash"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 24*time.Hour)
	defer cancel()
	reply, err := c.Submit(ctx, client.Request{Key: "sky-1", Body: client.GenerateText("Why is the sky blue?")})
	var apiErr *client.Error
	switch {
	case errors.As(err, &apiErr):
		fmt.Printf("request %s failed: %s (code %d)\n", reply.Key, apiErr.Message, apiErr.Code)
	case err != nil:
		log.Fatal(err) // ctx ended, or the client was closed
	default:
		fmt.Printf("%s answered in %s: %s\n", reply.Key, reply.Batch, reply.Response)
	}
}

// SubmitAsync keeps many requests in flight on one reply subscription.
func ExampleClient_SubmitAsync() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx := context.Background()
	var pending []*client.Pending
	for i, topic := range []string{"tides", "bread", "jazz"} {
		p, err := c.SubmitAsync(ctx, client.Request{
			Key:   fmt.Sprintf("topic-%d", i),
			Model: "gemini-2.5-flash",
			Body:  client.GenerateText("In one sentence, what is interesting about " + topic + "?"),
		})
		if err != nil {
			log.Fatal(err)
		}
		pending = append(pending, p)
	}
	for _, p := range pending {
		reply, err := p.Wait(ctx)
		if err != nil {
			fmt.Printf("%s: %v\n", p.Key, err)
			continue
		}
		fmt.Printf("%s: %s\n", reply.Key, reply.Response)
	}
}
