package biotfake

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"
)

// One RSA key per process: generating a 2048-bit key takes tens to hundreds
// of milliseconds, too slow to do for every Fake.
var (
	keyOnce sync.Once
	key     *rsa.PrivateKey
)

func signingKey() *rsa.PrivateKey {
	keyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic("biotfake: generating the RSA signing key: " + err.Error())
		}
		key = k
	})
	return key
}

// PublicKey returns the public half of the key that signs every token (RS512).
func (f *Fake) PublicKey() *rsa.PublicKey { return &signingKey().PublicKey }

// publicKeyBase64 is the public key as BioT's public-key endpoint would
// publish it: base64 of the X.509 SubjectPublicKeyInfo DER.
func publicKeyBase64() string {
	der, err := x509.MarshalPKIXPublicKey(&signingKey().PublicKey)
	if err != nil {
		panic("biotfake: marshalling the public key: " + err.Error())
	}
	return base64.StdEncoding.EncodeToString(der)
}

var jwtHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"RS512","typ":"JWT"}`))

// Claims is the payload of the tokens the fake issues.
type Claims struct {
	Issuer              string `json:"iss"`
	Subject             string `json:"sub"` // user id or service id
	IssuedAt            int64  `json:"iat"` // epoch seconds
	ExpiresAt           int64  `json:"exp"` // epoch seconds
	ID                  string `json:"jti"` // random: every token is unique
	Type                string `json:"type"`
	OwnerOrganizationID string `json:"ownerOrganizationId"`
	UserType            string `json:"userType"` // USER or SERVICE
	Username            string `json:"username,omitempty"`
	Scope               string `json:"scope"`
}

func mint(rec tokenRec, typ string, now time.Time) string {
	c := Claims{
		Issuer:              "ums",
		Subject:             rec.sub,
		IssuedAt:            now.Unix(),
		ExpiresAt:           rec.exp.Unix(),
		ID:                  randomHex(16),
		Type:                typ,
		OwnerOrganizationID: rec.org,
		UserType:            "USER",
		Username:            rec.username,
		Scope:               "ums",
	}
	if rec.service {
		c.UserType = "SERVICE"
	}
	payload, err := json.Marshal(c)
	if err != nil {
		panic("biotfake: marshalling claims: " + err.Error())
	}
	var b strings.Builder
	signed := jwtHeader + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha512.Sum512([]byte(signed))
	sig, err := rsa.SignPKCS1v15(nil, signingKey(), crypto.SHA512, digest[:])
	if err != nil {
		panic("biotfake: signing a token: " + err.Error())
	}
	b.Grow(len(signed) + 1 + base64.RawURLEncoding.EncodedLen(len(sig)))
	b.WriteString(signed)
	b.WriteByte('.')
	b.WriteString(base64.RawURLEncoding.EncodeToString(sig))
	return b.String()
}

// ParseToken verifies a token's RS512 signature against the fake's key and
// returns its claims. It does not check expiry.
func ParseToken(token string) (Claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return Claims{}, errors.New("biotfake: not a JWT")
	}
	if parts[0] != jwtHeader {
		return Claims{}, errors.New("biotfake: unexpected JWT header")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return Claims{}, errors.New("biotfake: bad JWT signature encoding")
	}
	digest := sha512.Sum512([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(&signingKey().PublicKey, crypto.SHA512, digest[:], sig); err != nil {
		return Claims{}, errors.New("biotfake: bad JWT signature")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return Claims{}, errors.New("biotfake: bad JWT payload encoding")
	}
	var c Claims
	if err := json.Unmarshal(payload, &c); err != nil {
		return Claims{}, errors.New("biotfake: bad JWT payload")
	}
	return c, nil
}
