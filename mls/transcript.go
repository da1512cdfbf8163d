package mls

import "fmt"

// Transcript hashes (§8.2). Every Commit extends two running hashes:
//
//	confirmed_transcript_hash_[n] = Hash(interim_transcript_hash_[n-1] ||
//	                                     ConfirmedTranscriptHashInput_[n])
//	interim_transcript_hash_[n]   = Hash(confirmed_transcript_hash_[n] ||
//	                                     InterimTranscriptHashInput_[n])
//
// The confirmed hash goes into the GroupContext of the new epoch; the
// interim hash is what the next Commit builds on. Both start as the empty
// string in epoch 0. A joiner, who never saw the Commit, computes the
// interim hash from the confirmed hash and the confirmation tag in the
// GroupInfo.

// ConfirmedTranscriptHash returns the confirmed transcript hash of the
// epoch that commit starts: the suite hash of interimBefore, the interim
// transcript hash of the epoch in which commit was sent, followed by the
// ConfirmedTranscriptHashInput of commit (its wire format, content and
// signature).
func ConfirmedTranscriptHash(cs CipherSuite, interimBefore []byte, commit *AuthenticatedContent) ([]byte, error) {
	if err := cs.check(); err != nil {
		return nil, err
	}
	if commit.Content.ContentType != ContentTypeCommit {
		return nil, fmt.Errorf("mls: transcript hashes cover commits only, not content_type %d (§8.2)", commit.Content.ContentType)
	}
	input := ConfirmedTranscriptHashInput(commit)
	if input == nil {
		return nil, fmt.Errorf("mls: cannot encode the ConfirmedTranscriptHashInput of the commit")
	}
	return cs.Hash(appendBoth(interimBefore, input)), nil
}

// InterimTranscriptHash returns the interim transcript hash that follows
// the confirmed transcript hash confirmed of a Commit or GroupInfo whose
// confirmation tag is confirmationTag: Hash(confirmed ||
// InterimTranscriptHashInput).
func InterimTranscriptHash(cs CipherSuite, confirmed, confirmationTag []byte) ([]byte, error) {
	if err := cs.check(); err != nil {
		return nil, err
	}
	input := InterimTranscriptHashInput(confirmationTag)
	if input == nil {
		return nil, fmt.Errorf("mls: cannot encode the InterimTranscriptHashInput of a %d-byte confirmation tag", len(confirmationTag))
	}
	return cs.Hash(appendBoth(confirmed, input)), nil
}

// NextTranscriptHashes runs both steps of §8.2 for commit, sent in an
// epoch whose interim transcript hash is interimBefore, and returns the
// confirmed and interim transcript hashes of the new epoch.
func NextTranscriptHashes(cs CipherSuite, interimBefore []byte, commit *AuthenticatedContent) (confirmed, interim []byte, err error) {
	confirmed, err = ConfirmedTranscriptHash(cs, interimBefore, commit)
	if err != nil {
		return nil, nil, err
	}
	interim, err = InterimTranscriptHash(cs, confirmed, commit.Auth.ConfirmationTag)
	if err != nil {
		return nil, nil, err
	}
	return confirmed, interim, nil
}

// appendBoth returns a new slice holding a followed by b.
func appendBoth(a, b []byte) []byte {
	out := make([]byte, 0, len(a)+len(b))
	out = append(out, a...)
	return append(out, b...)
}
