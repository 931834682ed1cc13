package biot

import "strings"

// Version is the plugin's semantic version, set at build time with
// -ldflags "-X github.com/biot-med/vault-plugin-secrets-biot.Version=v1.2.3".
var Version = "v0.1.0"

// RunningVersion is the version reported to Vault: Version with a "v" prefix.
func RunningVersion() string {
	if !strings.HasPrefix(Version, "v") {
		return "v" + Version
	}
	return Version
}
