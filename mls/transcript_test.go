package mls

import (
	"bytes"
	"testing"
)

// TestTranscriptHashVectors runs every entry of transcript-hashes.json:
// from the interim hash before a Commit and the AuthenticatedContent of the
// Commit, the confirmed and interim hashes after it (§8.2). The vectors
// also give the confirmation key, so the Commit's confirmation tag is
// checked against the new confirmed hash too (§6.1).
func TestTranscriptHashVectors(t *testing.T) {
	var vs []struct {
		CipherSuite                  CipherSuite `json:"cipher_suite"`
		ConfirmationKey              hexBytes    `json:"confirmation_key"`
		AuthenticatedContent         hexBytes    `json:"authenticated_content"`
		InterimTranscriptHashBefore  hexBytes    `json:"interim_transcript_hash_before"`
		ConfirmedTranscriptHashAfter hexBytes    `json:"confirmed_transcript_hash_after"`
		InterimTranscriptHashAfter   hexBytes    `json:"interim_transcript_hash_after"`
	}
	loadVectors(t, "transcript-hashes.json", &vs)
	count := newVectorCount("transcript-hashes.json")
	defer count.report(t)
	for i, v := range vs {
		if !v.CipherSuite.Supported() {
			count.skip("cipher suite not supported")
			continue
		}
		var ac AuthenticatedContent
		if err := ac.UnmarshalBinary(v.AuthenticatedContent); err != nil {
			t.Errorf("entry %d: %v", i, err)
			continue
		}
		confirmed, interim, err := NextTranscriptHashes(v.CipherSuite, v.InterimTranscriptHashBefore, &ac)
		if err != nil {
			t.Errorf("entry %d: %v", i, err)
			continue
		}
		ok := true
		if !bytes.Equal(confirmed, v.ConfirmedTranscriptHashAfter) {
			t.Errorf("entry %d (suite %d): confirmed transcript hash %x, want %x", i, v.CipherSuite, confirmed, v.ConfirmedTranscriptHashAfter)
			ok = false
		}
		if !bytes.Equal(interim, v.InterimTranscriptHashAfter) {
			t.Errorf("entry %d (suite %d): interim transcript hash %x, want %x", i, v.CipherSuite, interim, v.InterimTranscriptHashAfter)
			ok = false
		}
		if tag := v.CipherSuite.MAC(v.ConfirmationKey, confirmed); !bytes.Equal(tag, ac.Auth.ConfirmationTag) {
			t.Errorf("entry %d (suite %d): confirmation tag %x, want %x", i, v.CipherSuite, ac.Auth.ConfirmationTag, tag)
			ok = false
		}
		if ok {
			count.pass()
		}
	}
}

// TestTranscriptHashRejectsNonCommit checks that only commits enter the
// transcript (§8.2).
func TestTranscriptHashRejectsNonCommit(t *testing.T) {
	ac := &AuthenticatedContent{
		WireFormat: WireFormatPublicMessage,
		Content: FramedContent{
			GroupID: []byte("g"), Sender: Sender{SenderType: SenderTypeMember},
			ContentType: ContentTypeProposal,
			Proposal:    &Proposal{ProposalType: ProposalTypeRemove, Remove: &Remove{Removed: 1}},
		},
	}
	if _, err := ConfirmedTranscriptHash(MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, nil, ac); err == nil {
		t.Fatal("a proposal was accepted into the transcript hash")
	}
}
