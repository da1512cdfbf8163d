package testkit

import (
	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/client"
)

// registerProof signs a registration request (auth.proto, field proof)
// with the SDK's encoder.
func registerProof(sigPriv []byte, req *mlsdsv1.RegisterClientRequest) ([]byte, error) {
	if err := client.SignRegistration(sigPriv, req); err != nil {
		return nil, err
	}
	return req.Proof, nil
}
