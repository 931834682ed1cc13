package biot

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	configStorageKey = "config"

	defaultRequestTimeout = 30 * time.Second
	minRequestTimeout     = time.Second
	maxRequestTimeout     = 5 * time.Minute

	maxFieldLen  = 1024      // url, username, password, service_id, secret_key
	maxCACertLen = 256 << 10 // a PEM bundle
)

// biotConfig is what an operator writes to config; stored seal-wrapped.
type biotConfig struct {
	URL              string        `json:"url"`
	Username         string        `json:"username,omitempty"`
	Password         string        `json:"password,omitempty"`
	ServiceID        string        `json:"service_id,omitempty"`
	SecretKey        string        `json:"secret_key,omitempty"`
	CACert           string        `json:"ca_cert,omitempty"`
	RequestTimeout   time.Duration `json:"request_timeout"`
	VerifyConnection bool          `json:"verify_connection"`
}

func (c *biotConfig) serviceUser() bool { return c.ServiceID != "" }

// sameSession reports whether tokens issued under c stay good under n: the
// same BioT, the same trust and the same identity.
func (c *biotConfig) sameSession(n *biotConfig) bool {
	return c.URL == n.URL && c.CACert == n.CACert && c.Username == n.Username && c.ServiceID == n.ServiceID
}

// needsVerification reports whether a write of c over old must log in first:
// verify_connection is on and the write changes where or how the engine logs
// in, or asks for verification by name. A write of, say, request_timeout
// alone sends no password.
func (c *biotConfig) needsVerification(old *biotConfig, d *framework.FieldData) bool {
	if !c.VerifyConnection {
		return false
	}
	if _, named := d.Raw["verify_connection"]; named {
		return true
	}
	return old == nil || !old.sameSession(c) || old.Password != c.Password || old.SecretKey != c.SecretKey
}

func (b *backend) pathConfig() *framework.Path {
	return &framework.Path{
		Pattern: "config",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Fields: map[string]*framework.FieldSchema{
			"url": {
				Type:        framework.TypeString,
				Description: "BioT API base URL, e.g. https://api.dev.example.biot-med.com; /ums/v2/... is appended. https only; http only for loopback hosts.",
				Required:    true,
				DisplayAttrs: &framework.DisplayAttributes{
					Name: "BioT URL",
				},
			},
			"username": {
				Type:         framework.TypeString,
				Description:  "BioT user name. Give username and password, or service_id and secret_key.",
				DisplayAttrs: &framework.DisplayAttributes{Name: "Username"},
			},
			"password": {
				Type:         framework.TypeString,
				Description:  "BioT user's password. Never returned.",
				DisplayAttrs: &framework.DisplayAttributes{Name: "Password", Sensitive: true},
			},
			"service_id": {
				Type:         framework.TypeString,
				Description:  "BioT service user id (a UUID), BioT's machine identity.",
				DisplayAttrs: &framework.DisplayAttributes{Name: "Service user ID"},
			},
			"secret_key": {
				Type:         framework.TypeString,
				Description:  "BioT service user's secret key. Never returned.",
				DisplayAttrs: &framework.DisplayAttributes{Name: "Service user secret key", Sensitive: true},
			},
			"ca_cert": {
				Type:         framework.TypeString,
				Description:  "PEM bundle of CA certificates trusted for the BioT URL instead of the system roots.",
				DisplayAttrs: &framework.DisplayAttributes{Name: "CA certificate (PEM)"},
			},
			"request_timeout": {
				Type:         framework.TypeDurationSecond,
				Description:  "Time allowed for one BioT operation, retries included.",
				Default:      int(defaultRequestTimeout.Seconds()),
				DisplayAttrs: &framework.DisplayAttributes{Name: "Request timeout"},
			},
			"verify_connection": {
				Type:         framework.TypeBool,
				Description:  "Log in to BioT before storing the config; a failed login rejects the write.",
				Default:      true,
				DisplayAttrs: &framework.DisplayAttributes{Name: "Verify connection"},
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:     b.pathConfigRead,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "configuration"},
				Summary:      "Read the BioT connection settings (never the password or secret key).",
			},
			logical.CreateOperation: &framework.PathOperation{
				Callback:     b.pathConfigWrite,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "configure"},
				Summary:      "Set the BioT URL and credentials.",
			},
			logical.UpdateOperation: &framework.PathOperation{
				Callback:     b.pathConfigWrite,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "configure"},
				Summary:      "Change the BioT settings; fields not given keep their stored value.",
			},
			logical.DeleteOperation: &framework.PathOperation{
				Callback:     b.pathConfigDelete,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "delete", OperationSuffix: "configuration"},
				Summary:      "Remove the config and the cached tokens.",
			},
		},
		ExistenceCheck:  b.pathConfigExists,
		HelpSynopsis:    "Configure the BioT URL and the credentials the engine logs in with.",
		HelpDescription: pathConfigHelp,
	}
}

