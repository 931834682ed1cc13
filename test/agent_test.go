package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
	"github.com/biot-med/vault-plugin-secrets-biot/internal/vaulttest"
)

// TestAgentRendersFreshTokens runs Vault Agent with a template over
// biot/creds while BioT hands out 30-second tokens: the rendered file must
// move through at least three tokens within 100 seconds, and hold a valid one
// whenever it is read.
func TestAgentRendersFreshTokens(t *testing.T) {
	t.Parallel()
	const (
		accessTTL = 30 * time.Second
		window    = 100 * time.Second
		want      = 3
	)
	fake := newFake(t, biotfake.Options{AccessTTL: accessTTL})
	v := env.StartDevWithPlugin(t, "biot")
	v.WriteConfig(t, "biot", vaulttest.UserConfig(fake))

	dest := filepath.Join(t.TempDir(), "biot-token")
	agent := v.StartAgent(t, vaulttest.AgentOptions{Templates: []vaulttest.Template{{
		Contents:    `{{ with secret "biot/creds" }}{{ .Data.access_token }}{{ end }}`,
		Destination: dest,
	}}})

	start := time.Now()
	var tokens []string // in the order the file held them
	var invalid int
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for len(tokens) < want && time.Since(start) < window {
		<-tick.C
		if agent.Exited() {
			t.Fatalf("vault agent exited after %s: %v", time.Since(start).Round(time.Second), agent.ExitErr())
		}
		b, err := os.ReadFile(dest)
		if err != nil || len(b) == 0 {
			continue // not rendered yet, or being rewritten
		}
		tok := strings.TrimSpace(string(b))
		if !fake.AccessTokenValid(tok) {
			invalid++
			if invalid <= 3 {
				t.Errorf("at %s the file holds a token BioT would not accept (expired or unknown)", time.Since(start).Round(100*time.Millisecond))
			}
		}
		if len(tokens) == 0 || tokens[len(tokens)-1] != tok {
			tokens = append(tokens, tok)
			t.Logf("token #%d in the file at %s", len(tokens), time.Since(start).Round(100*time.Millisecond))
		}
	}
	if len(tokens) < want {
		t.Errorf("the file held %d distinct tokens in %s, want at least %d", len(tokens), window, want)
	}
	seen := map[string]bool{}
	for _, tok := range tokens {
		if seen[tok] {
			t.Error("the file went back to a token it held before")
		}
		seen[tok] = true
	}
	if n := fake.Calls(biotfake.EndpointLogin); n != 1 {
		t.Errorf("logins = %d, want 1: later tokens should come from refreshes", n)
	}
}
