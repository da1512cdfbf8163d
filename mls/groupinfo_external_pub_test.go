package mls

import (
	"errors"
	"testing"
)

func TestValidateGroupInfoExternalPub(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	_, pub, err := cs.GenerateKEMKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	withExt := func(data []byte) *GroupInfo {
		return &GroupInfo{
			GroupContext: GroupContext{Version: ProtocolVersionMLS10, CipherSuite: cs},
			Extensions:   Extensions{{ExtensionType: ExtensionTypeExternalPub, ExtensionData: data}},
		}
	}
	good, err := (&ExternalPub{PublicKey: pub}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := ValidateGroupInfoExternalPub(withExt(good)); err != nil {
		t.Errorf("well-formed external_pub refused: %v", err)
	}
	if err := ValidateGroupInfoExternalPub(&GroupInfo{GroupContext: GroupContext{CipherSuite: cs}}); err != nil {
		t.Errorf("GroupInfo without external_pub refused: %v", err)
	}
	// ts-mls 1.6.4 writes the bare key without its opaque<V> length prefix
	// (fixed upstream in ts-mls PR 449).
	wrongPrefix := append([]byte{0x3f}, pub...) // a length that does not match the key
	garbageKey, _ := (&ExternalPub{PublicKey: make([]byte, 31)}).MarshalBinary()
	for name, data := range map[string][]byte{"bare key": pub, "wrong length prefix": wrongPrefix, "key of the wrong size": garbageKey} {
		err := ValidateGroupInfoExternalPub(withExt(data))
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Section != "12.4.3.2" {
			t.Errorf("%s: got %v, want a §12.4.3.2 ValidationError", name, err)
		}
	}
}