const pathConfigHelp = `
Give the BioT API base URL and one identity: a BioT user (username, password)
or a BioT service user (service_id, secret_key). With verify_connection (the
default) the engine logs in before storing, and a failed login leaves the
stored config as it was. An update changes only the fields it names; naming
one identity's fields drops the other identity. Reads never return the
password or the secret key.
`

func (b *backend) pathConfigExists(ctx context.Context, req *logical.Request, _ *framework.FieldData) (bool, error) {
	cfg, err := readConfig(ctx, req.Storage)
	return cfg != nil, err
}

func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	cfg, err := readConfig(ctx, req.Storage)
	if err != nil || cfg == nil {
		return nil, err
	}
	data := map[string]any{
		"url":               cfg.URL,
		"ca_cert":           cfg.CACert,
		"request_timeout":   int64(cfg.RequestTimeout.Seconds()),
		"verify_connection": cfg.VerifyConnection,
	}
	if cfg.serviceUser() {
		data["service_id"] = cfg.ServiceID
	} else {
		data["username"] = cfg.Username
	}
	return &logical.Response{Data: data}, nil
}

func (b *backend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if err := unknownFields(req, d); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}

	b.mu.Lock()
	defer b.mu.Unlock()

	old, err := readConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	cfg, err := mergeConfig(old, d)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}

	var seed *token
	var c *client
	if c, err = newClient(cfg.URL, cfg.CACert, b.now); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	kept := false
	defer func() {
		if !kept {
			c.closeIdle() // a failed write drops the client
		}
	}()
	if cfg.needsVerification(old, d) {
		lctx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
		seed, err = login(lctx, c, cfg)
		cancel()
		if err != nil {
			return logical.ErrorResponse(fmt.Sprintf("config not saved: verification login failed: %s (set verify_connection=false to store without logging in)", err)), nil
		}
	}

	entry, err := logical.StorageEntryJSON(configStorageKey, cfg)
	if err != nil {
		return nil, err
	}
	if err := req.Storage.Put(ctx, entry); err != nil {
		if seed != nil {
			go b.logout(c, seed)
		}
		return nil, err
	}

	// Keep the cached token when nothing it depends on changed; otherwise
	// drop it and end its BioT session.
	prev := b.currentSession(ctx, req.Storage)
	var carry *token
	if prev != nil {
		carry = prev.tok.Load()
	}
	if seed != nil || old == nil || !old.sameSession(cfg) {
		if prev != nil && carry != nil {
			go b.logout(prev.client, carry)
		}
		carry = seed
		if err := b.replaceToken(ctx, req.Storage, carry); err != nil {
			return nil, err
		}
	}
	// The verification client, connections and all, serves the new session.
	s := b.newSessionWith(cfg, c, carry)
	kept = true
	if prev != nil {
		prev.stop()
	}
	b.sess.Store(s)
	b.loaded.Store(true)
	return nil, nil
}

