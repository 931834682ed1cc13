//go:build tools

// Package tools pins the Vault server that `make dev` and the end-to-end
// tests run. It is a separate module so the plugin's own go.mod stays small.
package tools

import _ "github.com/hashicorp/vault"
