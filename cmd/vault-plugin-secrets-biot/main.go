// Command vault-plugin-secrets-biot is the BioT secrets engine as a Vault plugin.
package main

import (
	"net"
	"net/http"
	"net/http/pprof"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/plugin"

	biot "github.com/biot-med/vault-plugin-secrets-biot"
)

// pprofEnv names a loopback address on which the plugin serves Go's pprof
// endpoints, for profiling and leak checks. Set it when registering:
// vault plugin register -env=BIOT_PLUGIN_PPROF_ADDR=127.0.0.1:6061 ...
const pprofEnv = "BIOT_PLUGIN_PPROF_ADDR"

func main() {
	logger := hclog.New(&hclog.LoggerOptions{})

	apiClientMeta := &api.PluginAPIClientMeta{}
	flags := apiClientMeta.FlagSet()
	if err := flags.Parse(os.Args[1:]); err != nil {
		logger.Error("plugin shutting down", "error", err)
		os.Exit(1)
	}
	if addr := os.Getenv(pprofEnv); addr != "" {
		servePprof(logger, addr)
	}

	tlsConfig := apiClientMeta.GetTLSConfig()
	tlsProviderFunc := api.VaultPluginTLSProvider(tlsConfig)
	if err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: biot.Factory,
		TLSProviderFunc:    tlsProviderFunc,
	}); err != nil {
		logger.Error("plugin shutting down", "error", err)
		os.Exit(1)
	}
}

// servePprof serves pprof on addr, which must be a loopback address.
func servePprof(logger hclog.Logger, addr string) {
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		logger.Warn("ignoring "+pprofEnv+": not a loopback host:port", "addr", addr)
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		logger.Warn("cannot serve pprof", "addr", addr, "error", err)
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() { _ = http.Serve(ln, mux) }() //nolint:gosec // loopback-only debug listener
}
