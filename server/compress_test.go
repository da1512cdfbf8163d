package server_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/mlsds/mlsds/mls"
)

// TestCompressOnlyLargeAnswers checks that the server does not gzip small
// answers (MLS ciphertext does not compress; gzip only costs CPU) but
// still compresses a large page for a client that asks for it.
func TestCompressOnlyLargeAnswers(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	gid := []byte("compress")
	alice.createOpaqueGroup(gid, bob)
	for range 40 {
		alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 1024))
	}
	fetch := func(limit int) (encoding string, size int) {
		t.Helper()
		body := fmt.Sprintf(`{"groupId":%q,"fromSeq":"1","limit":%d}`, base64.StdEncoding.EncodeToString(gid), limit)
		req, err := http.NewRequest("POST", e.url+"/mlsds.v1.GroupService/Fetch", bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept-Encoding", "gzip")
		req.Header.Set("Authorization", "Bearer "+bob.token)
		// A transport of its own: Go's default one would ask for gzip and
		// decode it silently, hiding the header under test.
		res, err := (&http.Client{Transport: &http.Transport{DisableCompression: true}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != 200 {
			t.Fatalf("Fetch: %d %s", res.StatusCode, b)
		}
		return res.Header.Get("Content-Encoding"), len(b)
	}
	if enc, n := fetch(1); enc != "" {
		t.Errorf("a %d-byte answer was sent with Content-Encoding %q; small answers must not be compressed", n, enc)
	}
	if enc, n := fetch(40); enc != "gzip" {
		t.Errorf("a %d-byte answer was sent with Content-Encoding %q, want gzip", n, enc)
	}
}