func (b *backend) pathConfigDelete(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	prev := b.currentSession(ctx, req.Storage)
	if err := req.Storage.Delete(ctx, configStorageKey); err != nil {
		return nil, err
	}
	if err := req.Storage.Delete(ctx, tokenStorageKey); err != nil {
		return nil, err
	}
	if prev != nil {
		prev.stop()
		go b.logout(prev.client, prev.tok.Load())
	}
	b.sess.Store(nil)
	b.loaded.Store(true)
	return nil, nil
}

// currentSession (b.mu held) returns the live session, loading the stored
// token if no session is in memory yet, so that a config change after a
// restart still logs the old session out.
func (b *backend) currentSession(ctx context.Context, st logical.Storage) *session {
	if b.loaded.Load() {
		return b.sess.Load()
	}
	old, err := readConfig(ctx, st)
	if err != nil || old == nil {
		return nil
	}
	tok, _ := readToken(ctx, st)
	s, err := b.newSession(old, nil)
	if err != nil {
		return nil
	}
	s.tok.Store(tok)
	return s
}

// replaceToken stores t as the cached token, or removes the stored one.
func (b *backend) replaceToken(ctx context.Context, st logical.Storage, t *token) error {
	if t == nil {
		return st.Delete(ctx, tokenStorageKey)
	}
	return writeToken(ctx, st, t)
}

// login gets a first token for cfg's identity.
func login(ctx context.Context, c *client, cfg *biotConfig) (*token, error) {
	if cfg.serviceUser() {
		return c.ServiceLogin(ctx, cfg.ServiceID, cfg.SecretKey)
	}
	return c.Login(ctx, cfg.Username, cfg.Password)
}

func readConfig(ctx context.Context, st logical.Storage) (*biotConfig, error) {
	e, err := st.Get(ctx, configStorageKey)
	if err != nil || e == nil {
		return nil, err
	}
	var cfg biotConfig
	if err := e.DecodeJSON(&cfg); err != nil {
		return nil, fmt.Errorf("decoding stored config: %w", err)
	}
	return &cfg, nil
}

