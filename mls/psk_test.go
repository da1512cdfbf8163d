package mls

import (
	"bytes"
	"testing"
)

// TestPSKSecretVectors runs every entry of psk_secret.json: chains of 0 to
// 10 external PSKs, each with its psk_id and psk_nonce (§8.4).
func TestPSKSecretVectors(t *testing.T) {
	var vs []struct {
		CipherSuite CipherSuite `json:"cipher_suite"`
		PSKs        []struct {
			PSKID    hexBytes `json:"psk_id"`
			PSK      hexBytes `json:"psk"`
			PSKNonce hexBytes `json:"psk_nonce"`
		} `json:"psks"`
		PSKSecret hexBytes `json:"psk_secret"`
	}
	loadVectors(t, "psk_secret.json", &vs)
	count := newVectorCount("psk_secret.json")
	defer count.report(t)
	for i, v := range vs {
		if !v.CipherSuite.Supported() {
			count.skip("cipher suite not supported")
			continue
		}
		psks := make([]PSK, len(v.PSKs))
		for j, p := range v.PSKs {
			psks[j] = PSK{
				ID:     PreSharedKeyID{PSKType: PSKTypeExternal, PSKID: p.PSKID, PSKNonce: p.PSKNonce},
				Secret: p.PSK,
			}
		}
		got, err := PSKSecret(v.CipherSuite, psks)
		if err != nil {
			t.Errorf("entry %d (suite %d, %d PSKs): %v", i, v.CipherSuite, len(psks), err)
			continue
		}
		if !bytes.Equal(got, v.PSKSecret) {
			t.Errorf("entry %d (suite %d, %d PSKs): psk_secret %x, want %x", i, v.CipherSuite, len(psks), got, v.PSKSecret)
			continue
		}
		count.pass()
	}
}

// TestPSKSecretBindsOrderAndIDs checks that psk_secret depends on the order
// of the PSKs and on every field of their PreSharedKeyID, resumption ones
// included, so that a committer and a joiner that disagree on either get
// different epochs (§8.4).
func TestPSKSecretBindsOrderAndIDs(t *testing.T) {
	cs := MLS_128_DHKEMP256_AES128GCM_SHA256_P256
	nonce := bytes.Repeat([]byte{9}, cs.HashSize())
	ext := PSK{ID: PreSharedKeyID{PSKType: PSKTypeExternal, PSKID: []byte("ext"), PSKNonce: nonce}, Secret: []byte("k1")}
	res := PSK{ID: PreSharedKeyID{PSKType: PSKTypeResumption, Usage: ResumptionPSKUsageApplication,
		PSKGroupID: []byte("group"), PSKEpoch: 4, PSKNonce: nonce}, Secret: []byte("k2")}
	base, err := PSKSecret(cs, []PSK{ext, res})
	if err != nil {
		t.Fatal(err)
	}
	variants := map[string][]PSK{
		"swapped order": {res, ext},
		"one PSK":       {ext},
	}
	epoch := res
	epoch.ID.PSKEpoch = 5
	variants["resumption epoch"] = []PSK{ext, epoch}
	usage := res
	usage.ID.Usage = ResumptionPSKUsageBranch
	variants["resumption usage"] = []PSK{ext, usage}
	n := ext
	n.ID.PSKNonce = bytes.Repeat([]byte{8}, cs.HashSize())
	variants["nonce"] = []PSK{n, res}
	for name, psks := range variants {
		got, err := PSKSecret(cs, psks)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if bytes.Equal(got, base) {
			t.Errorf("changing the %s did not change psk_secret", name)
		}
	}

	zero, err := PSKSecret(cs, nil)
	if err != nil || !bytes.Equal(zero, make([]byte, cs.HashSize())) {
		t.Errorf("no PSKs gave %x (%v), want the all-zero vector", zero, err)
	}
	bad := ext
	bad.ID.PSKType = 0
	if _, err := PSKSecret(cs, []PSK{bad}); err == nil {
		t.Error("a PreSharedKeyID of unknown type was accepted")
	}
}
