package mls

import (
	"bytes"
	"testing"
)

// The fuzz targets check two properties of the decoders on arbitrary input:
// they never panic, and whatever they accept re-encodes to exactly the
// input, so every value has a single accepted encoding. They are seeded
// from messages.json; crashers found so far live in testdata/fuzz.

// fuzzSeeds adds pick(entry) for every entry of messages.json.
func fuzzSeeds(f *testing.F, pick func(v *messagesVector) [][]byte) {
	var vectors []messagesVector
	loadVectors(f, "messages.json", &vectors)
	for i := range vectors {
		for _, seed := range pick(&vectors[i]) {
			f.Add([]byte(seed))
		}
	}
}

// checkCanonical decodes data with unmarshal and, if that succeeds,
// requires marshal to reproduce data.
func checkCanonical(t *testing.T, data []byte, unmarshal func([]byte) error, marshal func() ([]byte, error)) {
	if err := unmarshal(data); err != nil {
		return
	}
	out, err := marshal()
	if err != nil {
		t.Fatalf("decoded %x but cannot re-encode it: %v", data, err)
	}
	if !bytes.Equal(out, data) {
		t.Fatalf("re-encoding differs from the accepted input\n in  %x\n out %x", data, out)
	}
}

// fuzzMessageBody strips the version and wire_format of an MLSMessage encoding.
func fuzzMessageBody(msg []byte) []byte {
	if len(msg) < 4 {
		return nil
	}
	return msg[4:]
}

func FuzzMLSMessage(f *testing.F) {
	fuzzSeeds(f, func(v *messagesVector) [][]byte {
		return [][]byte{v.MLSWelcome, v.MLSGroupInfo, v.MLSKeyPackage, v.PublicMessageApplication,
			v.PublicMessageProposal, v.PublicMessageCommit, v.PrivateMessage}
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		var m MLSMessage
		checkCanonical(t, data, m.UnmarshalBinary, m.MarshalBinary)
		parsed, err := ParseMLSMessage(data)
		if (err == nil) != (m.UnmarshalBinary(data) == nil) {
			t.Fatalf("ParseMLSMessage and UnmarshalBinary disagree on %x", data)
		}
		if err != nil {
			return
		}
		// The derived inputs of a public message must be computable.
		if pm := parsed.PublicMessage; pm != nil {
			ac := pm.AuthenticatedContent()
			ctx := &GroupContext{Version: ProtocolVersionMLS10, CipherSuite: 1}
			if ac.TBS(ctx) == nil || ac.TBM(ctx) == nil {
				t.Fatalf("no FramedContentTBS or TBM for accepted message %x", data)
			}
			if pm.Content.ContentType == ContentTypeCommit && ConfirmedTranscriptHashInput(ac) == nil {
				t.Fatalf("no ConfirmedTranscriptHashInput for accepted commit %x", data)
			}
		}
	})
}

func FuzzKeyPackage(f *testing.F) {
	fuzzSeeds(f, func(v *messagesVector) [][]byte {
		return [][]byte{fuzzMessageBody(v.MLSKeyPackage), v.AddProposal}
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		var kp KeyPackage
		checkCanonical(t, data, kp.UnmarshalBinary, kp.MarshalBinary)
	})
}

func FuzzGroupInfo(f *testing.F) {
	fuzzSeeds(f, func(v *messagesVector) [][]byte {
		return [][]byte{fuzzMessageBody(v.MLSGroupInfo)}
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		var gi GroupInfo
		checkCanonical(t, data, gi.UnmarshalBinary, gi.MarshalBinary)
	})
}

func FuzzWelcome(f *testing.F) {
	fuzzSeeds(f, func(v *messagesVector) [][]byte {
		return [][]byte{fuzzMessageBody(v.MLSWelcome), v.GroupSecrets}
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		var w Welcome
		checkCanonical(t, data, w.UnmarshalBinary, w.MarshalBinary)
		var gs GroupSecrets
		checkCanonical(t, data, gs.UnmarshalBinary, gs.MarshalBinary)
	})
}

func FuzzRatchetTree(f *testing.F) {
	fuzzSeeds(f, func(v *messagesVector) [][]byte {
		return [][]byte{v.RatchetTree}
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		var r RatchetTreeExtension
		checkCanonical(t, data, r.UnmarshalBinary, r.MarshalBinary)
	})
}