// unknownFields rejects fields the path does not define, rather than
// ignoring a typo such as "pasword".
func unknownFields(req *logical.Request, d *framework.FieldData) error {
	var unknown []string
	for k := range req.Data {
		if _, ok := d.Schema[k]; !ok {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	return fmt.Errorf("unknown field(s): %s; known fields are url, username, password, service_id, secret_key, ca_cert, request_timeout, verify_connection", strings.Join(unknown, ", "))
}

// mergeConfig applies the fields named in d to old (nil for a create) and
// validates the result. Errors name the field.
func mergeConfig(old *biotConfig, d *framework.FieldData) (*biotConfig, error) {
	cfg := biotConfig{RequestTimeout: defaultRequestTimeout, VerifyConnection: true}
	if old != nil {
		cfg = *old
	}

	strs := []struct {
		name  string
		dst   *string
		limit int
	}{
		{"url", &cfg.URL, maxFieldLen},
		{"username", &cfg.Username, maxFieldLen},
		{"password", &cfg.Password, maxFieldLen},
		{"service_id", &cfg.ServiceID, maxFieldLen},
		{"secret_key", &cfg.SecretKey, maxFieldLen},
		{"ca_cert", &cfg.CACert, maxCACertLen},
	}
	given := map[string]string{}
	for _, f := range strs {
		v, ok, err := d.GetOkErr(f.name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
		if !ok {
			continue
		}
		s := v.(string)
		// Vault's JSON decoder turns invalid UTF-8 into U+FFFD before the
		// engine sees it, so reject the replacement character too.
		if !utf8.ValidString(s) || strings.ContainsRune(s, utf8.RuneError) {
			return nil, fmt.Errorf("%s: not valid UTF-8 (or contains U+FFFD, what invalid UTF-8 becomes)", f.name)
		}
		if len(s) > f.limit {
			return nil, fmt.Errorf("%s: longer than %d bytes", f.name, f.limit)
		}
		given[f.name] = s
	}

	// Naming one identity's fields drops the other identity.
	_, u1 := given["username"]
	_, u2 := given["password"]
	_, s1 := given["service_id"]
	_, s2 := given["secret_key"]
	switch {
	case (u1 || u2) && (s1 || s2):
		return nil, errBothIdentities
	case u1 || u2:
		cfg.ServiceID, cfg.SecretKey = "", ""
	case s1 || s2:
		cfg.Username, cfg.Password = "", ""
	}
	for _, f := range strs {
		if v, ok := given[f.name]; ok {
			*f.dst = v
		}
	}

	if v, ok, err := d.GetOkErr("request_timeout"); err != nil {
		return nil, fmt.Errorf("request_timeout: %w", err)
	} else if ok {
		cfg.RequestTimeout = time.Duration(v.(int)) * time.Second
	}
	if v, ok, err := d.GetOkErr("verify_connection"); err != nil {
		return nil, fmt.Errorf("verify_connection: %w", err)
	} else if ok {
		cfg.VerifyConnection = v.(bool)
	}

	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

var errBothIdentities = errors.New("username/password and service_id/secret_key: give one identity, not both")

// validate checks a complete config; errors name the field at fault.
func (c *biotConfig) validate() error {
	u, err := validateURL(c.URL)
	if err != nil {
		return err
	}
	c.URL = u

	c.Username = strings.TrimSpace(c.Username)
	c.ServiceID = strings.TrimSpace(c.ServiceID)
	user := c.Username != "" || c.Password != ""
	svc := c.ServiceID != "" || c.SecretKey != ""
	switch {
	case user && svc:
		return errBothIdentities
	case !user && !svc:
		return errors.New("username and password, or service_id and secret_key: an identity is required")
	case user && c.Username == "":
		return errors.New("username: required with password, and must not be blank")
	case user && c.Password == "":
		return errors.New("password: required with username")
	case svc && c.ServiceID == "":
		return errors.New("service_id: required with secret_key, and must not be blank")
	case svc && c.SecretKey == "":
		return errors.New("secret_key: required with service_id")
	}
	if strings.ContainsFunc(c.Username+c.ServiceID, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return errors.New("username/service_id: must not contain control characters")
	}

	if c.CACert != "" {
		if err := validatePEM(c.CACert); err != nil {
			return fmt.Errorf("ca_cert: %w", err)
		}
	}
	if c.RequestTimeout < minRequestTimeout || c.RequestTimeout > maxRequestTimeout {
		return fmt.Errorf("request_timeout: must be between %s and %s", minRequestTimeout, maxRequestTimeout)
	}
	return nil
}

// validateURL checks the BioT base URL and returns it without a trailing slash.
func validateURL(raw string) (string, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return "", errors.New("url: required, e.g. https://api.dev.example.biot-med.com")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", errors.New("url: not a valid URL")
	}
	switch {
	case !u.IsAbs() || u.Host == "":
		return "", errors.New("url: must be absolute, e.g. https://api.dev.example.biot-med.com")
	case u.User != nil:
		return "", errors.New("url: must not contain credentials; use username/password or service_id/secret_key")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", errors.New("url: must not have a query or fragment")
	case u.Scheme == "https":
	case u.Scheme == "http":
		if !isLoopback(u.Hostname()) {
			return "", errors.New("url: must use https (plain http is allowed only for loopback hosts)")
		}
	default:
		return "", fmt.Errorf("url: scheme must be https, not %q", u.Scheme)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validatePEM requires at least one certificate and nothing but certificates.
func validatePEM(s string) error {
	rest := []byte(s)
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %q is not a CERTIFICATE", block.Type)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return errors.New("a CERTIFICATE block does not parse")
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM certificate found")
	}
	if strings.TrimSpace(string(rest)) != "" {
		return errors.New("unexpected data after the PEM certificates")
	}
	return nil
}
