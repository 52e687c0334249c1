// Package certs creates the X.509 material ringattn's transports use: a
// certificate authority and leaf certificates signed by it (server and/or
// client usage, DNS and IP subject alternative names), written to PEM files
// with private keys readable by their owner only (0600).
//
// Everything is crypto/x509 and crypto/ecdsa (P-256); nothing here is
// home-made cryptography. `ringattn dev --auth` and the tests use it; a
// production cluster gets its certificates from its own PKI (cert-manager,
// deploy/k8s/gen-certs.sh).
package certs
