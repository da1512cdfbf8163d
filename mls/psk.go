package mls

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// PSK is a pre-shared key ready for the key schedule (§8.4): the
// PreSharedKeyID as it appears in a PreSharedKey proposal or in
// GroupSecrets, and the key itself. For an external PSK, Secret is the
// value the application provisioned under ID.PSKID; for a resumption PSK,
// it is the resumption_psk of the epoch ID.PSKEpoch of group
// ID.PSKGroupID (EpochSecrets.ResumptionPSK of that epoch).
type PSK struct {
	ID     PreSharedKeyID
	Secret []byte
}

// pskLabel is the PSKLabel of §8.4, which binds each PSK to its position
// in the list.
type pskLabel struct {
	id           *PreSharedKeyID
	index, count uint16
}

func (l *pskLabel) marshal(b *cryptobyte.Builder) {
	l.id.marshal(b)
	b.AddUint16(l.index)
	b.AddUint16(l.count)
}

// PSKSecret computes the psk_secret of §8.4 by chaining psks in the order
// given, which must be the order of the PreSharedKey proposals in the
// Commit or of the psks field of GroupSecrets. With no PSKs it returns the
// all-zero vector of length Nh.
func PSKSecret(cs CipherSuite, psks []PSK) ([]byte, error) {
	if err := cs.check(); err != nil {
		return nil, err
	}
	if len(psks) > 0xffff {
		return nil, invalidf("8.4", "at most 65535 PSKs fit the uint16 count of PSKLabel, got %d", len(psks))
	}
	nh := cs.HashSize()
	zero := make([]byte, nh)
	secret := make([]byte, nh) // psk_secret_[0] = 0
	for i := range psks {
		label, err := encode(&pskLabel{id: &psks[i].ID, index: uint16(i), count: uint16(len(psks))})
		if err != nil {
			return nil, fmt.Errorf("mls: PSK %d: %w", i, err)
		}
		extracted := cs.Extract(zero, psks[i].Secret)
		input, err := cs.ExpandWithLabel(extracted, "derived psk", label, nh)
		clear(extracted)
		if err != nil {
			return nil, err
		}
		next := cs.Extract(input, secret)
		clear(input)
		clear(secret)
		secret = next
	}
	return secret, nil
}
