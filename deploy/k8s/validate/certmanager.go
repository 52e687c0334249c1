package validate

import (
	"encoding/json"
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// cert-manager.io/v1 Issuer and Certificate: the fields cert-manager's API
// reference documents (v1.16), decoded strictly like the other CRDs. The
// issuer kinds ringattn does not use (ACME, Vault, Venafi) are accepted as
// opaque JSON under their documented names only.

func init() {
	schemas["cert-manager.io/v1/Issuer"] = func() any { return new(Issuer) }
	schemas["cert-manager.io/v1/Certificate"] = func() any { return new(Certificate) }
}

// Issuer is cert-manager.io/v1 Issuer.
type Issuer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              IssuerSpec `json:"spec"`
}

// IssuerSpec holds exactly one issuer kind.
type IssuerSpec struct {
	SelfSigned *struct {
		CRLDistributionPoints []string `json:"crlDistributionPoints,omitempty"`
	} `json:"selfSigned,omitempty"`
	CA *struct {
		SecretName             string   `json:"secretName"`
		CRLDistributionPoints  []string `json:"crlDistributionPoints,omitempty"`
		OCSPServers            []string `json:"ocspServers,omitempty"`
		IssuingCertificateURLs []string `json:"issuingCertificateURLs,omitempty"`
	} `json:"ca,omitempty"`
	ACME   json.RawMessage `json:"acme,omitempty"`
	Vault  json.RawMessage `json:"vault,omitempty"`
	Venafi json.RawMessage `json:"venafi,omitempty"`
}

func (i *Issuer) validate() error {
	n := 0
	for _, set := range []bool{i.Spec.SelfSigned != nil, i.Spec.CA != nil, i.Spec.ACME != nil, i.Spec.Vault != nil, i.Spec.Venafi != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("spec: %d issuer kinds set, want exactly one (selfSigned, ca, acme, vault or venafi)", n)
	}
	if i.Spec.CA != nil && i.Spec.CA.SecretName == "" {
		return fmt.Errorf("spec.ca.secretName: empty, want the CA's Secret")
	}
	return nil
}

// Certificate is cert-manager.io/v1 Certificate.
type Certificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              CertificateSpec `json:"spec"`
}

// CertificateSpec is the documented spec of a Certificate.
type CertificateSpec struct {
	Subject               json.RawMessage  `json:"subject,omitempty"`
	LiteralSubject        string           `json:"literalSubject,omitempty"`
	CommonName            string           `json:"commonName,omitempty"`
	Duration              *metav1.Duration `json:"duration,omitempty"`
	RenewBefore           *metav1.Duration `json:"renewBefore,omitempty"`
	RenewBeforePercentage *int32           `json:"renewBeforePercentage,omitempty"`
	DNSNames              []string         `json:"dnsNames,omitempty"`
	IPAddresses           []string         `json:"ipAddresses,omitempty"`
	URIs                  []string         `json:"uris,omitempty"`
	OtherNames            json.RawMessage  `json:"otherNames,omitempty"`
	EmailAddresses        []string         `json:"emailAddresses,omitempty"`
	SecretName            string           `json:"secretName"`
	SecretTemplate        *struct {
		Annotations map[string]string `json:"annotations,omitempty"`
		Labels      map[string]string `json:"labels,omitempty"`
	} `json:"secretTemplate,omitempty"`
	Keystores json.RawMessage `json:"keystores,omitempty"`
	IssuerRef struct {
		Name  string `json:"name"`
		Kind  string `json:"kind,omitempty"`
		Group string `json:"group,omitempty"`
	} `json:"issuerRef"`
	IsCA       bool     `json:"isCA,omitempty"`
	Usages     []string `json:"usages,omitempty"`
	PrivateKey *struct {
		RotationPolicy string `json:"rotationPolicy,omitempty"`
		Encoding       string `json:"encoding,omitempty"`
		Algorithm      string `json:"algorithm,omitempty"`
		Size           int    `json:"size,omitempty"`
	} `json:"privateKey,omitempty"`
	SignatureAlgorithm      string          `json:"signatureAlgorithm,omitempty"`
	EncodeUsagesInRequest   *bool           `json:"encodeUsagesInRequest,omitempty"`
	RevisionHistoryLimit    *int32          `json:"revisionHistoryLimit,omitempty"`
	AdditionalOutputFormats json.RawMessage `json:"additionalOutputFormats,omitempty"`
	NameConstraints         json.RawMessage `json:"nameConstraints,omitempty"`
}

// certificateUsages are the key usages cert-manager documents.
var certificateUsages = []string{
	"signing", "digital signature", "content commitment", "key encipherment", "key agreement",
	"data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
	"server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
	"ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
}

func (c *Certificate) validate() error {
	s := &c.Spec
	if s.SecretName == "" {
		return fmt.Errorf("spec.secretName: empty, want the Secret to write")
	}
	if s.IssuerRef.Name == "" {
		return fmt.Errorf("spec.issuerRef.name: empty")
	}
	if k := s.IssuerRef.Kind; k != "" && k != "Issuer" && k != "ClusterIssuer" && s.IssuerRef.Group == "" {
		return fmt.Errorf("spec.issuerRef.kind = %q: want Issuer or ClusterIssuer", k)
	}
	if s.CommonName == "" && len(s.DNSNames) == 0 && len(s.IPAddresses) == 0 && len(s.URIs) == 0 && len(s.EmailAddresses) == 0 && s.LiteralSubject == "" {
		return fmt.Errorf("spec: no commonName or subject alternative name")
	}
	for _, u := range s.Usages {
		if !slices.Contains(certificateUsages, u) {
			return fmt.Errorf("spec.usages: %q is not a cert-manager key usage", u)
		}
	}
	if pk := s.PrivateKey; pk != nil {
		switch pk.Algorithm {
		case "", "RSA", "ECDSA", "Ed25519":
		default:
			return fmt.Errorf("spec.privateKey.algorithm = %q: want RSA, ECDSA or Ed25519", pk.Algorithm)
		}
		if pk.Algorithm == "ECDSA" && pk.Size != 0 && pk.Size != 256 && pk.Size != 384 && pk.Size != 521 {
			return fmt.Errorf("spec.privateKey.size = %d: ECDSA wants 256, 384 or 521", pk.Size)
		}
		switch pk.RotationPolicy {
		case "", "Never", "Always":
		default:
			return fmt.Errorf("spec.privateKey.rotationPolicy = %q: want Never or Always", pk.RotationPolicy)
		}
	}
	if s.Duration != nil && s.RenewBefore != nil && s.RenewBefore.Duration >= s.Duration.Duration {
		return fmt.Errorf("spec.renewBefore %v: want less than spec.duration %v", s.RenewBefore.Duration, s.Duration.Duration)
	}
	return nil
}
