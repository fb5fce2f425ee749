package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/client"
)

// demoImages are the demo's image-generation requests and where their pictures go.
type demoImages struct {
	count, bytes int
	dir          string
}

// requests asks for pictures; gembatchd sends their batch by file, as the Batch API guide
// recommends for images.
func (img demoImages) requests() []demoRequest {
	subjects := []string{"a lighthouse at dawn", "a fox in the snow", "a city of glass", "a red kite over hills"}
	var out []demoRequest
	for i := range img.count {
		out = append(out, demoRequest{key: fmt.Sprintf("image-%02d", i), subject: "gembatch.generate", model: "gemini-2.5-flash-image",
			body: fmt.Sprintf(`{"contents":[{"role":"user","parts":[{"text":"Paint %s, watercolor (%d)"}]}],"generationConfig":{"responseModalities":["TEXT","IMAGE"]}}`,
				subjects[i%len(subjects)], i)})
	}
	return out
}

// save writes the picture of every image reply to the folder, reading each answer sent by
// reference from the object store it names, as any producer can (nats object get works too).
func (img demoImages) save(ctx context.Context, w io.Writer, nc *nats.Conn, replies map[string]*nats.Msg) error {
	if img.count == 0 {
		return nil
	}
	dir := img.dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "gembatch-demo-images-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	byRef := 0
	for _, r := range img.requests() {
		m := replies[r.key]
		line := m.Data
		if ref := m.Header.Get(client.HeaderResultObject); ref != "" {
			byRef++
			if line, err = readObject(ctx, js, ref); err != nil {
				return fmt.Errorf("answer of %s: %w", r.key, err)
			}
		}
		png, err := pictureOf(line)
		if err != nil {
			return fmt.Errorf("answer of %s: %w", r.key, err)
		}
		if err := os.WriteFile(filepath.Join(dir, r.key+".png"), png, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "  images     %d written to %s (%d answers over the NATS max payload of %d bytes, read from the object store)\n",
		img.count, dir, byRef, nc.MaxPayload())
	return nil
}

// readObject reads the object a Gembatch-Result-Object header names ("<bucket>/<object>").
func readObject(ctx context.Context, js jetstream.JetStream, ref string) ([]byte, error) {
	bucket, name, _ := strings.Cut(ref, "/")
	obj, err := js.ObjectStore(ctx, bucket)
	if err != nil {
		return nil, err
	}
	return obj.GetBytes(ctx, name)
}

// pictureOf decodes the PNG of a result line's first image part.
func pictureOf(line []byte) ([]byte, error) {
	var r struct {
		Response struct {
			Candidates []struct {
				Content struct {
					Parts []struct {
						InlineData *struct {
							MimeType string `json:"mimeType"`
							Data     string `json:"data"`
						} `json:"inlineData"`
					} `json:"parts"`
				} `json:"content"`
			} `json:"candidates"`
		} `json:"response"`
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, err
	}
	for _, c := range r.Response.Candidates {
		for _, p := range c.Content.Parts {
			if p.InlineData != nil && p.InlineData.MimeType == "image/png" {
				return base64.StdEncoding.DecodeString(p.InlineData.Data)
			}
		}
	}
	return nil, fmt.Errorf("no PNG in the answer")
}
