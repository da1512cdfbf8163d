package client

import (
	"fmt"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// SignRegistration sets req.Proof: the proof that the caller holds the
// private key sigPriv of req.SignatureKey, SignWithLabel(sigPriv,
// "mlsds register", RegisterTBS) over the request's credential, signature
// key, cipher suite and user id (see ds.RegisterTBS). Set those fields
// first; the enrollment and the device link are not covered.
func SignRegistration(sigPriv []byte, req *mlsdsv1.RegisterClientRequest) error {
	if req.CipherSuite > 0xffff {
		return fmt.Errorf("client: cipher suite %d is not a 16-bit value", req.CipherSuite)
	}
	cs := mls.CipherSuite(req.CipherSuite)
	tbs := ds.RegisterTBS(req.Credential, req.SignatureKey, cs, req.UserId)
	sig, err := cs.SignWithLabel(sigPriv, ds.RegisterLabel, tbs)
	if err != nil {
		return fmt.Errorf("client: signing the registration: %w", err)
	}
	req.Proof = sig
	return nil
}
