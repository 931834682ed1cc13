package biot

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	operationPrefix = "biot"
	secretTokenType = "biot_access_token"
)

func (b *backend) pathCreds() *framework.Path {
	return &framework.Path{
		Pattern: "creds",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathCredsRead,
				DisplayAttrs: &framework.DisplayAttributes{
					OperationVerb:   "generate",
					OperationSuffix: "credentials",
				},
				Summary: "Get a BioT access token, leased until shortly before it expires.",
				Responses: map[int][]framework.Response{
					http.StatusOK: {{Description: "OK", Fields: credsFields}},
				},
			},
		},
		HelpSynopsis:    "Get a BioT access token.",
		HelpDescription: pathCredsHelp,
	}
}

const pathCredsHelp = `
Returns a BioT access token from the engine's cache, as a lease that is not
renewable and ends a few seconds before the token expires. Every reader gets
the same cached token until it is refreshed; the engine refreshes it before
it expires and logs in again only when BioT refuses the refresh token. Read
again for a new token when the lease ends. Revoking a lease does not revoke
the token at BioT, since other leases share it.
`

// credsFields describe the data of a creds read and of its lease.
var credsFields = map[string]*framework.FieldSchema{
	"access_token": {
		Type:         framework.TypeString,
		Description:  "BioT access token; send it as Authorization: Bearer <access_token>.",
		DisplayAttrs: &framework.DisplayAttributes{Name: "Access token", Sensitive: true},
	},
	"token_type": {
		Type:         framework.TypeString,
		Description:  "Always Bearer.",
		DisplayAttrs: &framework.DisplayAttributes{Name: "Token type"},
	},
	"expires_at": {
		Type:         framework.TypeString,
		Description:  "When BioT stops accepting the token (RFC 3339, UTC).",
		DisplayAttrs: &framework.DisplayAttributes{Name: "Expires at"},
	},
	"user_id": {
		Type:         framework.TypeString,
		Description:  "BioT user id (user identities only).",
		DisplayAttrs: &framework.DisplayAttributes{Name: "User ID"},
	},
	"organization_id": {
		Type:         framework.TypeString,
		Description:  "BioT organization that owns the user (user identities only).",
		DisplayAttrs: &framework.DisplayAttributes{Name: "Organization ID"},
	},
}

func (b *backend) secretToken() *framework.Secret {
	return &framework.Secret{
		Type:   secretTokenType,
		Fields: credsFields,
		Renew:  b.secretTokenRenew,
		Revoke: b.secretTokenRevoke,
	}
}

func (b *backend) pathCredsRead(ctx context.Context, _ *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	s, err := b.session(ctx)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return logical.ErrorResponse("no BioT config: write biot/config first"), nil
	}
	t, err := s.get(ctx)
	if err != nil {
		return nil, upstreamError(err)
	}

	now := b.now()
	ttl := t.leaseTTL(now).Truncate(time.Second)
	if maxTTL := b.System().MaxLeaseTTL(); maxTTL > 0 && ttl > maxTTL {
		ttl = maxTTL
	}
	data := map[string]any{
		"access_token": t.AccessToken,
		"token_type":   "Bearer",
		"expires_at":   t.AccessExpiresAt.UTC().Format(time.RFC3339),
	}
	if t.UserID != "" {
		data["user_id"] = t.UserID
		data["organization_id"] = t.OrganizationID
	}
	resp := b.Secret(secretTokenType).Response(data, map[string]any{
		"expires_at": data["expires_at"],
	})
	resp.Secret.TTL = ttl
	resp.Secret.MaxTTL = ttl
	resp.Secret.Renewable = false
	return resp, nil
}

// upstreamError gives a BioT failure the HTTP status a client should see:
// 502 when BioT answered badly or refused, 504 when it did not answer in time.
func upstreamError(err error) error {
	code := http.StatusBadGateway
	if errors.Is(err, context.DeadlineExceeded) {
		code = http.StatusGatewayTimeout
	}
	return logical.CodedError(code, err.Error())
}

// secretTokenRenew refuses: a BioT token cannot be extended; read creds again.
func (b *backend) secretTokenRenew(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
	return logical.ErrorResponse("BioT access tokens are not renewable: read biot/creds again for a fresh one"), nil
}

// secretTokenRevoke succeeds without calling BioT: the token is shared by
// every lease handed out while it was cached.
func (b *backend) secretTokenRevoke(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
	return nil, nil
}
